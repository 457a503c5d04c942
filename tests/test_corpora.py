"""LibriSpeech export, on a tiny replica of its exact layout."""

import numpy as np
import soundfile as sf

from kd_brain.data.librispeech import librispeech_to_kaldi
from kd_brain.data.prepare import prepare_corpus, read_csv


def make_librispeech(root, subset, speakers):
    for spk in speakers:
        chapter = root / subset / str(spk) / "777"
        chapter.mkdir(parents=True)
        lines = []
        for n in range(3):
            utt = f"{spk}-777-{n:04d}"
            sf.write(chapter / f"{utt}.flac", np.random.RandomState(n).randn(4000) * 0.1, 16000)
            lines.append(f"{utt} WORD NUMBER {n}")
        (chapter / f"{spk}-777.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_replica_prepares(tmp_path):
    root = tmp_path / "LibriSpeech"
    make_librispeech(root, "train-clean-100", [19, 26, 32, 40])
    make_librispeech(root, "test-clean", [61])
    assert librispeech_to_kaldi(root, ["train-clean-100"], tmp_path / "k" / "train") == 12
    assert librispeech_to_kaldi(root, ["test-clean"], tmp_path / "k" / "test") == 3
    out = prepare_corpus(tmp_path / "k", tmp_path / "m", labelled_fraction=0.5, n_dev_speakers=1,
                         num_workers=1, convert_audio=False)
    test = read_csv(out["test_clean"])
    assert [r["ID"] for r in test] == ["61-777-0000", "61-777-0001", "61-777-0002"]
    assert test[0]["wav"].endswith("61-777-0000.flac") and test[0]["wrd"] == "WORD NUMBER 0"
    assert abs(float(test[0]["duration"]) - 0.25) < 1e-6
