"""VOiCES export, on a tiny replica of the devkit's layout, against the LibriSpeech replica.

The replica: ``VOiCES_devkit/{source-16k,distant-16k/speech}/<split>/...`` and
``references/{test,train}_index.csv`` with the devkit's index columns. Its test
split replays LibriSpeech 83-3054-0005 (train-clean-100, labelled) and 14-114-0001
(train-clean-360, unlabelled); its train split replays 84-184-0000 (dev-clean).
"""

import csv

import numpy as np
import pytest
import soundfile as sf

from kd_brain.noise.conditions import ConditionError, write_conditions
from kd_brain.data.librispeech import STANDARD_SPLITS, export_librispeech
from kd_brain.data.prepare import CorpusError, prepare_corpus, read_csv
from kd_brain.data.voices import RECORDED_FIELDS, export_voices, parse_recording_name
from tests.test_librispeech import write_librispeech

INDEX_COLUMNS = ["index", "chapter", "degrees", "distractor", "filename", "gender", "mic", "query_name", "room",
                 "segment", "source", "speaker", "transcript", "noisy_length", "noisy_sr", "noisy_time",
                 "source_length", "source_sr", "source_time"]
# (split, speaker, chapter, segment, gender, transcript as the index has it)
REPLAYED = [("test", 83, 3054, 5, "F", "hello speaker five, of train clean one hundred"),
            ("test", 14, 114, 1, "F", "zebra hidden word one"),
            ("train", 84, 184, 0, "F", "hello speaker nil of dev clean")]
RECORDINGS = [("rm1", "babb", 1, "stu", "clo", 90), ("rm1", "none", 5, "stu", "far", 0),
              ("rm2", "musi", 12, "lav", "wal", 180)]


def write_voices(root, replayed=REPLAYED):
    """Writes the devkit replica under ``root/VOiCES_devkit``; returns that folder."""
    kit = root / "VOiCES_devkit"
    rng = np.random.RandomState(1)
    index = {}
    for split, spk, ch, sg, gender, text in replayed:
        sp = f"sp{spk:04d}"
        src_rel = f"source-16k/{split}/{sp}/Lab41-SRI-VOiCES-src-{sp}-ch{ch:06d}-sg{sg:04d}.wav"
        audio = 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)
        (kit / src_rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(kit / src_rel, audio, 16000, subtype="PCM_16")
        for room, dist, mic, mtype, pos, dg in RECORDINGS:
            name = f"Lab41-SRI-VOiCES-{room}-{dist}-{sp}-ch{ch:06d}-sg{sg:04d}-mc{mic:02d}-{mtype}-{pos}-dg{dg:03d}"
            rel = f"distant-16k/speech/{split}/{room}/{dist}/{sp}/{name}.wav"
            (kit / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(kit / rel, 0.5 * audio + 0.05 * rng.randn(16000), 16000, subtype="PCM_16")
            index.setdefault(split, []).append(dict(
                chapter=ch, degrees=dg, distractor=dist, filename=rel, gender=gender, mic=mic, query_name=name,
                room=room, segment=sg, source=src_rel, speaker=spk, transcript=text, noisy_length=16000,
                noisy_sr=16000, noisy_time=1.0, source_length=16000, source_sr=16000, source_time=1.0))
    (kit / "references").mkdir(parents=True, exist_ok=True)
    for split, rows in index.items():
        with open(kit / "references" / f"{split}_index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
            w.writeheader()
            w.writerows({"index": i, **r} for i, r in enumerate(rows))
    return kit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The LibriSpeech replica exported per subset, and VOiCES' test split exported beside it."""
    root = tmp_path_factory.mktemp("lsv")
    write_librispeech(root)
    export_librispeech(root, root / "kaldi")
    write_voices(root)
    return root, export_voices(root, root / "kaldi")


def voices_splits():
    return {**STANDARD_SPLITS, "test": ["voices-test"], "test_librispeech": ["test-clean"]}


def test_recording_names_map_to_librispeech_ids():
    f = parse_recording_name("distant-16k/speech/train/rm1/babb/sp0083/"
                             "Lab41-SRI-VOiCES-rm1-babb-sp0083-ch003054-sg0005-mc01-stu-clo-dg090.wav")
    assert (f["librispeech_id"], f["speaker"], f["room"], f["distractor"], f["mic"], f["mic_type"],
            f["mic_position"], f["degrees"]) == ("83-3054-0005", "83", "rm1", "babb", "1", "stu", "clo", "90")
    # the corpus README writes "seg" where the files have "sg"
    assert parse_recording_name("Lab41-SRI-VOiCES-rm2-none-sp1234-ch000012-seg0100-mc12-lav-wal-dg180")[
        "librispeech_id"] == "1234-12-0100"
    with pytest.raises(CorpusError, match="not a VOiCES recording name"):
        parse_recording_name("Lab41-SRI-VOiCES-src-sp0083-ch003054-sg0005.wav")


def test_voices_manifest(corpus):
    root, v = corpus
    assert v["recordings"] == 6 and v["speakers"] == 2
    rows = read_csv(v["recorded_csv"])
    with open(v["recorded_csv"]) as f:
        assert f.readline().strip().split(",") == RECORDED_FIELDS
    first = rows[0]
    assert first["ID"] == "Lab41-SRI-VOiCES-rm1-babb-sp0083-ch003054-sg0005-mc01-stu-clo-dg090"
    assert (first["spk_id"], first["librispeech_id"], first["room"], first["distractor"], first["mic"],
            first["mic_type"], first["mic_position"], first["degrees"]) == \
        ("83", "83-3054-0005", "rm1", "babb", "1", "stu", "clo", "90")
    assert first["wrd"] == "HELLO SPEAKER FIVE OF TRAIN CLEAN ONE HUNDRED"  # LibriSpeech's alphabet
    assert first["wav"].endswith(first["ID"] + ".wav") and "distant-16k/speech/test/rm1/babb/sp0083" in first["wav"]
    assert float(first["duration"]) == 1.0
    assert {r["distractor"] for r in rows} == {"babb", "none", "musi"}
    # the clean test set: the source of each recording, under the recording's ID
    wav = dict(line.split() for line in (root / "kaldi" / "voices-test" / "wav.scp").read_text().splitlines())
    assert sorted(wav) == sorted(r["ID"] for r in rows)
    assert wav[first["ID"]].endswith("source-16k/test/sp0083/Lab41-SRI-VOiCES-src-sp0083-ch003054-sg0005.wav")
    assert (root / "kaldi" / "voices-test" / "spk2gender").read_text() == "14 f\n83 f\n"
    # every replayed LibriSpeech utterance, the train split's too
    assert [(r["ID"], r["spk_id"]) for r in read_csv(v["exclude_csv"])] == \
        [("14-114-0001", "14"), ("83-3054-0005", "83"), ("84-184-0000", "84")]
    filtered = export_voices(root, root / "filtered", distractors=["none"], mics=[5])
    assert [r["ID"] for r in read_csv(filtered["recorded_csv"])] == [r["ID"] for r in rows if r["mic"] == "5"]


def test_training_never_holds_a_replayed_speaker(corpus, tmp_path):
    root, v = corpus
    out = prepare_corpus(root / "kaldi", tmp_path, splits=voices_splits(), exclude_csv=v["exclude_csv"],
                         num_workers=1, convert_audio=False)
    replayed = read_csv(v["exclude_csv"])
    voices_speakers = {r["spk_id"] for r in read_csv(out["test_clean"])} | {r["spk_id"] for r in replayed}
    for role in ("labelled", "unlabelled", "dev"):
        rows = read_csv(out[role])
        assert rows, role
        assert not {r["spk_id"] for r in rows} & voices_speakers, role  # speaker level
        assert not {r["ID"] for r in rows} & {r["ID"] for r in replayed}, role  # utterance level
    # speaker-level: 83's other utterance went too; 84 (replayed in VOiCES' train split) left dev
    assert "83-3054-0000" not in {r["ID"] for r in read_csv(out["labelled"])}
    assert out["excluded"] == 6  # 83, 14 and 84, two utterances each
    assert {r["spk_id"] for r in read_csv(out["test_librispeech"])} == {"61", "121"}
    # without the exclusion list the overlap is refused
    with pytest.raises(CorpusError, match=r"speakers in both labelled and test: \['83'\]"):
        prepare_corpus(root / "kaldi", tmp_path / "no_excl", splits=voices_splits(), num_workers=1,
                       convert_audio=False)
    # an exclusion list whose speaker label misses the utterance still catches it
    bad = tmp_path / "mislabelled.csv"
    bad.write_text("ID,spk_id\n83-3054-0005,9083\n")
    with pytest.raises(CorpusError, match="utterance 83-3054-0005 of the exclusion list is still in labelled"):
        prepare_corpus(root / "kaldi", tmp_path / "bad", splits={**STANDARD_SPLITS}, exclude_csv=bad,
                       num_workers=1, convert_audio=False)


def test_recorded_csv_accepted_by_conditions(corpus, tmp_path):
    root, v = corpus
    out = prepare_corpus(root / "kaldi", tmp_path / "data", splits=voices_splits(), exclude_csv=v["exclude_csv"],
                         num_workers=1, convert_audio=False)
    # clean and real re-recordings need neither the noise pool nor rooms
    paths = write_conditions(out["test_clean"], tmp_path / "conditions", "unused_noise.csv", "unused_rooms.pt",
                             "unused_rir.csv", conditions=("clean", "rerecorded"), recorded_csv=v["recorded_csv"])
    clean, rec = read_csv(paths["clean"]), read_csv(paths["rerecorded"])
    assert sorted(r["ID"] for r in rec) == sorted(r["ID"] for r in clean) and len(rec) == 6
    assert {r["playback"] for r in rec} == {"real"} and {r["room"] for r in rec} == {"rm1", "rm2"}
    assert all("distant-16k" in r["wav"] for r in rec) and all("source-16k" in r["wav"] for r in clean)
    # a recording whose clean counterpart is not in the test set is refused
    with pytest.raises(ConditionError, match="is not in the test manifest"):
        write_conditions(out["test_librispeech"], tmp_path / "c2", "n.csv", "r.pt", "i.csv",
                         conditions=("rerecorded",), recorded_csv=v["recorded_csv"])


@pytest.mark.parametrize("defect,message", [
    ("no_column", r"test_index.csv: missing columns \['transcript'\]"),
    ("bad_name", r"test_index.csv:2: utterance Lab41-SRI-VOiCES-rm1-babb-sp0083-ch003054-sg0005-mc01-stu-clo-dg090: "
                 r".*not a VOiCES recording name"),
    ("mismatch", r"test_index.csv:2: utterance .*-sg0005-mc01-stu-clo-dg090: file name says 83-3054-0005, columns"),
    ("no_text", r"test_index.csv:3: utterance .*-sg0005-mc05-stu-far-dg000: empty transcript"),
    ("no_wav", r"test_index.csv: utterance Lab41-SRI-VOiCES-rm1-babb-sp0083-ch003054-sg0005-mc01-stu-clo-dg090: "
               r"cannot read"),
])
def test_bad_voices_index_names_file_and_utterance(tmp_path, defect, message):
    kit = write_voices(tmp_path, REPLAYED[:1])
    index = kit / "references" / "test_index.csv"
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    if defect == "no_column":
        for r in rows:
            del r["transcript"]
    elif defect == "bad_name":
        rows[0]["filename"] = rows[0]["filename"].replace("-sg0005", "")
    elif defect == "mismatch":
        rows[0]["speaker"] = "84"
    elif defect == "no_text":
        rows[1]["transcript"] = " ,, "
    elif defect == "no_wav":
        (kit / rows[0]["filename"]).unlink()
    with open(index, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CorpusError, match=message):
        export_voices(tmp_path, tmp_path / "out")
