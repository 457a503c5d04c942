"""The main job end to end on a tiny synthetic corpus: every stage runs, the table comes out, reruns skip."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_ARCH, flow

# Sub-word units, the default, with the auxiliary character head (the 0.02 h corpus allows at
# most 114 pieces); characters run end to end through the conftest fixtures.
SUBWORD_ARCH = {**TINY_ARCH, "num_layers": 2, "aux_vocab_size": 30, "aux_layer": 1}
TINY = [f"--arch={flow(SUBWORD_ARCH)}", "--vocab_size=64",
        "--number_of_epochs=1", "--beam_size=2", "--mwer_nbest=2", "--test_batch_size=8", "--num_workers=0",
        "--n_dev_speakers=2", "--noprogressbar"]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The main job on the 0.02 h corpus, once for the tests below: (exp, command, its output)."""
    exp = tmp_path_factory.mktemp("pipeline") / "exp"
    cmd = [sys.executable, str(REPO / "recipes" / "KD-Noise" / "run.py"), "--exp", str(exp), "--hours", "0.02"] + TINY
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return exp, cmd, out


def test_main_job_on_tiny_synthetic_corpus(main_job):
    exp, cmd, out = main_job
    assert (exp / "data" / "tokenizer_unigram64").is_dir() and (exp / "data" / "tokenizer_char30").is_dir()
    results = json.loads((exp / "results.json").read_text())["wer"]
    assert set(results) == {"teacher", "teacher_seq", "student", "student_seq", "multicondition", "pseudo_label"}
    for model in results.values():
        assert {"dev", "clean", "noisy_sim"} <= set(model)
    table = (exp / "paper_table.md").read_text()
    assert "| student vs teacher_seq | " in table and "| pseudo_label vs teacher | " in table
    assert "Verdict, student vs teacher_seq: clean: " in table and (exp / "paper_table.png").stat().st_size > 1000
    stages = ("corpus", "prepare", "teacher", "teacher_seq", "extract", "student", "student_seq", "multicondition",
              "pseudo_labels", "pseudo_label")
    for stage in stages:
        done = json.loads((exp / "stages" / f"{stage}.done").read_text())
        assert done["command"].startswith("python recipes/KD-Noise/") and done["commit"]
        assert f"`{done['command']}`" in table  # every row's command is in the report
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("skipped (delete") == len(stages)
    # a second seed: every training stage again in exp/seed1 on the same corpus and test sets
    seeds = subprocess.run(cmd + ["--seeds", "2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert seeds.returncode == 0, seeds.stdout[-3000:] + seeds.stderr[-3000:]
    assert seeds.stdout.count("skipped (delete") == len(stages)  # seed 0 is the run above
    assert not (exp / "seed1" / "corpus").exists() and not (exp / "seed1" / "data").exists()
    for stage in stages[2:]:
        done = json.loads((exp / "seed1" / "stages" / f"{stage}.done").read_text())
        assert f"--exp_folder={exp}/seed1" in done["command"]
    teacher_cmd = json.loads((exp / "seed1" / "stages" / "teacher.done").read_text())["command"]
    assert "--seed=1235" in teacher_cmd and f"--prep_folder={exp}" in teacher_cmd
    table2 = (exp / "paper_table_2seeds.md").read_text()
    assert " ± " in table2 and "errors pooled over 2 seeds" in table2
    summary = json.loads((exp / "paper_table_2seeds.json").read_text())
    assert len(summary["wer"]["student"]["clean"]["runs"]) == 2


def test_ablation_grid_on_the_main_jobs_teacher_and_store(main_job):
    """--ablation target: the base row and two targets (one extraction with side arrays and
    draws), each printed before it runs, in report.md with intervals and commands; a rerun skips."""
    exp, cmd, _ = main_job
    abl = subprocess.run(cmd + ["--ablation", "target"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert abl.returncode == 0, abl.stdout[-3000:] + abl.stderr[-3000:]
    rows = ["abl_k20", "abl_tail", "abl_sampled"]
    for stage in ["extract_softlabels_targets"] + rows:
        done = json.loads((exp / "stages" / f"{stage}.done").read_text())
        assert f"=== stage {stage}: {done['command']}" in abl.stdout  # printed before it ran
    for stage in ("teacher", "teacher_seq", "extract"):  # the main job's, reused
        assert f"=== stage {stage}: done earlier, skipped" in abl.stdout
    wer = json.loads((exp / "results.json").read_text())["wer"]
    assert all({"dev", "clean", "noisy_sim", "rerecorded"} <= set(wer[m]) for m in rows)
    report = (exp / "report.md").read_text()
    assert "## Ablation: target (ablation scale)" in report and "## Main job" in report
    for label, model in [("top-k renormalised", "abl_k20"), ("top-k + tail bucket", "abl_tail"),
                         ("20 sampled units, importance-weighted", "abl_sampled")]:
        line = next(x for x in report.splitlines() if x.startswith(f"| {label} | {model} | "))
        assert line.count("% [") == 3  # each test condition against teacher_seq, with its interval
        assert f"- {label} (" in report
    assert "--target=tail" in report and "## Breakdowns" in report and "effective SNR" in report
    again = subprocess.run(cmd + ["--ablation", "target"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and " done in " not in again.stdout  # every row was done: none ran again
    assert all(f"=== stage {stage}: done earlier, skipped" in again.stdout for stage in rows)
