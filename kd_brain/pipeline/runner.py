"""Running a stage: its command in a subprocess, its record, and skipping it when done from the same inputs.

A finished stage leaves ``<run>/stages/<name>.done`` (JSON: seconds, command,
commit, and what it was made from: its fingerprint, inputs and outputs, see
:mod:`kd_brain.pipeline.fingerprint`), written all or nothing; a stage whose
record holds the inputs it would read now is skipped unless forced. Any other
run starts fresh, its old outputs moved aside (``<path>.stale-<n>``): a stale
record (its command changed, or a stage it reads ran afresh since), no record
(never run, or the record deleted to redo it). Only an interrupted run
(``<name>.started`` with the same inputs) resumes from its own checkpoints,
and a forced stage whose inputs are unchanged (``run.py --stages``) resumes in
place, keeping its fingerprint: a finished model is only evaluated again.
Training and preparation stages receive the driver's extra ``--key=value``
overrides whose key their YAML has, and every stage that loads a model
SpeechBrain's run options.
"""

import json
import os
import subprocess
import sys
import time

from kd_brain.pipeline import config, fingerprint
from kd_brain.pipeline.atomic import write_json
from kd_brain.pipeline.lock import held_fds
from kd_brain.pipeline.plan import merge

# SpeechBrain's run options (sb.parse_arguments), passed to every stage that loads a model
RUN_OPTS = {"device", "precision", "eval_precision", "data_parallel_backend", "distributed_backend",
            "debug", "noprogressbar", "find_unused_parameters", "grad_accumulation_factor", "max_grad_norm"}
MODEL_SCRIPTS = ("train.py", "prepare.py", "extract.py", "pseudo_label.py")


def overrides_for(root, argv, extra):
    """The ``--key=value`` of ``extra`` for a stage: training and preparation take those whose key
    one of their YAMLs has (prepare reads the teacher's and the student's), every model-loading
    stage SpeechBrain's run options (and flags without '=').

    Example
    -------
    >>> import os
    >>> root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    >>> argv = ["recipes/KD-Noise/prepare.py", "hparams/teacher.yaml", "hparams/student.yaml"]
    >>> overrides_for(root, argv, ["--noise_csv=n.csv", "--lr=1", "--no_such_key=1", "--device=cpu"])
    ['--noise_csv=n.csv', '--lr=1', '--device=cpu']
    """
    keys = set().union(*(config.top_level(os.path.join(root, a)) for a in argv if a.endswith(".yaml")))
    if not argv[0].endswith(("train.py", "prepare.py")):
        keys = set()  # extraction: its settings are its own (the students' k, beam ... are not)
    return [e for e in extra if "=" not in e or e[2:].split("=", 1)[0] in keys | RUN_OPTS]


def commit(root):
    """The checked-out commit (with "+dirty" when the work tree has changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def launcher(argv, nproc):
    """The interpreter (and torchrun, for training and extraction on several processes) of a stage:
    (what is printed, what runs).

    Example
    -------
    >>> launcher(["recipes/KD-Noise/train.py"], 4)[0], launcher(["recipes/KD-Noise/prepare.py"], 4)[0]
    ('torchrun --nproc_per_node=4', 'python')
    """
    if nproc > 1 and argv[0].endswith(("train.py", "extract.py")):
        return f"torchrun --nproc_per_node={nproc}", [sys.executable, "-m", "torch.distributed.run",
                                                     f"--nproc_per_node={nproc}"]
    return "python", [sys.executable]


def done_path(root, run, name):
    return os.path.join(root, run, "stages", f"{name}.done")


def _how(root, run, name, argv, force, reuse):
    """``(fingerprint to run under, start fresh, inputs)``, or None to skip; prints why a stage reruns."""
    done = done_path(root, run, name)
    now, record = fingerprint.inputs(root, argv, done), fingerprint.load(done)
    redo = f"delete {os.path.relpath(done, root)} to redo"
    if record is not None:
        reasons = fingerprint.changes(record, now, check_command=not reuse)
        if not reasons and not force:
            if "fingerprint" not in record:
                fingerprint.adopt(done, record, now)
                print(f"=== stage {name}: done earlier, before stage fingerprints were recorded: taken as it is, "
                      f"skipped ({redo})", flush=True)
            else:
                print(f"=== stage {name}: done earlier, skipped ({redo})", flush=True)
            return None
        if reasons and reuse:
            raise RuntimeError(f"stage {name} of {run} is out of date ({'; '.join(reasons)}); it is the main job's: "
                               "rerun the main job (run.py with its options) first")
        if reasons:
            print(f"=== stage {name}: {'; '.join(reasons)}, rerunning", flush=True)
            return fingerprint.new_fingerprint(now), True, now
        # forced, nothing it reads changed: in place, the same outputs (unless they are gone)
        outputs = fingerprint.writes(root, argv)
        present = not outputs or any(os.path.exists(os.path.join(root, p)) for p in outputs)
        return (fingerprint.fingerprint_of(record), False, now) if present else (
            fingerprint.new_fingerprint(now), True, now)
    begun = fingerprint.load(started_path(root, run, name))
    if begun is not None and begun["inputs"] == now:  # interrupted: resumes from its own state
        return begun["fingerprint"], False, now
    return fingerprint.new_fingerprint(now), True, now


def started_path(root, run, name):
    return os.path.join(root, run, "stages", f"{name}.started")


def run_stage(root, run, name, argv, extra, force, nproc=1, reuse=False):
    """Runs one stage from ``root``, unless its record shows it done from the inputs it reads now.

    ``force`` runs it even then (in place: see the module docstring). ``reuse``: a stage another run owns
    (the main job's, under ``--ablation``): its record counts whatever its command (the main job's options
    are not the grid's), and a stale one stops the run.
    """
    done, started = done_path(root, run, name), started_path(root, run, name)
    if argv[0].endswith(MODEL_SCRIPTS):
        argv = merge(argv, overrides_for(root, argv, extra))
    how = _how(root, run, name, argv, force, reuse)
    if how is None:
        return
    fp, fresh, now = how
    outputs = fingerprint.writes(root, argv)
    if fresh and argv[0].endswith(fingerprint.FRESH):
        for path, stale in fingerprint.move_aside(root, outputs):
            print(f"=== stage {name}: {path} moved aside to {stale} (a fresh run; delete it when not needed)",
                  flush=True)
    # a kill from here on leaves .started with these inputs (the next run resumes) and no stale .done
    write_json(started, {"fingerprint": fp, "inputs": now})
    if os.path.isfile(done):
        os.remove(done)
    shown, launch = launcher(argv, nproc)
    print(f"\n=== stage {name}: {shown} {' '.join(argv)}", flush=True)
    t0 = time.time()
    # the stage shares the driver's folder lock (held_fds); it runs on this checkout's kd_brain first:
    # another clone's editable install must not supply the library
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run(launch + argv, cwd=root, check=True, pass_fds=held_fds(), env=env)
    seconds = round(time.time() - t0)
    record = {"seconds": seconds, "command": f"{shown} " + " ".join(argv), "commit": commit(root),
              "fingerprint": fp, "inputs": now, "writes": outputs}
    for path in outputs:  # a student trained on labels of another teacher (allow_label_mismatch) says so
        mismatch = fingerprint.load(os.path.join(root, path, "label_mismatch.json"))
        record.update({"label_mismatch": mismatch} if mismatch else {})
    # all or nothing: a kill while writing never leaves a half .done that marks the stage finished
    write_json(done, record)
    os.remove(started)
    print(f"=== stage {name} done in {seconds} s", flush=True)


def stage_log(root, run, order):
    """{stage: its .done record (seconds, command, commit, fingerprint ...)} of the stages that finished in ``run``."""
    out = {}
    for name in order:
        path = done_path(root, run, name)
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out
