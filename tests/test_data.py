"""Preparation: splits, the unlabelled pool's missing transcripts, skip/redo, bad input."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from kd_brain.data.prepare import CorpusError, prepare_corpus, read_csv, read_kaldi_dir, split_speakers
from tests.conftest import write_kaldi_dir


def test_splits_are_speaker_disjoint(tiny_prepared):
    out, paths = tiny_prepared
    spk = {s: {r["spk_id"] for r in read_csv(paths[s])} for s in ("labelled", "unlabelled", "dev", "test_clean")}
    assert all(spk.values()), spk
    names = list(spk)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not spk[a] & spk[b], (a, b)
    n_all = sum(len(read_csv(paths[s])) for s in spk)
    assert n_all == 10 * 6


def test_unlabelled_manifest_has_no_transcripts(tiny_prepared):
    _, paths = tiny_prepared
    with open(paths["unlabelled"]) as f:
        header = f.readline().strip().split(",")
    assert header == ["ID", "duration", "wav", "spk_id"]
    ids = [r["ID"] for r in read_csv(paths["unlabelled"])]
    kept = read_csv(paths["unlabelled_transcripts"])
    assert [r["ID"] for r in kept] == ids and all(r["wrd"] for r in kept)


def test_audio_converted_to_wav_with_exact_duration(tiny_prepared):
    _, paths = tiny_prepared
    row = read_csv(paths["labelled"])[0]
    info = sf.info(row["wav"])
    assert row["wav"].endswith(".wav") and info.samplerate == 16000
    assert abs(info.frames / 16000 - float(row["duration"])) < 1e-3


def test_rerun_skipped_and_redone_when_options_change(tiny_corpus, tmp_path):
    first = prepare_corpus(tiny_corpus, tmp_path, labelled_fraction=0.5, n_dev_speakers=2, num_workers=1)
    assert first["prepared"]
    stamp = os.path.getmtime(first["labelled"])
    again = prepare_corpus(tiny_corpus, tmp_path, labelled_fraction=0.5, n_dev_speakers=2, num_workers=1)
    assert not again["prepared"] and os.path.getmtime(first["labelled"]) == stamp
    changed = prepare_corpus(tiny_corpus, tmp_path, labelled_fraction=0.25, n_dev_speakers=2, num_workers=1)
    assert changed["prepared"]
    with open(tmp_path / "prepare_done.json") as f:
        assert json.load(f)["options"]["labelled_fraction"] == 0.25


def test_split_is_seeded():
    spk = [f"s{i:02d}" for i in range(30)]
    assert split_speakers(spk, 0.1, 3, seed=5) == split_speakers(list(reversed(spk)), 0.1, 3, seed=5)
    assert split_speakers(spk, 0.1, 3, seed=5) != split_speakers(spk, 0.1, 3, seed=6)
    with pytest.raises(CorpusError, match="labelled_fraction"):
        split_speakers(spk, 0.0, 3, seed=5)


def _bad_corpus(tmp_path, kind):
    """A 6-speaker corpus whose utterance 'bad' has one defect."""
    audio = tmp_path / "audio"
    audio.mkdir(parents=True)
    utts = []
    for i in range(6):
        wav = audio / f"u{i}.wav"
        sf.write(wav, np.random.RandomState(i).randn(8000).astype("float32") * 0.1, 16000)
        utts.append((f"u{i}", str(wav), f"s{i}", "HELLO THERE"))
    bad = audio / "bad.wav"
    text = "HELLO THERE"
    if kind == "missing":
        pass
    elif kind == "unreadable":
        bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    elif kind == "rate":
        sf.write(bad, np.zeros(8000, dtype="float32"), 8000)
    elif kind == "empty_text":
        sf.write(bad, np.zeros(8000, dtype="float32"), 16000)
        text = ""
    utts.append(("bad", str(bad), "s0", text))
    write_kaldi_dir(tmp_path / "train", utts)
    write_kaldi_dir(tmp_path / "test", [("t0", str(audio / "u0.wav"), "t", "HI")])
    return tmp_path


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"), ("unreadable", "cannot read"),
    ("rate", "sample rate 8000"), ("empty_text", "empty transcript"),
])
def test_bad_input_names_the_utterance(tmp_path, kind, message):
    corpus = _bad_corpus(tmp_path / "c", kind)
    with pytest.raises(CorpusError, match=f"utterance bad: .*{message}"):
        prepare_corpus(corpus, tmp_path / "out", n_dev_speakers=1, num_workers=1)
    assert not (tmp_path / "out" / "prepare_done.json").exists()
    skipped = prepare_corpus(corpus, tmp_path / "out", n_dev_speakers=1, num_workers=1, on_bad="skip")
    assert skipped["skipped"] == 1
    all_ids = {r["ID"] for s in ("labelled", "unlabelled", "dev", "test_clean") for r in read_csv(skipped[s])}
    assert "bad" not in all_ids and len(all_ids) == 7
    assert "utterance bad" in (tmp_path / "out" / "skipped.txt").read_text()


def test_kaldi_dir_errors(tmp_path):
    write_kaldi_dir(tmp_path, [("a", "x.wav", "s", "HI")])
    (tmp_path / "text").write_text("")
    with pytest.raises(CorpusError, match="no entry for utterance a"):
        read_kaldi_dir(tmp_path)
    (tmp_path / "wav.scp").write_text("a sox x.wav -t wav - |\n")
    with pytest.raises(CorpusError, match="only 'utt path' lines"):
        read_kaldi_dir(tmp_path)
