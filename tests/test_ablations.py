"""The ablation grids' rows: one override per row, distinct models, dev-chosen settings (no training here;
tests/test_pipeline.py runs a grid end to end on the tiny corpus)."""

import pytest

from kd_brain.pipeline import grids as abl
from kd_brain.pipeline.plan import yaml_value
from kd_brain.pipeline.summary import write_report
from tests.conftest import REPO

ROOT = str(REPO)
EXP = "exp/x"


def train_argv(row):
    name, argv = row.stages[-1]
    assert name == row.model and not callable(argv)
    return argv


@pytest.mark.parametrize("grid", [g for g in abl.GRIDS if g not in ("temperature", "labelled_fraction")])
def test_rows_train_distinct_models_with_the_main_students_command(grid):
    g = abl.Grid(ROOT, EXP, "ablation")
    rows = g.rows(grid)
    models = [r.model for r in rows]
    assert len(set(models)) == len(models) and "abl_k20" in models  # every grid has the base row
    for row in rows:
        for name, argv in row.stages:
            if callable(argv):
                continue  # built when its turn comes (equal wall time)
            assert f"--exp_folder={EXP}" in argv
            if argv[0].endswith("train.py"):
                config = "hparams/teacher.yaml" if name.startswith("teacher") else "hparams/student.yaml"
                assert argv[1] == config and f"--model_name={name}" in argv
                keys = [a.split("=", 1)[0] for a in argv]
                assert len(keys) == len(set(keys)), argv  # an override replaces, never repeats, a key


def test_k_grid_reads_the_main_store_and_extracts_all_units_once():
    rows = abl.Grid(ROOT, EXP, "ablation", vocab_size=256).rows("k")
    assert [r.label for r in rows] == ["k=1", "k=5", "k=10", "base (k=20, T=2)", "k=40", "k=all (256)"]
    assert "--k=5" in train_argv(rows[1]) and "--number_of_epochs=2" in train_argv(rows[1])
    assert not any(a.startswith("--store_dir") for a in train_argv(rows[4]))  # the main job's k = 40 store
    extract_name, extract_argv = rows[5].stages[0]
    assert extract_name == "extract_softlabels_all" and "--k=256" in extract_argv
    assert f"--store_dir={EXP}/softlabels_all" in train_argv(rows[5])


def test_temperature_grid_takes_the_dev_best_k_and_needs_the_k_grid():
    g = abl.Grid(ROOT, EXP, "ablation")
    with pytest.raises(RuntimeError, match="run --ablation k first"):
        g.rows("temperature", {"wer": {}})
    results = {"wer": {"abl_k1": {"dev": 30.0, "clean": 1.0}, "abl_k5": {"dev": 20.0, "clean": 99.0},
                       "abl_k20": {"dev": 25.0}}}
    rows = g.rows("temperature", results)  # chosen on dev, whatever the test WER says; and the paper's k = 20
    assert [r.model for r in rows] == ["abl_k5_T1", "abl_k5", "abl_k5_T4", "abl_k20_T1", "abl_k20", "abl_k20_T4"]
    assert "--temperature=4.0" in train_argv(rows[2]) and "--k=5" in train_argv(rows[2])
    assert [r.label for r in rows[:2]] == ["k=5, T=1", "k=5, T=2"]
    results["wer"]["abl_k20"]["dev"] = 10.0
    assert [r.model for r in g.rows("temperature", results)] == ["abl_k20_T1", "abl_k20", "abl_k20_T4"]


def test_main_scale_base_row_is_the_main_jobs_student():
    g = abl.Grid(ROOT, EXP, "main")
    base = g.rows("blank")[0]
    assert base.model == "student" and base.stages[0][0] == "student"
    assert not any(a.startswith("--number_of_epochs") for a in train_argv(g.rows("blank")[1]))
    assert g.rows("criterion")[2].model == "student_seq"  # frame, then MWER: the main job's student_seq


@pytest.mark.parametrize("scale", ["ablation", "main"])
def test_headline_rows_are_the_models_of_their_own_grids(scale):
    g = abl.Grid(ROOT, EXP, scale, vocab_size=256)
    rows = g.rows("headline")
    models = {name: [r.model for r in g.rows(name, {"wer": {}})] for name in ("k", "blank", "clean_share")}
    assert rows[0].model == g.base().model and rows[1].model == models["k"][-1]  # k = all
    assert rows[3].model in models["blank"] and rows[4].model in models["clean_share"]
    assert "--temperature=1.0" in train_argv(rows[2]) and "--k=20" in train_argv(rows[2])
    assert any(name.endswith("softlabels_all") or "softlabels_all" in " ".join(a) for name, a in rows[1].stages)
    epochs = [a for r in rows[1:] for a in train_argv(r) if a.startswith("--number_of_epochs")]
    assert epochs == ([] if scale == "main" else ["--number_of_epochs=2"] * 4)


def test_equal_wall_time_row_gets_teacher_plus_student_time(tmp_path):
    for model, rows in {"teacher": [(1, 500.0), (2, 1000.0)], "abl_k20": [(1, 90.0), (2, 180.0)]}.items():
        (tmp_path / EXP / model).mkdir(parents=True)
        (tmp_path / EXP / model / "curve.csv").write_text(
            "epoch,elapsed_s,train_loss,valid_loss,dev_wer\n" + "".join(f"{e},{t},1,1,50\n" for e, t in rows))
    row = abl.Grid(str(tmp_path), EXP, "ablation").rows("init")[2]
    name, build = row.stages[-1]
    argv = build()
    assert name == "abl_random_init_time" and "--init_from=null" in argv and "--number_of_epochs=14" in argv
    assert sum(a.startswith("--number_of_epochs=") for a in argv) == 1  # the scale's 2 replaced, not repeated


def test_labelled_fraction_rows_train_a_new_teacher_on_a_tenth_in_its_own_experiment():
    rows = abl.Grid(ROOT, EXP, "ablation").rows("labelled_fraction")
    assert [(r.model, r.exp) for r in rows] == [("abl_k20", None), ("teacher_seq", f"{EXP}_lab10"),
                                                ("student", f"{EXP}_lab10")]
    stages = dict(rows[2].stages)
    assert list(stages) == ["prepare", "teacher", "teacher_seq", "extract", "student"]
    for name in ("prepare", "teacher"):  # the main job's corpus and test sets, a tenth labelled
        assert "--labelled_fraction=0.1" in stages[name] and f"--corpus_dir={EXP}/corpus" in stages[name]
    main_epochs = yaml_value(ROOT, "hparams/teacher.yaml", "number_of_epochs")
    # the main teacher's number of updates: its epochs x 0.8 / 0.1 (15 epochs: 120)
    assert f"--number_of_epochs={main_epochs * 8}" in stages["teacher"]
    assert "--number_of_epochs=2" in stages["student"] and f"--exp_folder={EXP}_lab10" in stages["student"]


def test_labelled_fraction_students_of_the_two_scales_do_not_share_a_name():
    abl_rows, main_rows = (abl.Grid(ROOT, EXP, scale).rows("labelled_fraction") for scale in ("ablation", "main"))
    assert abl_rows[2].model == "student" and main_rows[2].model == "main_student"
    argv = dict(main_rows[2].stages)["main_student"]
    assert "--model_name=main_student" in argv and not any(a.startswith("--number_of_epochs") for a in argv)


def test_report_shows_another_experiments_rows_with_the_base_and_each_rows_own_command(tmp_path):
    """A grid whose new rows live in another experiment (labelled_fraction) keeps its base row in the
    table; a row's command is the stage that trains its model (teacher_seq), not the row's last stage."""
    import json

    (tmp_path / "hparams").symlink_to(REPO / "hparams")  # a checkout: its configs name the default rows
    errs = {"clean": {f"u{i}": [i % 3, 10] for i in range(30)}}
    for exp, models in {EXP: ["teacher_seq", "abl_k20"], f"{EXP}_lab10": ["teacher_seq", "student"]}.items():
        (tmp_path / exp / "stages").mkdir(parents=True)
        res = {"wer": {m: {"dev": 20.0 + i, "clean": 10.0 + i} for i, m in enumerate(models)},
               "utt_errors": {m: errs for m in models}}
        (tmp_path / exp / "results.json").write_text(json.dumps(res))
        for m in models + ["extract"]:
            (tmp_path / exp / "stages" / f"{m}.done").write_text(json.dumps(
                {"seconds": 1, "commit": "c0ffee", "command": f"python {m}.py --exp_folder={exp}"}))
    report = open(write_report(str(tmp_path), EXP)).read()
    section = report.split("## Ablation: labelled_fraction (ablation scale)")[1].split("## ")[0]
    assert "| 80% labelled (the main job) | abl_k20 | 21.00 |" in section
    assert "| 10% labelled: student | student | 21.00 |" in section
    assert f"`python teacher_seq.py --exp_folder={EXP}_lab10`" in section
    assert f"`python extract.py --exp_folder={EXP}_lab10`" not in section


def test_smooth_grid_distils_the_smooth_teacher_only():
    rows = abl.Grid(ROOT, EXP, "ablation", vocab_size=256).rows("smooth")
    teacher_name, teacher = rows[1].stages[0]
    assert rows[0].model == "abl_k20" and teacher_name == "teacher_smooth" == rows[1].model
    assert f"--entropy_weight={abl.SMOOTH_WEIGHT}" in teacher and teacher[1] == "hparams/teacher.yaml"
    grid = {}
    for row in rows[2:]:
        assert row.stages[0] == rows[1].stages[0]  # the same teacher stage, trained once
        (store, extract), argv = row.stages[1], train_argv(row)
        assert f"--teacher_dir={EXP}/teacher_smooth" in extract and "--init_from=teacher_smooth" in argv
        assert f"--teacher_dir={EXP}/teacher_smooth" in argv and f"--store_dir={EXP}/{store[8:]}" in argv
        grid[next(a[4:] for a in argv if a.startswith("--k=")), next(a[14:] for a in argv if a.startswith("--temperature="))] = store
    assert set(grid) == {("1", "2.0"), ("5", "2.0"), ("20", "2.0"), ("256", "2.0"), ("20", "1.0"), ("20", "4.0")}
    assert grid["256", "2.0"] == "extract_softlabels_smooth_all" and grid["20", "2.0"] == "extract_softlabels_smooth"
