#!/usr/bin/env python3
"""The stage driver: the whole KD-Noise chain on one corpus, resumable.

    python recipes/KD-Noise/run.py                          # default: synthetic corpus
    python recipes/KD-Noise/run.py --corpus speechocean762  # the real bed (../shared/data)
    python recipes/KD-Noise/run.py --seeds 3                # + every training stage for seeds 1 and 2
    python recipes/KD-Noise/run.py --units char             # character models, in exp/synthetic_char
    python recipes/KD-Noise/run.py --teacher_epochs 20 --student_epochs 6   # the longer schedule (~67 min)
    python recipes/KD-Noise/run.py --ablation k temperature # the ablation grids (recipes/KD-Noise/ablations.py)
    python recipes/KD-Noise/run.py --corpus librispeech --data_root /data --nproc 8 --device=cuda:0 --precision=bf16
        # full scale: /data holds LibriSpeech/, musan/, RIRS_NOISES/ (and VOiCES_devkit/, optional)

Stages (each one command, printed before it runs, so any stage can be rerun
or forked by hand): corpus, prepare, teacher, teacher_seq, extract, student,
student_seq, the baselines multicondition, pseudo_labels + pseudo_label, and
the report (paper table with bootstrap intervals, every stage's command and commit). A finished stage leaves ``<exp>/stages/<name>.done`` and
is skipped next time; an interrupted one resumes from its own checkpoints.
``--stages a b`` runs only those (done or not); extra ``--key=value`` go to
every preparation and training stage whose YAML has that key; SpeechBrain's
run options (``--device``, ``--precision``, ...) go to every stage that loads a
model. ``--nproc N`` runs training and extraction under ``torchrun
--nproc_per_node=N``.

LibriSpeech (``--corpus librispeech``) adds three export stages ahead of
prepare: corpus (LibriSpeech's standard split, and VOiCES when
``<data_root>/VOiCES_devkit`` exists: then the clean and rerecorded test sets
are VOiCES, test-clean and test-other extra test sets), noise (MUSAN music and
speech) and rooms (RIRS_NOISES: simulated rooms train, measured rooms
re-record); the teacher is hparams/teacher_large.yaml, every student stage
hparams/student.yaml with hparams/large.yaml's overrides.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from kd_brain.atomic import write_json, write_text  # noqa: E402
from kd_brain.lock import held_fds, releases_locks, take_lock  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
R = "recipes/KD-Noise"
CORPORA = ["synthetic", "speechocean762", "librispeech"]
# SpeechBrain's run options (sb.parse_arguments), passed to every stage that loads a model
RUN_OPTS = {"device", "precision", "eval_precision", "data_parallel_backend", "distributed_backend",
            "debug", "noprogressbar", "find_unused_parameters", "grad_accumulation_factor", "max_grad_norm"}
MODEL_SCRIPTS = ("train.py", "prepare.py", "extract.py", "pseudo_label.py")
MODELS = ["teacher", "teacher_seq", "multicondition", "pseudo_label", "student", "student_seq"]
CONDITIONS = ["clean", "noisy_sim", "rerecorded"]
# Sequence training: one MWER epoch at a fifth of the student's LR (dev grid, recipe README)
TEACHER_SEQ = ["--criterion=mwer", "--model_name=teacher_seq", "--init_from=teacher",
               "--train_splits=[labelled]", "--contaminate=False", "--number_of_epochs=1", "--lr=0.0001"]
STUDENT_SEQ = ["--criterion=mwer", "--model_name=student_seq", "--init_from=student", "--train_splits=[labelled]",
               "--number_of_epochs=1", "--lr=0.0001"]
# Baselines: the student's initialisation (init_from), contaminator and epochs; only the targets differ.
MULTICONDITION = ["--criterion=ctc", "--model_name=multicondition", "--train_splits=[labelled]"]
# The configs' units are 256 sub-words with the auxiliary character CTC; characters change
# these keys together (the decoder values from the character dev grid, recipe README).
CHAR_UNITS = ["--vocab_size=30", "--token_type=char", "--aux_ctc_weight=0.0", "--lm_units=word", "--lm_order=3",
              "--lm_weight=2.0", "--word_score=-1.0", "--lm_blank_penalty=0.0", "--lm_token_beam=0"]


def default_exp(corpus, units):
    return f"exp/{corpus}" + ("_char" if units == "char" else "")


def unit_overrides(units, extra):
    """The overrides of ``--units`` ahead of the user's own (which win on a shared key)."""
    return list(extra) if units == "subword" else merge(CHAR_UNITS, extra)


def pseudo_label_args(run):
    return ["--criterion=ctc", "--model_name=pseudo_label",
            f"--train_splits=[labelled,{run}/pseudo_labels/unlabelled.csv]"]


def yaml_int(path, key, cast=int):
    """A top-level number of a YAML file (e.g. ``seed``; ``cast=float`` for ``blank_weight``)."""
    with open(os.path.join(REPO, path)) as f:
        return cast(re.search(rf"^{key}: ([0-9.]+)", f.read(), flags=re.M).group(1))


def vocab_size(extra):
    """The students' units: ``--vocab_size`` among the overrides, else student.yaml's."""
    return next((int(e.split("=", 1)[1]) for e in reversed(extra) if e.startswith("--vocab_size=")),
                yaml_int("hparams/student.yaml", "vocab_size"))


def yaml_seed(path):
    return yaml_int(path, "seed")


def flow_yaml(value):
    """A YAML value in flow style on one line, for a ``--key=value`` override."""
    import yaml

    if not isinstance(value, (dict, list)):
        return str(value)  # (safe_dump would end a scalar document with "...")
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def large_overrides(section):
    """``--key=value`` of one section of hparams/large.yaml (the full-scale student or extraction)."""
    import yaml

    with open(os.path.join(REPO, "hparams", "large.yaml")) as f:
        return [f"--{k}={flow_yaml(v)}" for k, v in yaml.safe_load(f)[section].items()]


def librispeech_plan(exp, data_root):
    """The full-scale export stages and the teacher's and students' arguments (see the docstring).
    Without ``data_root`` (the report's model names only), the exports' paths are placeholders."""
    data_root = data_root or "<data_root>"
    kaldi, public = f"{exp}/kaldi", f"{exp}/public"
    voices = os.path.join(data_root, "VOiCES_devkit")
    voices = voices if os.path.isdir(voices) else None
    first = [("corpus", [f"{R}/prepare_librispeech.py", os.path.join(data_root, "LibriSpeech"), kaldi]
              + (["--voices", voices] if voices else [])),
             ("noise", [f"{R}/prepare_noise.py", "musan", os.path.join(data_root, "musan"), public]),
             ("rooms", [f"{R}/prepare_noise.py", "rirs_noises", os.path.join(data_root, "RIRS_NOISES"), public])]
    teacher = ["hparams/teacher_large.yaml", f"--corpus_dir={kaldi}"]
    tests = {"test_other": f"{exp}/data/test_other.csv"}
    noise = [f"--noise_csv={public}/noise/musan.csv", "--reserved_sources=[jamendo,us-gov]",
             f"--train_rooms={public}/rir/simulated_rirs.csv", f"--rir_csv={public}/rir/real_rirs.csv"]
    if voices:  # VOiCES as the clean and the (real) rerecorded test set; its speakers out of training
        tests["test_librispeech"] = f"{exp}/data/test_librispeech.csv"
        teacher += ['--splits={test: [voices-test], test_librispeech: [test-clean]}',
                    f"--exclude_csv={kaldi}/voices_librispeech.csv",
                    f"--extra_test={flow_yaml({'test_librispeech': tests['test_librispeech']})}"]
        noise.append(f"--recorded_csv={kaldi}/voices-test_recorded.csv")
    students = noise + large_overrides("student") + [f"--extra_test={flow_yaml(tests)}"]
    return first, teacher, students, noise


def stages(corpus, hours, exp, seed_index=0, units="subword", data_root=None, teacher_epochs=None,
           student_epochs=None):
    """[(name, argv)] for a corpus; argv runs from the repository root.

    Seed 0 is the default run in ``exp``; seed i > 0 trains every model again
    in ``exp/seed<i>`` with seeds offset by i, on the corpus, manifests,
    tokenizer, LM and test conditions of ``exp`` (``prep_folder``).
    ``teacher_epochs`` / ``student_epochs`` (None: the YAML's) set the teacher's and
    the frame-level students' epochs (student and both baselines, which share them);
    the sequence-training stages keep their one epoch.
    """
    run = exp if seed_index == 0 else f"{exp}/seed{seed_index}"
    if corpus == "synthetic":
        teacher = ["hparams/teacher.yaml", f"--exp_folder={run}", f"--corpus_dir={exp}/corpus"]
        noise = [] if os.path.isdir(SHARED) else [  # no real media: the corpus's own TTS talk and synth music
            f"--noise_csv={exp}/corpus/noise/noise.csv", "--reserved_sources=[]"]
        first = [("corpus", [f"{R}/make_synthetic.py", "--out", f"{exp}/corpus", "--hours", str(hours),
                             "--train-speakers", "165"])]
        student = ["hparams/student.yaml", f"--exp_folder={run}"] + noise
        extract = []
    elif corpus == "librispeech":
        first, teacher, large, noise = librispeech_plan(exp, data_root)
        teacher.insert(1, f"--exp_folder={run}")
        student = ["hparams/student.yaml", f"--exp_folder={run}"] + large
        extract = large_overrides("extract")
    else:
        # From scratch the bed teacher stays at the CTC plateau on 2 cores; it starts from the
        # synthetic-corpus teacher of the main job (run that first).
        teacher = ["hparams/teacher_bed.yaml", f"--exp_folder={run}",
                   f"--init_from={default_exp('synthetic', units)}/teacher"]
        noise, first, extract = [], [], []
        student = ["hparams/student.yaml", f"--exp_folder={run}"]
    if seed_index:
        teacher += [f"--prep_folder={exp}", f"--seed={yaml_seed(teacher[0]) + seed_index}"]
        student += [f"--prep_folder={exp}", f"--seed={yaml_seed(student[0]) + seed_index}"]
        first = []
    plan = first if seed_index else first + [
        ("prepare", [f"{R}/prepare.py", teacher[0], "hparams/student.yaml"] + teacher[1:] + noise)]
    teacher += [f"--number_of_epochs={teacher_epochs}"] if teacher_epochs else []  # training only, not prepare
    student += [f"--number_of_epochs={student_epochs}"] if student_epochs else []
    return plan + [
        ("teacher", [f"{R}/train.py"] + teacher),
        ("teacher_seq", [f"{R}/train.py"] + merge(student, TEACHER_SEQ)),
        ("extract", [f"{R}/extract.py", "hparams/extract.yaml", f"--exp_folder={run}"] + extract),
        ("student", [f"{R}/train.py"] + student),
        ("student_seq", [f"{R}/train.py"] + merge(student, STUDENT_SEQ)),
        ("multicondition", [f"{R}/train.py"] + merge(student, MULTICONDITION)),
        ("pseudo_labels", [f"{R}/pseudo_label.py", "hparams/extract.yaml", f"--exp_folder={run}"] + extract),
        ("pseudo_label", [f"{R}/train.py"] + merge(student, pseudo_label_args(run))),
    ], run


def yaml_keys(path):
    """Top-level keys of a YAML file (HyperPyYAML tags need no parsing for this)."""
    with open(os.path.join(REPO, path)) as f:
        return set(re.findall(r"^([A-Za-z_]\w*):", f.read(), flags=re.M))


def overrides_for(argv, extra):
    """The ``--key=value`` of ``extra`` for a stage: training and preparation take those whose key
    their YAML has, every model-loading stage SpeechBrain's run options (and flags without '=')."""
    keys = yaml_keys(next(a for a in argv if a.endswith(".yaml")))
    if not argv[0].endswith(("train.py", "prepare.py")):
        keys = set()  # extraction: its settings are its own (the students' k, beam ... are not)
    return [e for e in extra if "=" not in e or e[2:].split("=", 1)[0] in keys | RUN_OPTS]


def merge(argv, extra):
    """argv + extra, where an extra ``--key=value`` replaces the stage's own setting of that key."""
    keys = {e.split("=", 1)[0] for e in extra if "=" in e}
    return [a for a in argv if a.split("=", 1)[0] not in keys] + extra


def commit():
    """The checked-out commit (with "+dirty" when the work tree has changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def launcher(argv, nproc):
    """The interpreter (and torchrun, for training and extraction on several processes) of a stage:
    (what is printed, what runs)."""
    if nproc > 1 and argv[0].endswith(("train.py", "extract.py")):
        return f"torchrun --nproc_per_node={nproc}", [sys.executable, "-m", "torch.distributed.run",
                                                     f"--nproc_per_node={nproc}"]
    return "python", [sys.executable]


def run_stage(run, name, argv, extra, force, nproc=1):
    done = os.path.join(REPO, run, "stages", f"{name}.done")
    if os.path.isfile(done) and not force:
        print(f"=== stage {name}: done earlier, skipped (delete {os.path.relpath(done, REPO)} to redo)", flush=True)
        return
    if argv[0].endswith(MODEL_SCRIPTS):
        argv = merge(argv, overrides_for(argv, extra))
    shown, launch = launcher(argv, nproc)
    print(f"\n=== stage {name}: {shown} {' '.join(argv)}", flush=True)
    t0 = time.time()
    # the stage shares run.py's folder lock: killed alone, run.py leaves the folder locked while it runs on
    # this checkout's kd_brain first: another clone's editable install must not supply the library
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run(launch + argv, cwd=REPO, check=True, pass_fds=held_fds(), env=env)
    seconds = round(time.time() - t0)
    # all or nothing: a kill while writing never leaves a half .done that marks the stage finished
    write_json(done, {"seconds": seconds, "command": f"{shown} " + " ".join(argv), "commit": commit()})
    print(f"=== stage {name} done in {seconds} s", flush=True)


def stage_log(run, order):
    """{stage: its .done record (seconds, command, commit)} of the stages that finished in ``run``."""
    out = {}
    for name in order:
        path = os.path.join(REPO, run, "stages", f"{name}.done")
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out


def report(exp, runs, order):
    """Prints and writes the paper's table (mean ± std over seed runs, bootstrap intervals) and its chart."""
    sys.path.insert(0, REPO)
    from kd_brain.report import bar_chart, load_results, paper_table

    results = [load_results(os.path.join(REPO, r)) for r in runs if os.path.isfile(os.path.join(REPO, r, "results.json"))]
    conds = [c for c in CONDITIONS if any(c in m for r in results for m in r["wer"].values())]
    table, summary = paper_table(results, MODELS, conds)
    logs = {r: stage_log(r, order) for r in runs}
    lines = ["\nStage wall times (s), commands and commits:"]
    for r, log in logs.items():
        total = sum(v["seconds"] for v in log.values())
        lines.append(f"- {r}: total {total} s")
        lines += [f"  - {name} ({v['seconds']} s, commit {v.get('commit', '?')}): `{v['command']}`"
                  for name, v in log.items()]
    name = "paper_table" if len(runs) == 1 else f"paper_table_{len(runs)}seeds"
    write_text(os.path.join(REPO, exp, name + ".md"), table + "\n".join(lines) + "\n")
    write_json(os.path.join(REPO, exp, name + ".json"), {**summary, "stages": logs, "report_commit": commit()},
               indent=1)
    bar_chart(results, MODELS, conds, os.path.join(REPO, exp, name + ".png"))
    seeds = f", {len(results)} seeds" if len(results) > 1 else ""
    print(f"\nWER (%) on {exp}{seeds} (headline decoder: word n-gram if configured, else beam; "
          f"{exp}/{name}.md, .json, .png):\n{table}")
    for r, log in logs.items():
        print(f"Stage wall times (s), {r}: {({k: v['seconds'] for k, v in log.items()})}; "
              f"total {sum(v['seconds'] for v in log.values())} s")


@releases_locks
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic", choices=CORPORA)
    parser.add_argument("--data_root", help="librispeech: the folder holding LibriSpeech/, musan/, RIRS_NOISES/ "
                        "(and VOiCES_devkit/)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) of training and extraction (torchrun)")
    parser.add_argument("--hours", type=float, default=3.3, help="size of the synthetic corpus")
    parser.add_argument("--exp", help="experiment folder (default: exp/<corpus>)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every model N times with different seeds (same corpus and test sets)")
    parser.add_argument("--stages", nargs="*", help="run only these stages, even if done")
    parser.add_argument("--units", default="subword", choices=["subword", "char"],
                        help="output units of every model (char: 30 characters; default exp/<corpus>_char)")
    # One key per model, not --number_of_epochs=N, which would reach every stage (the sequence stages' 1 too)
    parser.add_argument("--teacher_epochs", type=int,
                        help="the teacher's epochs (default: its YAML's number_of_epochs; 20 before 9600e10)")
    parser.add_argument("--student_epochs", type=int, help="epochs of the student and both baselines "
                        "(default: hparams/student.yaml's number_of_epochs; 6 before 9600e10)")
    parser.add_argument("--ablation", nargs="+", metavar="GRID",
                        help="train the rows of these ablation grids (or all) on the main job's teacher and store")
    parser.add_argument("--scale", default="ablation", choices=["ablation", "main"],
                        help="epochs of the ablation rows: 2 (ablation) or the main job's")
    args, extra = parser.parse_known_args()
    extra = unit_overrides(args.units, extra)
    exp = args.exp or default_exp(args.corpus, args.units)
    # One run per experiment folder: a second run.py (or a stage started by hand) on it is refused;
    # the stages this one starts pass (they descend from the lock's owner). Released at exit.
    take_lock(os.path.join(REPO, exp))
    if args.corpus == "speechocean762" and not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: the real bed needs ../shared/data beside the repository")
    if args.corpus == "librispeech":
        missing = [d for d in ("LibriSpeech", "musan", "RIRS_NOISES")
                   if not args.data_root or not os.path.isdir(os.path.join(args.data_root, d))]
        if missing:
            sys.exit(f"--corpus librispeech --data_root {args.data_root}: {', '.join(missing)} not found in it")
        args.data_root = os.path.abspath(args.data_root)
    if args.ablation:
        from ablations import GRIDS, run_ablations

        unknown = [g for g in args.ablation if g not in GRIDS + ["all"]]
        if unknown:
            sys.exit(f"--ablation {' '.join(unknown)}: choose from {', '.join(GRIDS)} or all")
        run_ablations(args.ablation, exp, args.scale, args.corpus, args.units, extra, vocab_size(extra), args.hours)
        return
    runs, order = [], []
    for i in range(args.seeds):
        plan, run = stages(args.corpus, args.hours, exp, seed_index=i, units=args.units, data_root=args.data_root,
                           teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs)
        if args.seeds > 1:
            print(f"\n##### seed run {i + 1} of {args.seeds}: {run}", flush=True)
        for name, argv in plan:
            if not args.stages or name in args.stages:
                run_stage(run, name, argv, extra, force=bool(args.stages), nproc=args.nproc)
        runs.append(run)
        order += [name for name, _ in plan if name not in order]
    report(exp, runs, order)
    from ablations import write_report

    write_report(exp, args.corpus, args.units, vocab_size(extra))  # + breakdowns, and any grid run so far


if __name__ == "__main__":
    main()
