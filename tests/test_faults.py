"""Kill anywhere: every long stage, SIGKILLed at random points, resumes to the uninterrupted run's outputs.

Each trial runs a stage script's ``main`` in a child of a forkserver that has
torch and speechbrain imported (the script without its import time, so the
kills land in the work), kills the child's whole process group (its worker
processes too) with SIGKILL after a random delay, 1-3 times, reruns it to the
end and compares the outputs with an uninterrupted run's: the bytes of every
file where the stage is deterministic (a killed writer's temporary files,
lock files and logs aside), and for training the checkpoints (parameters,
optimizer, scheduler, step counters), the scores and the learning curve. The
default suite runs 2 trials per stage (1-2 kills each); ``-m slow`` runs 10 trials per stage.
Full disks and the folder lock: tests/test_faults_disk.py.
"""

import functools
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time

import pytest
import yaml

from kd_brain.pipeline.atomic import is_temporary
from tests.conftest import REPO, SHARED, load_recipe, need, overrides_argv, student_argv, tiny_noise

SLOW_TRIALS = 10
# the stage's own modules, imported once in the forkserver (set before it starts: at collection)
multiprocessing.set_forkserver_preload(["torch", "speechbrain", "hyperpyyaml", "kd_brain.brains.ctc", "kd_brain.store",
                                        "kd_brain.noise.conditions", "kd_brain.synth.corpus", "tests.test_faults"])
CTX = multiprocessing.get_context("forkserver")
SCRIPTS = {"corpus": "make_synthetic", "prepare": "prepare", "train": "train", "extract": "extract"}
LOGS = {"log.txt", "env.log", "train_log.txt", ".lock"}  # logs grow on a rerun; the lock is no output


def _child(stage, argv, log, tiny):
    """A stage script's ``main`` in its own process group, output to ``log``."""
    os.setpgrp()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(log, "a", buffering=1)
    module = load_recipe(SCRIPTS[stage])
    if "rooms" in tiny:  # the room bank's size is no option of prepare.py: shrink it as TINY_OVERRIDES shrink the rest
        module.simulate_room_bank = functools.partial(module.simulate_room_bank, n_rooms=tiny["rooms"], n_test_rooms=2)
    if "shard_bytes" in tiny:  # small shards, so that kills fall between finalized ones
        module.SoftLabelWriter = functools.partial(module.SoftLabelWriter, max_shard_bytes=tiny["shard_bytes"])
    module.main(argv)


def _tail(log, n=3000):
    with open(log, errors="replace") as f:
        return f.read()[-n:]


def launch(stage, argv, log, tiny):
    p = CTX.Process(target=_child, args=(stage, argv, log, tiny))
    p.start()
    return p


def _wait_for(p, started, timeout=900):
    """Waits until ``started()`` (the stage's real work has begun) or the process ends; returns the time."""
    t_end = time.time() + timeout
    while started is not None and not started() and p.exitcode is None and time.time() < t_end:
        p.join(0.02)
    return time.time()


def run_to_end(stage, argv, log, tiny, started=None, timeout=900):
    """Runs the stage uninterrupted; returns its wall time from ``started()`` (from its start without one)."""
    p = launch(stage, argv, log, tiny)
    t0 = _wait_for(p, started)
    p.join(timeout)
    assert p.exitcode == 0, f"{stage} failed (exit {p.exitcode}):\n{_tail(log)}"
    return time.time() - t0


def kill_after(stage, argv, log, tiny, delay, started=None):
    """Starts the stage and SIGKILLs its process group ``delay`` s after ``started()`` (or its start);
    False if it finished first."""
    p = launch(stage, argv, log, tiny)
    _wait_for(p, started)
    p.join(delay)
    if p.exitcode is not None:
        assert p.exitcode == 0, f"{stage} failed before the kill (exit {p.exitcode}):\n{_tail(log)}"
        return False
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:  # killed before its setpgrp
        os.kill(p.pid, signal.SIGKILL)
    p.join()
    with open(log, "a") as f:
        f.write(f"\n##### SIGKILL after {delay:.2f} s\n")
    return True


def _noop():
    pass


def warm_forkserver():
    """Starts the forkserver (its imports take seconds), so that a run's duration is the stage's own."""
    p = CTX.Process(target=_noop)
    p.start()
    p.join()


def trial(stage, argv, folder, log, tiny, duration, kills, rng, started=None):
    """Kills a fresh run ``kills`` times at random points, then finishes it; returns the delays that killed.

    The first kill falls anywhere in the stage's work (after ``started(folder)``, e.g. training's first
    checkpoint: the setup before it is the same for every stage), later ones anywhere in the resumed runs.
    """
    killed, first = [], rng.uniform(0.0, 0.95) * duration
    for _ in range(8):
        if kill_after(stage, argv(folder), log, tiny, first, started and functools.partial(started, folder)):
            break
        shutil.rmtree(folder, ignore_errors=True)  # it ended first: again, fresh, earlier
        first *= 0.5
    else:
        raise AssertionError(f"{stage}: every run ended before its kill:\n{_tail(log)}")
    killed.append(round(first, 2))
    for _ in range(kills - 1):  # later kills anywhere in the (shorter) resumed runs
        delay = rng.uniform(0.0, 0.6) * duration
        if kill_after(stage, argv(folder), log, tiny, delay):
            killed.append(round(delay, 2))
    run_to_end(stage, argv(folder), log, tiny)
    return killed


def tree(root, skip=()):
    """{relative path: sha1} of a folder's files with ``root`` replaced in them (so two folders compare)."""
    out, swap = {}, {os.path.abspath(root).encode(): b"<ROOT>"}
    for folder, _, files in os.walk(root):  # a tokenizer's hash is its file's, which records its path
        for name in files:
            if name == "tokenizer.model":
                with open(os.path.join(folder, name), "rb") as f:
                    swap[hashlib.sha1(f.read()).hexdigest()[:16].encode()] = b"<TOKENIZER HASH>"
    for folder, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if is_temporary(name) or name.endswith((".tmp", ".part", ".part.wav", ".tmp.npy")) or name in LOGS \
                    or any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            for old, new in swap.items():  # (inside binary files too)
                data = data.replace(old, new)
            out[re.sub(r"lm_3gram_[0-9a-f]{16}", "lm_3gram_<hash of its paths>", rel)] = hashlib.sha1(data).hexdigest()
    return out


def assert_same_tree(ref, got, skip=()):
    a, b = tree(ref, skip), tree(got, skip)
    assert sorted(a) == sorted(b), f"files differ: only in the reference {sorted(set(a) - set(b))[:5]}, " \
                                   f"only in the resumed run {sorted(set(b) - set(a))[:5]}"
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"{len(differ)} files differ after resuming, e.g. {differ[:5]}"
    return len(a)


def checkpoints(save_dir):
    """{(epoch, end-of-epoch): {file: sha1}} of a model's checkpoints (the wall clock aside)."""
    out = {}
    for name in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, name)
        if not name.startswith("CKPT") or not os.path.isfile(os.path.join(path, "CKPT.yaml")):
            continue
        with open(os.path.join(path, "CKPT.yaml")) as f:
            meta = yaml.safe_load(f)
        if not meta["end-of-epoch"]:  # a kill between a save and the deletion it triggers may leave one
            continue
        files = {}
        for fname in sorted(os.listdir(path)):
            if fname not in ("CKPT.yaml", "wall_clock.ckpt"):
                with open(os.path.join(path, fname), "rb") as f:
                    files[fname] = hashlib.sha1(f.read()).hexdigest()
        out[(meta["epoch"], meta["WER"])] = files
    return out


def curve(path):
    with open(path) as f:
        return [r[:1] + r[2:] for r in (line.strip().split(",") for line in f)]  # all but elapsed_s


def assert_same_training(ref, got, model):
    a, b = checkpoints(os.path.join(ref, model, "save")), checkpoints(os.path.join(got, model, "save"))
    assert a and a == b, f"end-of-epoch checkpoints differ: {sorted(a)} vs {sorted(b)}"
    with open(os.path.join(got, model, "save", sorted(os.listdir(os.path.join(got, model, "save")))[-1],
                           "brain.ckpt")) as f:
        assert yaml.safe_load(f)["optimizer_step"] > 0
    assert curve(os.path.join(ref, model, "curve.csv")) == curve(os.path.join(got, model, "curve.csv"))
    return assert_same_tree(ref, got, skip=[f"{model}/save", f"{model}/curve.csv"])


# ---------------------------------------------------------------- the stages


def corpus_stage(tmp):
    """make_synthetic.py on a 20-second corpus (3 engines, music and talk noise); 2 worker processes."""
    from kd_brain.synth.tts import detect_engines

    need(any(i["available"] for i in detect_engines().values()), "no TTS engine (setup.sh installs them)")
    argv = lambda d: ["--out", str(d), "--hours", "0.006", "--seed", "11", "--train-speakers", "6",  # noqa: E731
                      "--test-speakers", "3", "--noise-speakers", "2", "--music-clips", "1", "--talk-clips", "1",
                      "--workers", "2"]

    def same(ref, got):
        info = [json.load(open(os.path.join(d, "corpus_info.json"))) for d in (ref, got)]
        for i in info:  # what each run measured (speeds, run records) is not the corpus
            i.pop("runs"), i.pop("this_run")
            for e in i["engines"].values():
                e.pop("x_real_time_per_process", None)
        assert info[0] == info[1]
        return assert_same_tree(ref, got, skip=["corpus_info.json"])

    return "corpus", argv, {}, same, None


def prepare_stage(tmp, tiny_corpus):
    """prepare.py on the tiny corpus: manifests, audio copies, tokenizer, room bank, the test conditions and
    the noisy dev set."""
    noise = tiny_noise(tmp)
    argv = lambda d: [str(REPO / "hparams" / "teacher_bed.yaml"), str(REPO / "hparams" / "student.yaml"),  # noqa: E731
                      f"--corpus_dir={tiny_corpus}", f"--exp_folder={d}"] + overrides_argv() + noise
    return "prepare", argv, {"rooms": 6}, assert_same_tree, None


def trained(model):
    """A training run's work has begun: its first (intra-epoch) checkpoint is there."""
    return lambda d: any(n.startswith("CKPT") for n in os.listdir(os.path.join(d, model, "save"))) \
        if os.path.isdir(os.path.join(d, model, "save")) else False


def teacher_stage(tmp, tiny_corpus, epochs):
    """train.py, a teacher config, with an intra-epoch checkpoint after every step."""
    argv = lambda d: [str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}",  # noqa: E731
                      f"--exp_folder={d}", "--noprogressbar", "--ckpt_interval_steps=1"] + \
        overrides_argv(number_of_epochs=epochs)
    return "train", argv, {}, lambda ref, got: assert_same_training(ref, got, "teacher"), trained("teacher")


def student_stage(tmp, kd_exp, epochs):
    """train.py, the student config (frame KD on contaminated audio), every step checkpointed."""
    def argv(d):  # its own folder; teacher, store, rooms and test conditions of kd_exp
        base = [a for a in student_argv(kd_exp) if not a.startswith("--exp_folder=")]
        return base + [f"--exp_folder={d}", f"--prep_folder={kd_exp}", f"--teacher_dir={kd_exp}/teacher",
                       f"--store_dir={kd_exp}/softlabels", f"--init_from={kd_exp}/teacher",
                       f"--number_of_epochs={epochs}", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=1"]
    return "train", argv, {}, lambda ref, got: assert_same_training(ref, got, "student"), trained("student")


def extract_stage(tmp, tiny_teacher):
    """extract.py: the teacher's top-k and N-best of 48 utterances, batches of 2, shards of ~4 kB."""
    argv = lambda d: [str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={tiny_teacher}",  # noqa: E731
                      f"--output_folder={d}", "--noprogressbar", "--k=5", "--nbest=2", "--beam_size=2",
                      "--batch_size=2"]

    def same(ref, got):
        assert len([n for n in os.listdir(ref) if n.endswith(".kds")]) >= 3  # kills can fall between shards
        return assert_same_tree(ref, got)

    return "extract", argv, {"shard_bytes": 4096}, same, lambda d: os.path.exists(os.path.join(d, "meta.json"))


def kill_trials(tmp, spec, n_trials, max_kills, label, seed=None):
    """Reference run, then ``n_trials`` killed-and-resumed runs compared with it; returns a summary."""
    stage, argv, tiny, same, started = spec
    # (not the global generator: the stages seed it; KD_FAULT_SEED=N replays a trial's kill points)
    seed = int(os.environ.get("KD_FAULT_SEED") or random.SystemRandom().randrange(10**6)) if seed is None else seed
    rng = random.Random(seed)
    # folder names of one length: files that record their own path (sentencepiece's model records
    # its input and prefix, length-prefixed) then compare after the path is replaced
    ref = tmp / "ref"
    warm_forkserver()
    duration = run_to_end(stage, argv(ref), str(tmp / "ref.log"), tiny, started and functools.partial(started, ref))
    killed, t0 = [], time.time()
    for i in range(n_trials):
        run, log = tmp / f"t{i:02d}", str(tmp / f"t{i:02d}.log")
        delays = trial(stage, argv, run, log, tiny, duration, rng.randint(1, max_kills), rng, started)
        try:
            n_files = same(ref, run)
        except AssertionError as e:
            raise AssertionError(f"{label}, trial {i} (seed {seed}, killed after {delays} s): {e}\n{_tail(log)}")
        killed.append(delays)
        shutil.rmtree(run, ignore_errors=True)  # a trial's folder is done with
    summary = (f"{label}: reference {duration:.1f} s, {n_files} files; {n_trials} trials in "
               f"{time.time() - t0:.0f} s, seed {seed}, kills (s) {killed}")
    print(summary)
    return summary


# ---------------------------------------------------------------- default suite: a few trials per stage
DEFAULT_TRIALS = 2  # 1-2 kills each; ``-m slow`` runs 10 trials of 1-3 kills


def test_corpus_generation_killed_resumes_identically(tmp_path):
    kill_trials(tmp_path, corpus_stage(tmp_path), DEFAULT_TRIALS, 2, "corpus")


def test_prepare_killed_resumes_identically(tmp_path, tiny_corpus):
    kill_trials(tmp_path, prepare_stage(tmp_path, tiny_corpus), DEFAULT_TRIALS, 2, "prepare")


def test_teacher_training_killed_resumes_to_the_same_parameters_and_wer(tmp_path, tiny_corpus):
    kill_trials(tmp_path, teacher_stage(tmp_path, tiny_corpus, epochs=1), DEFAULT_TRIALS, 2, "teacher")


def test_student_training_killed_resumes_to_the_same_parameters_and_wer(tmp_path, kd_exp):
    kill_trials(tmp_path, student_stage(tmp_path, kd_exp, epochs=1), DEFAULT_TRIALS, 2, "student")


def test_extraction_killed_resumes_to_the_same_store_bytes(tmp_path, tiny_teacher):
    kill_trials(tmp_path, extract_stage(tmp_path, tiny_teacher), DEFAULT_TRIALS, 2, "extract")


# ---------------------------------------------------------------- slow: 10 trials per stage, 1-3 kills each


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["corpus", "prepare", "teacher", "student", "extract"])
def test_every_stage_killed_anywhere_resumes_identically(stage, tmp_path, request):
    spec = {"corpus": lambda: corpus_stage(tmp_path),
            "prepare": lambda: prepare_stage(tmp_path, request.getfixturevalue("tiny_corpus")),
            "teacher": lambda: teacher_stage(tmp_path, request.getfixturevalue("tiny_corpus"), epochs=2),
            "student": lambda: student_stage(tmp_path, request.getfixturevalue("kd_exp"), epochs=2),
            "extract": lambda: extract_stage(tmp_path, request.getfixturevalue("tiny_teacher"))}[stage]()
    kill_trials(tmp_path, spec, SLOW_TRIALS, 3, stage)
