"""The main job end to end on a tiny synthetic corpus: every stage runs, the table comes out, reruns skip."""

import json
import subprocess
import sys

from tests.conftest import REPO

TINY = ["--d_model=32", "--num_layers=1", "--nhead=2", "--d_ffn=64", "--frontend_channels=4", "--n_mels=40",
        "--number_of_epochs=1", "--beam_size=2", "--mwer_nbest=2", "--test_batch_size=8", "--num_workers=0",
        "--n_dev_speakers=2", "--noprogressbar"]


def test_main_job_on_tiny_synthetic_corpus(tmp_path):
    exp = tmp_path / "exp"
    cmd = [sys.executable, str(REPO / "recipes" / "KD-Noise" / "run.py"), "--exp", str(exp), "--hours", "0.02"] + TINY
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((exp / "results.json").read_text())
    assert set(results) == {"teacher", "teacher_seq", "student", "student_seq"}
    for model in results.values():
        assert {"dev", "clean", "noisy_sim"} <= set(model)
    table = (exp / "paper_table.md").read_text()
    assert "| student vs teacher_seq |" in table and (exp / "paper_table.png").stat().st_size > 1000
    for stage in ("corpus", "prepare", "teacher", "teacher_seq", "extract", "student", "student_seq"):
        assert (exp / "stages" / f"{stage}.done").is_file()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("skipped (delete") == 7
