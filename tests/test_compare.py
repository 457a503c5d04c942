"""compare.py: two models' per-utterance errors -> interval, verdict; a model without counts is named. curves.py; run.py --units."""

import json

import pytest

from kd_brain.pipeline import plan as run
from kd_brain.pipeline import runner
from tests.conftest import REPO, load_recipe

ROOT = str(REPO)


def scores(errors):
    return {"dev": {"lm": 100.0 * sum(e for e, _ in errors.values()) / sum(n for _, n in errors.values()),
                    "n_utts": len(errors), "utt_errors": {"lm": errors},
                    "speakers": {u: u[:2] for u in errors}}}


def test_compare_prints_interval_and_verdict(tmp_path, capsys):
    ref = {f"s{i % 4}u{i}": [3, 10] for i in range(40)}
    better = {u: [1, 10] for u in ref}
    (tmp_path / "scores.json").write_text(json.dumps({"a": scores(ref), "b": scores(better)}))
    rows = load_recipe("compare").main([str(tmp_path), "a", "b"])
    assert rows == ["| dev | lm | 30.00 | 10.00 | -66.7% [-66.7, -66.7] P=1.00 | -66.7% [-66.7, -66.7] P=1.00 | "
                    "better with 95% confidence |"]
    with pytest.raises(SystemExit, match="no model 'c'"):
        load_recipe("compare").main([str(tmp_path), "a", "c"])



def test_compare_two_transcript_files_on_a_manifest(tmp_path):
    """Two transcribe.py outputs (e.g. ONNX fp32 and int8) scored on the manifest's wrd, paired by utterance."""
    lines = ["ID,duration,wav,spk_id,wrd"] + [f"s{i % 4}u{i},1.0,a{i}.wav,s{i % 4},ONE TWO THREE FOUR" for i in range(40)]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "a.tsv").write_text("".join(f"s{i % 4}u{i}\tONE TWO THREE FOUR\n" for i in range(40)))
    (tmp_path / "b.tsv").write_text("".join(f"s{i % 4}u{i}\tONE TWO\n" for i in range(40)))
    compare = load_recipe("compare")
    row = compare.main(["--transcripts", str(tmp_path / "test.csv"), str(tmp_path / "b.tsv"), str(tmp_path / "a.tsv")])
    assert row.startswith(f"| {tmp_path / 'test.csv'} | 50.00 | 0.00 | -100.0% [-100.0, -100.0] P=1.00 | -100.0%")
    assert row.endswith("better with 95% confidence |")
    (tmp_path / "c.tsv").write_text("s0u0\tONE\n")
    with pytest.raises(SystemExit, match="39 utterances have no hypothesis"):
        compare.main(["--transcripts", str(tmp_path / "test.csv"), str(tmp_path / "a.tsv"), str(tmp_path / "c.tsv")])

def test_compare_across_experiments_needs_the_same_utterances(tmp_path):
    """Characters vs sub-words: the reference model read from another experiment folder."""
    ref = {f"s{i % 4}u{i}": [3, 10] for i in range(40)}
    for name, errors in (("char", ref), ("subword", {u: [6, 10] for u in ref}), ("other", {"x": [1, 10]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.json").write_text(json.dumps({"teacher": scores(errors)}))
    rows = load_recipe("compare").main([str(tmp_path / "subword"), "teacher", "teacher",
                                        "--reference_exp", str(tmp_path / "char")])
    assert rows[0].startswith("| dev | lm | 30.00 | 60.00 | +100.0% [+100.0, +100.0] P=0.00 |") and "worse" in rows[0]
    with pytest.raises(SystemExit, match="scored different utterances"):
        load_recipe("compare").main([str(tmp_path / "other"), "teacher", "teacher", "--reference_exp",
                                     str(tmp_path / "char")])


def test_curves_script_tables_and_plots_learning_curves(tmp_path, capsys):
    for name, wers in (("chars", [100.5, 80.0, 60.0]), ("subwords", [101.0, 99.0, 55.0])):
        (tmp_path / name).mkdir()
        rows = "".join(f"{e + 1},{50.0 * (e + 1)},1.0,1.0,{w}\n" for e, w in enumerate(wers))
        (tmp_path / name / "curve.csv").write_text("epoch,elapsed_s,train_loss,valid_loss,dev_wer\n" + rows)
    out = tmp_path / "c.png"
    load_recipe("curves").main([f"c={tmp_path / 'chars'}", str(tmp_path / "subwords"), "--out", str(out)])
    text = capsys.readouterr().out
    assert "| c | 3 | 2.5 | 60.00 (3) | 60.00 |" in text and "| 55.00 (3) |" in text
    assert out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="curve.csv not found"):
        load_recipe("curves").main([str(tmp_path / "missing")])


def test_run_units_char_is_one_setting():
    """`run.py --units char`: every stage gets the character keys, the user's own overrides win."""
    assert run.unit_overrides("subword", ["--lr=1"]) == ["--lr=1"]
    char = run.unit_overrides("char", ["--word_score=0.5"])
    assert "--token_type=char" in char and "--vocab_size=30" in char and "--aux_ctc_weight=0.0" in char
    assert [a for a in char if a.startswith("--word_score")] == ["--word_score=0.5"]
    plan, _ = run.stages(ROOT, "speechocean762", 1.0, "exp/speechocean762_char", units="char")
    assert "--init_from=exp/synthetic_char/teacher" in dict(plan)["teacher"]
    plan, _ = run.stages(ROOT, "speechocean762", 1.0, "exp/speechocean762")
    assert "--init_from=exp/synthetic/teacher" in dict(plan)["teacher"]


def test_run_epoch_options_reach_their_models_only():
    """--teacher_epochs / --student_epochs: the teacher, or the student and both baselines; the
    sequence-training stages keep their single epoch; without them the YAML decides (no override)."""
    plan = dict(run.stages(ROOT, "synthetic", 1.0, "exp/x", teacher_epochs=20, student_epochs=6)[0])
    epochs = {name: [a for a in argv if a.startswith("--number_of_epochs=")] for name, argv in plan.items()}
    assert epochs["teacher"] == ["--number_of_epochs=20"]
    for name in ("student", "multicondition", "pseudo_label"):
        assert epochs[name] == ["--number_of_epochs=6"], name
    assert epochs["teacher_seq"] == epochs["student_seq"] == ["--number_of_epochs=1"]
    assert not epochs["prepare"] and not epochs["extract"]
    default = dict(run.stages(ROOT, "synthetic", 1.0, "exp/x")[0])
    assert not any(a.startswith("--number_of_epochs=") for n in ("teacher", "student") for a in default[n])


def test_stages_import_this_checkouts_library(tmp_path, monkeypatch):
    """A stage runs with its checkout first on PYTHONPATH, so another clone's editable install (setup.sh
    in a second clone) cannot supply kd_brain to this one's stages."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    runner.run_stage(str(tmp_path), ".", "where", ["-c", "import os; open('path.txt', 'w').write(os.environ['PYTHONPATH'])"],
                  [], force=False)
    assert (tmp_path / "path.txt").read_text().split(":") == [str(tmp_path), "/elsewhere"]
    assert json.loads((tmp_path / "stages" / "where.done").read_text())["seconds"] >= 0
