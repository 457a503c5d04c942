"""Running a stage: its command in a subprocess, its record, and skipping it when done.

A finished stage leaves ``<run>/stages/<name>.done`` (JSON: seconds, command,
commit), written all or nothing; a stage with a record is skipped unless
forced. Training and preparation stages receive the driver's extra
``--key=value`` overrides whose key their YAML has, and every stage that loads
a model SpeechBrain's run options.
"""

import json
import os
import subprocess
import sys
import time

from kd_brain.pipeline import config
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


def run_stage(root, run, name, argv, extra, force, nproc=1):
    """Runs one stage from ``root`` (skipped when its record exists and not ``force``)."""
    done = done_path(root, run, name)
    if os.path.isfile(done) and not force:
        print(f"=== stage {name}: done earlier, skipped (delete {os.path.relpath(done, root)} to redo)", flush=True)
        return
    if argv[0].endswith(MODEL_SCRIPTS):
        argv = merge(argv, overrides_for(root, argv, extra))
    shown, launch = launcher(argv, nproc)
    print(f"\n=== stage {name}: {shown} {' '.join(argv)}", flush=True)
    t0 = time.time()
    # the stage shares the driver's folder lock (held_fds); it runs on this checkout's kd_brain first:
    # another clone's editable install must not supply the library
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run(launch + argv, cwd=root, check=True, pass_fds=held_fds(), env=env)
    seconds = round(time.time() - t0)
    # all or nothing: a kill while writing never leaves a half .done that marks the stage finished
    write_json(done, {"seconds": seconds, "command": f"{shown} " + " ".join(argv), "commit": commit(root)})
    print(f"=== stage {name} done in {seconds} s", flush=True)


def stage_log(root, run, order):
    """{stage: its .done record (seconds, command, commit)} of the stages that finished in ``run``."""
    out = {}
    for name in order:
        path = done_path(root, run, name)
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out
