"""Every stage knows what it was made from: a stage reruns when its command or a stage it reads changed,
and everything after it reruns too; a student refuses soft labels that are not of its teacher and data.

The fast tests run the real plan (kd_brain/pipeline/plan.py, the repository's configs) with fake stage
scripts: each one only marks the outputs its command names (fresh, or resumed when they are there).
"""

import json
import os
import subprocess
import sys

import pytest

from kd_brain.pipeline import runner
from kd_brain.pipeline.plan import stages
from tests.conftest import REPO

STAGES = ["corpus", "prepare", "teacher", "teacher_seq", "extract", "student", "student_seq", "multicondition",
          "pseudo_labels", "pseudo_label"]
AFTER_TEACHER = STAGES[3:]
FAKE_STAGE = f"""import os, sys
sys.path.insert(0, {str(REPO)!r})
from kd_brain.pipeline.fingerprint import writes
for path in writes(".", sys.argv):
    resumed = os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "runs.txt"), "a") as f:
        f.write("resumed\\n" if resumed else "fresh\\n")
if os.environ.get("FAKE_FAIL") == os.path.basename(sys.argv[0]):
    sys.exit("killed")
"""


@pytest.fixture
def fake(tmp_path):
    """A root with the repository's configs and fake stage scripts: (root, plan, run)."""
    (tmp_path / "hparams").symlink_to(REPO / "hparams")
    scripts = tmp_path / "recipes" / "KD-Noise"
    scripts.mkdir(parents=True)
    for name in ("make_synthetic", "prepare", "train", "extract", "pseudo_label"):
        (scripts / f"{name}.py").write_text(FAKE_STAGE)
    plan, run = stages(str(tmp_path), "synthetic", 0.02, "exp/s")
    return tmp_path, plan, run


def run_plan(root, plan, run, extra=(), only=()):
    """What run.py does with a plan: every stage, or ``only`` these, forced (``--stages``)."""
    for name, argv in plan:
        if not only or name in only:
            runner.run_stage(str(root), run, name, argv, list(extra), force=bool(only))


def record(root, name):
    return json.loads((root / "exp" / "s" / "stages" / f"{name}.done").read_text())


def runs(root, folder):
    return (root / "exp" / "s" / folder / "runs.txt").read_text().split()


def test_each_stage_records_what_it_read_and_an_unchanged_chain_is_skipped(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    upstream = {name: {r["stage"] for r in record(root, name)["inputs"]["reads"].values() if r} for name in STAGES}
    assert upstream == {
        "corpus": set(), "prepare": {"corpus"}, "teacher": {"corpus", "prepare"}, "teacher_seq": {"teacher", "prepare"},
        "extract": {"teacher"}, "student": {"extract", "teacher", "prepare"},
        "student_seq": {"student", "teacher", "prepare"}, "multicondition": {"teacher", "prepare"},
        "pseudo_labels": {"teacher"}, "pseudo_label": {"pseudo_labels", "teacher", "prepare"}}
    teacher = record(root, "teacher")["fingerprint"]
    assert record(root, "extract")["inputs"]["reads"]["exp/s/teacher"]["fingerprint"] == teacher
    capsys.readouterr()
    run_plan(root, plan, run, extra=["--noprogressbar", "--device=cpu"])  # where it runs is not what it reads
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if "done earlier, skipped" in line] == \
        [f"=== stage {name}" for name in STAGES]
    assert runs(root, "student") == ["fresh"] and record(root, "teacher")["fingerprint"] == teacher


def test_a_retrained_teacher_reruns_every_stage_after_it_saying_why(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    old_store = record(root, "extract")["fingerprint"]
    capsys.readouterr()
    run_plan(root, plan, run, extra=["--seed=7"], only=["teacher"])  # run.py --stages teacher --seed=7
    out = capsys.readouterr().out
    assert "=== stage teacher: its command changed, rerunning" in out
    assert "=== stage teacher: exp/s/teacher moved aside to exp/s/teacher.stale-1" in out
    assert runs(root, "teacher") == ["fresh"] and runs(root, "teacher.stale-1") == ["fresh"]
    run_plan(root, plan, run)  # the plan's own teacher again, then every stage after it
    out = capsys.readouterr().out
    assert "=== stage teacher: its command changed, rerunning" in out
    assert "=== stage extract: teacher changed since it ran, rerunning" in out
    assert "=== stage student: " in out and "extract changed since it ran" in out
    assert "=== stage student_seq: student changed since it ran; teacher changed since it ran, rerunning" in out
    assert "=== stage pseudo_label: pseudo_labels changed since it ran; teacher changed since it ran, rerunning" in out
    for name in AFTER_TEACHER:
        assert f"=== stage {name}: " in out and f"=== stage {name} done in" in out, name
    for name in ("corpus", "prepare"):
        assert f"=== stage {name}: done earlier, skipped" in out
    assert runs(root, "softlabels") == ["fresh"] and (root / "exp" / "s" / "softlabels.stale-1").is_dir()
    assert runs(root, "teacher") == ["fresh"] and (root / "exp" / "s" / "teacher.stale-2").is_dir()
    assert record(root, "extract")["fingerprint"] != old_store
    run_plan(root, plan, run)  # a consistent chain: nothing left to do
    assert capsys.readouterr().out.count("done earlier, skipped") == len(STAGES)


def test_a_changed_command_reruns_the_stage_and_its_readers_only(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    capsys.readouterr()
    run_plan(root, [(n, a + ["--temperature=1.0"] if n == "student" else a) for n, a in plan], run)
    out = capsys.readouterr().out
    assert "=== stage student: its command changed, rerunning" in out
    assert "=== stage student_seq: student changed since it ran, rerunning" in out
    assert out.count(" done in ") == 2 and out.count("done earlier, skipped") == len(STAGES) - 2


def test_forced_unchanged_stage_resumes_in_place_and_keeps_its_fingerprint(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    teacher = record(root, "teacher")["fingerprint"]
    run_plan(root, plan, run, only=["teacher"])  # run.py --stages teacher: a finished model is evaluated again
    assert runs(root, "teacher") == ["fresh", "resumed"] and record(root, "teacher")["fingerprint"] == teacher
    capsys.readouterr()
    run_plan(root, plan, run)
    assert capsys.readouterr().out.count("done earlier, skipped") == len(STAGES)


def test_an_interrupted_stage_resumes_and_a_deleted_record_redoes_it(fake, capsys, monkeypatch):
    root, plan, run = fake
    monkeypatch.setenv("FAKE_FAIL", "extract.py")
    with pytest.raises(subprocess.CalledProcessError):
        run_plan(root, plan, run)
    assert (root / "exp" / "s" / "stages" / "extract.started").is_file()
    monkeypatch.delenv("FAKE_FAIL")
    run_plan(root, plan, run)
    assert runs(root, "softlabels") == ["fresh", "resumed"] and not (root / "exp" / "s" / "softlabels.stale-1").exists()
    assert not (root / "exp" / "s" / "stages" / "extract.started").exists()
    (root / "exp" / "s" / "stages" / "student.done").unlink()  # "delete it to redo"
    capsys.readouterr()
    run_plan(root, plan, run)
    out = capsys.readouterr().out
    assert "=== stage student: exp/s/student moved aside to exp/s/student.stale-1" in out
    assert runs(root, "student") == ["fresh"]
    assert "=== stage student_seq: student changed since it ran, rerunning" in out


def test_records_from_before_fingerprints_are_taken_until_a_stage_they_read_reruns(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    for done in (root / "exp" / "s" / "stages").glob("*.done"):  # as the runner wrote them before
        old = json.loads(done.read_text())
        done.write_text(json.dumps({k: old[k] for k in ("seconds", "command", "commit")}))
    (root / "exp" / "s" / "stages" / "teacher.done").unlink()
    capsys.readouterr()
    run_plan(root, plan, run)
    out = capsys.readouterr().out
    for name in ("corpus", "prepare"):
        assert f"=== stage {name}: done earlier, before stage fingerprints were recorded: taken as it is" in out
    assert "=== stage extract: teacher changed since it ran, rerunning" in out
    assert all(f"=== stage {name} done in" in out for name in ["teacher"] + AFTER_TEACHER)
    assert record(root, "prepare")["fingerprint"].startswith("legacy-")
    run_plan(root, plan, run)
    assert capsys.readouterr().out.count("done earlier, skipped") == len(STAGES)


def test_the_ablations_reuse_the_main_jobs_stages_but_not_stale_ones(fake, capsys):
    root, plan, run = fake
    run_plan(root, plan, run)
    argv = dict(plan)
    capsys.readouterr()  # the grid does not know the main job's --teacher_epochs: its record counts
    runner.run_stage(str(root), run, "teacher", argv["teacher"] + ["--number_of_epochs=20"], [], force=False,
                     reuse=True)
    assert "=== stage teacher: done earlier, skipped" in capsys.readouterr().out
    (root / "exp" / "s" / "stages" / "prepare.done").unlink()
    run_plan(root, plan, run, only=["prepare"])
    with pytest.raises(RuntimeError, match=r"stage teacher of exp/s is out of date \(prepare changed since it ran\)"):
        runner.run_stage(str(root), run, "teacher", argv["teacher"], [], force=False, reuse=True)


@pytest.fixture
def labelled_store(tmp_path):
    """A teacher folder with one checkpoint, a data folder with two manifests and a store of both (its metadata
    as extraction writes it), and a student config reading it: (hp, tokenizer, data folder, store meta)."""
    import numpy
    import soundfile
    import torch
    from speechbrain.utils.checkpoints import Checkpointer

    from kd_brain.brains.extract import file_hash
    from kd_brain.pipeline.fingerprint import manifest_hash
    from kd_brain.store import SoftLabelWriter, merge_index

    teacher, data, store = tmp_path / "teacher", tmp_path / "data", str(tmp_path / "softlabels")
    best = Checkpointer(str(teacher / "save"), {"model": torch.nn.Linear(2, 2)}).save_checkpoint(meta={"WER": 50.0})
    data.mkdir()
    soundfile.write(str(data / "a.wav"), numpy.zeros(1600), 16000)
    manifests = [str(data / "labelled.csv"), str(data / "unlabelled.csv")]
    rows = ["l,0.1,{}/a.wav,A", "u,0.1,{}/a.wav", "d,0.1,{}/a.wav,A"]  # labelled, unlabelled, dev
    for path, row in zip(manifests + [str(data / "dev.csv")], rows):
        open(path, "w").write(("ID,duration,wav,wrd\n" if row.count(",") == 3 else "ID,duration,wav\n")
                              + row.format(data) + "\n")
    frame = {"vocab_size": 5, "frame_shift_ms": 40.0, "subsampling": 4}
    meta = dict(frame, tokenizer_hash="tok", teacher_checkpoint_hash=file_hash(best.paramfiles["model"]),
                manifest_hash=manifest_hash(manifests), teacher_dir=str(teacher))
    with SoftLabelWriter(store, k=2, vocab_size=5, meta=meta) as w:
        w.add("l", torch.randn(3, 5).log_softmax(-1))
    merge_index(store)
    model = type("Model", (), {"frame_info": lambda self: frame})()
    hp = {"criterion": "sequence", "store_dir": store, "model": model, "teacher_dir": str(teacher),
          "train_splits": ["labelled", "unlabelled"], "allow_label_mismatch": False, "contaminate": False,
          "output_folder": str(tmp_path / "student"), "prep_folder": str(tmp_path)}
    return hp, type("Tokenizer", (), {"hash": "tok"})(), str(data), dict(meta, k=2)


def retrain(teacher):
    """A better checkpoint than the one the store was extracted from; its model file's hash."""
    import torch
    from speechbrain.utils.checkpoints import Checkpointer

    from kd_brain.brains.extract import file_hash

    best = Checkpointer(teacher + "/save", {"model": torch.nn.Linear(2, 2)}).save_checkpoint(meta={"WER": 10.0})
    return file_hash(best.paramfiles["model"]), str(best.path)


def test_a_student_refuses_labels_of_another_checkpoint_naming_both_hashes(labelled_store):
    from kd_brain.pipeline.experiment import student_data
    from kd_brain.store import IncompatibleStoreError

    hp, tokenizer, data, meta = labelled_store
    new, checkpoint = retrain(hp["teacher_dir"])
    with pytest.raises(IncompatibleStoreError) as err:
        student_data(hp, tokenizer, data)
    msg = str(err.value)
    assert meta["teacher_checkpoint_hash"] in msg and new in msg and checkpoint in msg
    assert "python recipes/KD-Noise/run.py --stages extract" in msg and "python recipes/KD-Noise/extract.py" in msg


def test_a_student_refuses_labels_of_other_manifests(labelled_store):
    from kd_brain.pipeline.experiment import student_data
    from kd_brain.pipeline.fingerprint import manifest_hash
    from kd_brain.store import IncompatibleStoreError

    hp, tokenizer, data, meta = labelled_store
    with pytest.raises(IncompatibleStoreError) as err:
        student_data(dict(hp, train_splits=["labelled"]), tokenizer, data)  # not the manifests it labelled
    assert meta["manifest_hash"] in str(err.value) and manifest_hash([f"{data}/labelled.csv"]) in str(err.value)


def test_a_deliberate_mismatch_is_accepted_warned_and_recorded(labelled_store, caplog):
    from kd_brain.pipeline.experiment import student_data

    hp, tokenizer, data, meta = labelled_store
    student_data(hp, tokenizer, data)  # labels of this teacher and data: no record
    assert not os.path.exists(os.path.join(hp["output_folder"], "label_mismatch.json"))
    new, _ = retrain(hp["teacher_dir"])
    train, _, _ = student_data(dict(hp, allow_label_mismatch=True), tokenizer, data)
    assert len(train) == 2 and "allow_label_mismatch" in caplog.text
    recorded = json.loads(open(os.path.join(hp["output_folder"], "label_mismatch.json")).read())
    assert recorded["teacher_checkpoint_hash"]["store"] == meta["teacher_checkpoint_hash"]
    assert recorded["teacher_checkpoint_hash"]["now"] == new and recorded["store_dir"] == hp["store_dir"]


@pytest.mark.slow
def test_retraining_the_teacher_reruns_the_chain_and_refuses_the_stale_store(tmp_path):
    """run.py on the tiny corpus; run.py --stages teacher --seed=77; a student by hand on the old store is
    refused; a plain run.py retrains the plan's teacher (its command changed) and every stage after it."""
    from kd_brain.brains.extract import file_hash
    from kd_brain.pipeline.fingerprint import label_mismatch
    from tests.test_pipeline import TINY

    exp = tmp_path / "exp"
    cmd = [sys.executable, str(REPO / "recipes" / "KD-Noise" / "run.py"), "--exp", str(exp), "--hours", "0.02"] + TINY

    def run(argv):
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    run(cmd)
    old = json.loads((exp / "softlabels" / "meta.json").read_text())["teacher_checkpoint_hash"]
    assert "=== stage teacher: its command changed, rerunning" in run(cmd + ["--stages", "teacher", "--seed=77"])
    assert (exp / "teacher.stale-1" / "save").is_dir()
    new = label_mismatch({"teacher_checkpoint_hash": old}, [str(exp / "teacher")], [])["teacher_checkpoint_hash"]["now"]
    student = dict(stages(str(REPO), "synthetic", 0.02, str(exp), shared=str(REPO.parent / "shared" / "data"))[0])
    argv = runner.merge(student["student"], runner.overrides_for(str(REPO), student["student"], TINY))
    by_hand = subprocess.run([sys.executable] + argv + ["--model_name=by_hand"], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    said = by_hand.stdout + by_hand.stderr  # (SpeechBrain logs the exception to stdout)
    assert by_hand.returncode != 0 and "IncompatibleStoreError" in said and old in said and new in said, said[-3000:]
    assert "python recipes/KD-Noise/run.py --stages extract" in said
    out = run(cmd)
    assert "=== stage teacher: its command changed, rerunning" in out
    assert "=== stage extract: teacher changed since it ran, rerunning" in out
    for name in AFTER_TEACHER:
        assert f"=== stage {name}: " in out and f"=== stage {name} done in" in out, name
    assert "=== stage corpus: done earlier, skipped" in out and "=== stage prepare: done earlier, skipped" in out
    store = json.loads((exp / "softlabels" / "meta.json").read_text())["teacher_checkpoint_hash"]
    best = label_mismatch({"teacher_checkpoint_hash": "-"}, [str(exp / "teacher")], [])["teacher_checkpoint_hash"]
    # labels of the plan's teacher again, not of the seed-77 one (retrained with the plan's seed, it may be the first)
    assert store == best["now"] == file_hash(os.path.join(best["checkpoint"], "model.ckpt")) != new
    assert (exp / "softlabels.stale-1").is_dir() and (exp / "student.stale-1").is_dir()
    assert run(cmd).count("done earlier, skipped") == len(STAGES)
