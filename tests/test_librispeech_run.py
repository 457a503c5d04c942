"""`run.py --corpus librispeech --data_root DIR` end to end on tiny replicas of LibriSpeech, MUSAN and
RIRS_NOISES (their exact layouts, written by tests/test_librispeech.py and tests/test_public_noise.py),
with the large configs shrunk to seconds through overrides: every stage runs, a rerun skips them all."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_ARCH, flow
from tests.test_librispeech import write_librispeech
from tests.test_public_noise import write_musan, write_rirs_noises
from tests.test_voices import write_voices

# The tiny replica's words (a few dozen) allow characters only; one epoch of a 1-layer model.
# every size of the large arch mapping (teacher_large.yaml) given, so teacher and students match
TINY = ["--units", "char", f"--arch={flow({**TINY_ARCH, 'conv_kernel': 15})}", "--number_of_epochs=1", "--batch_seconds=20",
        "--num_buckets=2", "--num_workers=0", "--prep_workers=1", "--num_threads=1", "--beam_size=2",
        "--mwer_nbest=2", "--test_batch_size=4", "--warmup_steps=5", "--ckpt_interval_minutes=0", "--noprogressbar"]
STAGES = ("corpus", "noise", "rooms", "prepare", "teacher", "teacher_seq", "extract", "student", "student_seq",
          "multicondition", "pseudo_labels", "pseudo_label")


@pytest.fixture(scope="module", params=[False, True], ids=["rirs_rooms", "voices"])
def data_root(tmp_path_factory, request):
    """The replicas in one folder, as /data would hold the corpora; with VOiCES_devkit or without."""
    root = tmp_path_factory.mktemp("public_corpora")
    write_librispeech(root)
    write_musan(root)
    write_rirs_noises(root)
    if request.param:
        write_voices(root)
    return root, request.param


def test_missing_corpus_is_named(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    out = subprocess.run([sys.executable, "recipes/KD-Noise/run.py", "--corpus", "librispeech", "--data_root",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "musan, RIRS_NOISES not found" in out.stderr


def test_every_stage_on_the_replicas(data_root, tmp_path):
    data_root, voices = data_root
    exp = tmp_path / "exp"
    cmd = [sys.executable, "recipes/KD-Noise/run.py", "--corpus", "librispeech", "--data_root", str(data_root),
           "--exp", str(exp)] + TINY
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for stage in STAGES:
        done = json.loads((exp / "stages" / f"{stage}.done").read_text())
        assert f"=== stage {stage}: {done['command']}" in out.stdout  # printed before it ran
    teacher = json.loads((exp / "stages" / "teacher.done").read_text())["command"]
    assert "hparams/teacher_large.yaml" in teacher and f"--corpus_dir={exp}/kaldi" in teacher
    student = json.loads((exp / "stages" / "student.done").read_text())["command"]
    # hparams/large.yaml's student section, then the user's overrides (which win on a shared key)
    assert "--warmup_steps=5" in student and "--warmup_steps=5000" not in student and "--lr=0.0005" in student
    assert f"--noise_csv={exp}/public/noise/musan.csv" in student
    assert f"--train_rooms={exp}/public/rir/simulated_rirs.csv" in student
    # the standard split: train-clean-100 labelled, the other two training subsets audio only
    data = exp / "data"
    labelled = (data / "labelled.csv").read_text()
    assert "19-119-0000" in labelled and "ZEBRA" not in labelled and "ZEBRA" not in (data / "unlabelled.csv").read_text()
    assert "20-120-0000" in (data / "unlabelled.csv").read_text() and "174-274-0000" in (data / "dev.csv").read_text()
    wer = json.loads((exp / "results.json").read_text())["wer"]
    assert set(wer) == {"teacher", "teacher_seq", "student", "student_seq", "multicondition", "pseudo_label"}
    extra = {"test_other", "test_librispeech"} if voices else {"test_other"}
    for model in wer.values():  # test-other (and test-clean, with VOiCES) scored beside the three conditions
        assert {"dev", "clean", "noisy_sim", "rerecorded"} | extra <= set(model)
    rerecorded = (exp / "conditions" / "rerecorded.csv").read_text()
    noisy = (exp / "conditions" / "noisy_sim.csv").read_text()
    assert "RVB2014" not in noisy and "air_" not in noisy
    if voices:  # the real re-recordings; every speaker VOiCES replays out of training
        assert "Lab41-SRI-VOiCES-rm1-babb-sp0083" in rerecorded and "real" in rerecorded
        training = "".join((data / f"{s}.csv").read_text() for s in ("labelled", "unlabelled", "dev"))
        assert not any(f"{spk}-{ch}-" in training for spk, ch in (("83", 3054), ("14", 114), ("84", 184)))
    else:
        assert "RVB2014_largeroom1" in rerecorded or "air_meeting" in rerecorded  # RIRS_NOISES' measured rooms
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("skipped (delete") == len(STAGES)
