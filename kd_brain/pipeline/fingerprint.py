"""What each stage was made from: stage fingerprints, and soft labels checked against their teacher.

A finished stage's record (``<run>/stages/<name>.done``) holds its ``inputs``
(the command it ran, argv after overrides less the options that only say
where and how it runs, :data:`RUN_ONLY`; and for every path that command
reads, the fingerprint of the stage whose record says it wrote that path)
and its own ``fingerprint``: a digest of those inputs and of a random draw
made whenever the stage starts afresh. A fresh run is thus a new fingerprint
even under the same command (a retrained teacher is another teacher); the
runner (:func:`kd_brain.pipeline.runner.run_stage`) reruns a stage whose
recorded inputs are not the current ones (:func:`changes`), and as each
rerun's fingerprint is new, so does every stage after it, each saying why.

Who reads what follows from the commands (:func:`reads`, :func:`writes`): a
stage reads the model folders its config names (``teacher_dir``,
``init_from``), its soft-label store (``store_dir``, frame and sequence
criteria), manifests of ``train_splits``, the prepared data and test
conditions (``data_folder``, ``prep_folder``), the corpus and the noise and
room manifests; the writer of a path is the stage whose record names it (or
a folder above it) in the nearest ``stages/`` folder above the path. Seed
runs so read the seed-0 prepare (``--prep_folder``), ablation rows the stores
and models their overrides name, the real bed's teacher the synthetic one.

A record from before fingerprints existed is taken as it is (one notice; it
gets a fingerprint derived from its content) unless its command changed or a
stage it reads has run afresh since: old experiments do not retrain.

A few functions rather than make, Snakemake or DVC: the plan (plan.py,
grids.py) already is the stage graph as data and the edges follow from its
commands; a workflow tool would need the graph written a second time in its
own language, and a new dependency.

The soft-label store records its own inputs (``teacher_checkpoint_hash``,
``manifest_hash``: :func:`kd_brain.brains.extract.store_meta`); a student
checks them against its teacher's best checkpoint and its manifests
(:func:`check_labels`).
"""

import glob
import hashlib
import json
import os
import re
import uuid

import yaml

from kd_brain.pipeline import config
from kd_brain.pipeline.atomic import write_json

# Options that say where and how visibly a stage runs, not what it makes (--nproc is not in argv either)
RUN_ONLY = {"device", "noprogressbar", "debug", "data_parallel_backend", "distributed_backend",
            "find_unused_parameters"}
# Scripts whose outputs a fresh run moves aside: they resume from what they find there (checkpoints, shards,
# finished files). The exports (prepare_librispeech, prepare_noise) write folders shared with other stages
# from read-only sources and are left alone.
FRESH = ("train.py", "extract.py", "pseudo_label.py", "prepare.py", "make_synthetic.py")
LEGACY = "legacy-"  # fingerprints of records written before fingerprints existed


def _settings(root, argv):
    """``get(key)``: a setting of a stage's configs (the first YAML wins on a shared key) and overrides
    (the last wins), its ``<key>`` references filled in; None for null."""
    values = {}
    for path in reversed([a for a in argv[1:] if a.endswith(".yaml")]):
        values.update(config.top_level(os.path.join(root, path)))
    values.update(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)

    def get(key, depth=0):
        value = values.get(key)
        if isinstance(value, str) and depth < 20:
            value = re.sub(r"<(\w+)>", lambda m: str(get(m.group(1), depth + 1)), value)
        return None if value in (None, "null", "None", "") else value

    return get


def _norm(root, path):
    """A path as stages name it: relative to ``root`` when inside it, else absolute."""
    full = os.path.normpath(os.path.join(root, str(path)))
    rel = os.path.relpath(full, root)
    return full if rel.startswith("..") else rel


def _option(argv, flag, default):
    """The value of an argparse option (``--out X`` or ``--out=X``)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return default


def writes(root, argv):
    """The paths a stage's command writes (each its own: a model folder, a store, a corpus).

    Example
    -------
    >>> root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    >>> writes(root, ["recipes/KD-Noise/train.py", "hparams/student.yaml", "--exp_folder=exp/s", "--model_name=x"])
    ['exp/s/x']
    >>> writes(root, ["recipes/KD-Noise/prepare.py", "hparams/teacher.yaml", "hparams/student.yaml", "--exp_folder=e"])
    ['e/data', 'e/conditions', 'e/rooms.pt']
    """
    script, get = os.path.basename(argv[0]) if argv else "", _settings(root, argv)
    out = []
    if script == "train.py":
        out = [get("output_folder")]
    elif script == "extract.py":
        out = [get("output_folder")] + ([get("sampled_folder")] if int(get("sampled_k") or 0) > 0 else [])
    elif script == "pseudo_label.py":
        out = [os.path.dirname(get("pseudo_csv"))]
    elif script == "prepare.py":
        out = [get("data_folder"), f"{get('prep_folder')}/conditions", get("room_bank")]
    elif script == "make_synthetic.py":
        out = [_option(argv, "--out", "exp/synth_corpus")]
    elif script == "prepare_librispeech.py":
        out = argv[2:3]
    elif script == "prepare_noise.py" and len(argv) > 3:
        out = [os.path.join(argv[3], "noise" if argv[1] == "musan" else "rir")]
    return [_norm(root, p) for p in out if p]


def reads(root, argv):
    """The paths a stage's command reads that another stage may have written.

    Example
    -------
    >>> root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    >>> reads(root, ["recipes/KD-Noise/train.py", "hparams/student.yaml", "--exp_folder=exp/s"])
    ['exp/s/conditions', 'exp/s/softlabels', 'exp/s/teacher']
    >>> reads(root, ["recipes/KD-Noise/extract.py", "hparams/extract.yaml", "--exp_folder=exp/s"])
    ['exp/s/teacher']
    """
    script, get = os.path.basename(argv[0]) if argv else "", _settings(root, argv)
    out = []
    if script in ("extract.py", "pseudo_label.py"):
        out = [get("teacher_dir")]
    elif script == "prepare.py":
        out = [get("corpus_dir"), get("noise_csv"), get("train_rooms"), get("rir_csv"), get("recorded_csv")]
    elif script == "train.py":
        init = get("init_from")  # a folder name in exp_folder, or a path (train.py's init_from)
        out = [f"{get('prep_folder')}/conditions", init if not init or "/" in init else f"{get('exp_folder')}/{init}"]
        if get("teacher_dir"):  # a student config: its teacher's data, its soft labels, its manifests
            splits = get("train_splits") or []
            splits = yaml.safe_load(splits) if isinstance(splits, str) else splits
            out += [get("teacher_dir")] + [s for s in splits if str(s).endswith(".csv")]
            out += [get("store_dir")] if get("criterion") in ("frame", "sequence") else []
        else:
            out += [get("data_folder"), get("corpus_dir")]
    return sorted(dict.fromkeys(_norm(root, p) for p in out if p))


def command(argv):
    """A stage's command as its fingerprint holds it (without :data:`RUN_ONLY`).

    Example
    -------
    >>> command(["train.py", "s.yaml", "--lr=1", "--device=cuda:0", "--noprogressbar"])
    'train.py s.yaml --lr=1'
    """
    return _command_text(" ".join(argv))


def _command_text(text):
    return " ".join(t for t in text.split(" ") if not (t.startswith("--") and t[2:].split("=", 1)[0] in RUN_ONLY))


def load(path):
    """A JSON record, or None when there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def fingerprint_of(record):
    """A record's fingerprint; a record from before fingerprints: one derived from its content."""
    if "fingerprint" in record:
        return record["fingerprint"]
    return LEGACY + hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def new_fingerprint(inputs):
    """The fingerprint of a fresh run: its inputs and a random draw (every fresh run is another)."""
    return hashlib.sha256((json.dumps(inputs, sort_keys=True) + uuid.uuid4().hex).encode()).hexdigest()[:16]


def recorded_argv(record):
    """The argv of a record's command (the launcher left out); values with spaces are not kept whole."""
    words = record["command"].split(" ")
    return words[2:] if words[0] == "torchrun" else words[1:]


def _written(root, record):
    """The paths a record's stage wrote: recorded, or (a record from before) read off its command."""
    try:
        return record.get("writes") or writes(root, recorded_argv(record))
    except (OSError, ValueError, KeyError, IndexError):  # a config gone since, a command not of a stage script
        return []


def writer_of(root, path, own):
    """``(label, record)`` of the stage that wrote ``path`` (or a folder above it): the newest record saying
    so in the nearest ``stages/`` folder above ``path``, ``own`` (a .done path) left out; None if none."""
    folder = os.path.dirname(path)
    while True:
        found = []
        for done in glob.glob(os.path.join(glob.escape(os.path.join(root, folder)), "stages", "*.done")):
            record = None if os.path.abspath(done) == os.path.abspath(own) else load(done)
            written = record and _written(root, record)
            if written and any(path == w or path.startswith(w.rstrip(os.sep) + os.sep) for w in written):
                found.append((os.path.getmtime(done), done, record))
        if found:
            _, done, record = max(found, key=lambda f: (f[0], f[1]))
            name, run = os.path.basename(done)[:-len(".done")], os.path.dirname(os.path.dirname(done))
            same = os.path.abspath(run) == os.path.abspath(os.path.dirname(os.path.dirname(own)))
            return (name if same else f"{name} ({_norm(root, run)})"), record
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)


def inputs(root, argv, own):
    """What a stage reads now: ``{"command": ..., "reads": {path: {"stage", "fingerprint"} or None}}``."""
    found = {p: writer_of(root, p, own) for p in reads(root, argv)}
    return {"command": command(argv), "reads": {p: w and {"stage": w[0], "fingerprint": fingerprint_of(w[1])}
                                                for p, w in found.items()}}


def changes(record, now, check_command=True):
    """Why a stage's record is out of date against ``now`` (:func:`inputs`): ``[]`` when it is not.

    Example
    -------
    >>> rec = {"fingerprint": "f", "inputs": {"command": "a", "reads": {"t": {"stage": "teacher", "fingerprint": "1"}}}}
    >>> changes(rec, {"command": "a", "reads": {"t": {"stage": "teacher", "fingerprint": "2"}}})
    ['teacher changed since it ran']
    >>> changes(rec, {"command": "b", "reads": {"t": {"stage": "teacher", "fingerprint": "1"}}})
    ['its command changed']
    """
    legacy = "fingerprint" not in record  # its command as run (launcher and run options left out)
    old = {"command": _command_text(" ".join(recorded_argv(record))), "reads": {}} if legacy else record["inputs"]
    reasons = ["its command changed"] if check_command and old["command"] != now["command"] else []
    for path, new in sorted(now["reads"].items()):
        if legacy:  # a stage it reads has run afresh since fingerprints exist
            if new and not new["fingerprint"].startswith(LEGACY):
                reasons.append(f"{new['stage']} changed since it ran")
        elif path in old["reads"] and (old["reads"][path] or {}).get("fingerprint") != (new or {}).get("fingerprint"):
            reasons.append(f"{(new or old['reads'][path])['stage']} changed since it ran")
    if not reasons and not legacy and check_command and set(old["reads"]) != set(now["reads"]):
        reasons.append("what it reads changed")  # (a config's default path, with the same command)
    return list(dict.fromkeys(reasons))


def move_aside(root, paths):
    """Renames each path that holds a file to ``<path>.stale-<n>`` (n one more than any before); ``[(path, new)]``.

    Nothing is deleted: a rerun never resumes an old model's checkpoints or an old store, and the old
    outputs stay for comparison until deleted by hand. Folders without a file stay (loading a config makes
    its model's empty ``save/`` folder: nothing to resume).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "exp", "teacher", "save"))
    >>> os.makedirs(os.path.join(root, "exp", "student", "save"))
    >>> _ = open(os.path.join(root, "exp", "teacher", "save", "model.ckpt"), "w").write("x")
    >>> move_aside(root, ["exp/teacher", "exp/student", "exp/none"]), sorted(os.listdir(os.path.join(root, "exp")))
    ([('exp/teacher', 'exp/teacher.stale-1')], ['student', 'teacher.stale-1'])
    """
    moved = []
    for path in paths:
        full = os.path.join(root, path)
        if not (os.path.isfile(full) or any(files for _, _, files in os.walk(full))):
            continue
        taken = [re.search(r"\.stale-(\d+)$", p) for p in glob.glob(glob.escape(full) + ".stale-*")]
        n = 1 + max([int(m.group(1)) for m in taken if m] or [0])
        os.rename(full, f"{full}.stale-{n}")
        moved.append((path, f"{path}.stale-{n}"))
    return moved


def adopt(done, record, now):
    """Gives a record from before fingerprints its content-derived fingerprint and current inputs."""
    write_json(done, dict(record, fingerprint=fingerprint_of(record), inputs=now))


def manifest_hash(paths):
    """The soft-label store's hash of manifests, in order (as :func:`kd_brain.brains.extract.store_meta`)."""
    from kd_brain.brains.extract import file_hash

    h = hashlib.sha1()
    for p in paths:
        h.update(file_hash(p).encode())
    return h.hexdigest()[:16]


def label_mismatch(meta, teacher_dirs, manifests):
    """How a store's recorded inputs differ from the current ones: ``{key: {"store", "now", ...}}``, {} if not.

    The teacher is the first of ``teacher_dirs`` with a ``save/`` folder (the store's own ``teacher_dir``
    first), at its best (lowest dev WER) checkpoint, the one extraction reads; ``manifests`` are those the
    student trains on. A key the store does not record is not checked.
    """
    from speechbrain.utils.checkpoints import Checkpointer

    from kd_brain.brains.extract import file_hash

    out = {}
    if meta.get("teacher_checkpoint_hash"):
        folder = next((d for d in teacher_dirs if d and os.path.isdir(os.path.join(d, "save"))), None)
        best = folder and Checkpointer(os.path.join(folder, "save")).find_checkpoint(min_key="WER")
        now = file_hash(best.paramfiles["model"]) if best else None
        if now != meta["teacher_checkpoint_hash"]:
            out["teacher_checkpoint_hash"] = {"store": meta["teacher_checkpoint_hash"], "now": now,
                                              "teacher_dir": folder or next((d for d in teacher_dirs if d), None),
                                              "checkpoint": str(best.path) if best else None}
    if meta.get("manifest_hash"):
        now = manifest_hash(manifests)
        if now != meta["manifest_hash"]:
            out["manifest_hash"] = {"store": meta["manifest_hash"], "now": now, "manifests": list(manifests)}
    return out


def check_labels(meta, store_dir, teacher_dirs, manifests, allow=False, record_dir=None):
    """Refuses a soft-label store that is not of this teacher and data (IncompatibleStoreError naming both
    hashes and the command that re-extracts), unless ``allow``: then warns, writes the mismatch to
    ``<record_dir>/label_mismatch.json`` (the model folder) and returns it. {} when they match."""
    import logging

    from kd_brain.store import IncompatibleStoreError

    mismatch = label_mismatch(meta, teacher_dirs, manifests)
    if not mismatch:
        return {}
    lines = [f"{store_dir}: these soft labels are not of the teacher and data this student trains on:"]
    if "teacher_checkpoint_hash" in mismatch:
        m = mismatch["teacher_checkpoint_hash"]
        lines.append(f"  teacher_checkpoint_hash: the store's is {m['store']}, the best checkpoint of "
                     f"{m['teacher_dir']} ({m['checkpoint'] or 'no checkpoint there'}) hashes to {m['now']}")
    if "manifest_hash" in mismatch:
        m = mismatch["manifest_hash"]
        lines.append(f"  manifest_hash: the store's is {m['store']}, the manifests it trains on "
                     f"({', '.join(m['manifests'])}) hash to {m['now']}")
    teacher = next(d for d in teacher_dirs if d)  # the store's own, if it names one
    lines.append("Re-extract: python recipes/KD-Noise/run.py --stages extract (the main job's store; it moves the "
                 f"old one aside), or by hand: mv {store_dir} {store_dir}.stale && python recipes/KD-Noise/extract.py "
                 f"hparams/extract.yaml --exp_folder={os.path.dirname(store_dir) or '.'} --teacher_dir={teacher} "
                 f"--output_folder={store_dir} --k={meta.get('k')}. "
                 "To train on them anyway: --allow_label_mismatch=True")
    if not allow:
        raise IncompatibleStoreError("\n".join(lines))
    logging.getLogger(__name__).warning("%s\nallow_label_mismatch: training on them anyway", "\n".join(lines))
    if record_dir:
        from speechbrain.utils.distributed import if_main_process

        if if_main_process():
            os.makedirs(record_dir, exist_ok=True)
            write_json(os.path.join(record_dir, "label_mismatch.json"), {"store_dir": store_dir, **mismatch},
                       indent=1)
    return mismatch
