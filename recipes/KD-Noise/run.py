#!/usr/bin/env python3
"""The stage driver: the whole KD-Noise chain on one corpus, resumable.

    python recipes/KD-Noise/run.py                          # default: synthetic corpus
    python recipes/KD-Noise/run.py --corpus speechocean762  # the real bed (../shared/data)

Stages (each one command, printed before it runs, so any stage can be rerun
or forked by hand): corpus, prepare, teacher, teacher_seq, extract, student,
student_seq, report. A finished stage leaves ``<exp>/stages/<name>.done`` and
is skipped next time; an interrupted one resumes from its own checkpoints.
``--stages a b`` runs only those (done or not); extra ``--key=value`` go to
every preparation and training stage whose YAML has that key.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
R = "recipes/KD-Noise"
MODELS = ["teacher", "teacher_seq", "student", "student_seq"]
CONDITIONS = ["clean", "noisy_sim", "rerecorded"]
TEACHER_SEQ = ["--criterion=mwer", "--model_name=teacher_seq", "--init_from=teacher",
               "--train_splits=[labelled]", "--contaminate=False", "--number_of_epochs=1"]
STUDENT_SEQ = ["--criterion=mwer", "--model_name=student_seq", "--init_from=student", "--train_splits=[labelled]",
               "--number_of_epochs=1"]


def stages(corpus, hours, exp):
    """[(name, argv)] for a corpus; argv runs from the repository root."""
    if corpus == "synthetic":
        teacher = ["hparams/teacher.yaml", f"--exp_folder={exp}", f"--corpus_dir={exp}/corpus"]
        noise = [] if os.path.isdir(SHARED) else [  # no real media: the corpus's own TTS talk and synth music
            f"--noise_csv={exp}/corpus/noise/noise.csv", "--reserved_sources=[]"]
        first = [("corpus", [f"{R}/make_synthetic.py", "--out", f"{exp}/corpus", "--hours", str(hours)])]
    else:
        # From scratch the bed teacher stays at the CTC plateau on 2 cores; it starts from the
        # synthetic-corpus teacher of the main job (run that first).
        teacher = ["hparams/teacher_bed.yaml", f"--exp_folder={exp}", "--init_from=exp/synthetic/teacher"]
        noise, first = [], []
    student = ["hparams/student.yaml", f"--exp_folder={exp}"] + noise
    return first + [
        ("prepare", [f"{R}/prepare.py", teacher[0], "hparams/student.yaml"] + teacher[1:] + noise),
        ("teacher", [f"{R}/train.py"] + teacher),
        ("teacher_seq", [f"{R}/train.py"] + student + TEACHER_SEQ),
        ("extract", [f"{R}/extract.py", "hparams/extract.yaml", f"--exp_folder={exp}"]),
        ("student", [f"{R}/train.py"] + student),
        ("student_seq", [f"{R}/train.py"] + student + STUDENT_SEQ),
    ]


def yaml_keys(path):
    """Top-level keys of a YAML file (HyperPyYAML tags need no parsing for this)."""
    with open(os.path.join(REPO, path)) as f:
        return set(re.findall(r"^([A-Za-z_]\w*):", f.read(), flags=re.M))


def overrides_for(argv, extra):
    """The ``--key=value`` of ``extra`` whose key the stage's YAML has; run options (no '=') always."""
    keys = yaml_keys(next(a for a in argv if a.endswith(".yaml")))
    return [e for e in extra if "=" not in e or e[2:].split("=", 1)[0] in keys]


def merge(argv, extra):
    """argv + extra, where an extra ``--key=value`` replaces the stage's own setting of that key."""
    keys = {e.split("=", 1)[0] for e in extra if "=" in e}
    return [a for a in argv if a.split("=", 1)[0] not in keys] + extra


def run_stage(exp, name, argv, extra, force):
    done = os.path.join(REPO, exp, "stages", f"{name}.done")
    if os.path.isfile(done) and not force:
        print(f"=== stage {name}: done earlier, skipped (delete {os.path.relpath(done, REPO)} to redo)", flush=True)
        return
    if argv[0].endswith(("train.py", "prepare.py")):
        argv = merge(argv, overrides_for(argv, extra))
    print(f"\n=== stage {name}: python {' '.join(argv)}", flush=True)
    t0 = time.time()
    subprocess.run([sys.executable] + argv, cwd=REPO, check=True)
    seconds = round(time.time() - t0)
    os.makedirs(os.path.dirname(done), exist_ok=True)
    with open(done, "w") as f:
        json.dump({"seconds": seconds, "command": "python " + " ".join(argv)}, f)
    print(f"=== stage {name} done in {seconds} s", flush=True)


def report(exp, order):
    """Prints and writes the paper's table and its bar chart."""
    sys.path.insert(0, REPO)
    from kd_brain.report import bar_chart, load_results, paper_table

    results = load_results(os.path.join(REPO, exp))
    conds = [c for c in CONDITIONS if any(c in r for r in results.values())]
    table = paper_table(results, MODELS, conds, reference="teacher_seq")
    times = {}
    for name in order:
        path = os.path.join(REPO, exp, "stages", f"{name}.done")
        if os.path.isfile(path):
            with open(path) as f:
                times[name] = json.load(f)["seconds"]
    with open(os.path.join(REPO, exp, "paper_table.md"), "w") as f:
        f.write(table + f"\nStage wall times (s): {json.dumps(times)}\n")
    bar_chart(results, MODELS, conds, os.path.join(REPO, exp, "paper_table.png"))
    print(f"\nWER (%) on {exp} (best decoder: word n-gram if configured, else beam; {exp}/results.json, paper_table.md, paper_table.png):\n{table}")
    print(f"Stage wall times (s): {times}; total {sum(times.values())} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic", choices=["synthetic", "speechocean762"])
    parser.add_argument("--hours", type=float, default=3.0, help="size of the synthetic corpus")
    parser.add_argument("--exp", help="experiment folder (default: exp/<corpus>)")
    parser.add_argument("--stages", nargs="*", help="run only these stages, even if done")
    args, extra = parser.parse_known_args()
    exp = args.exp or f"exp/{args.corpus}"
    plan = stages(args.corpus, args.hours, exp)
    if args.corpus == "speechocean762" and not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: the real bed needs ../shared/data beside the repository")
    for name, argv in plan:
        if not args.stages or name in args.stages:
            run_stage(exp, name, argv, extra, force=bool(args.stages))
    report(exp, [name for name, _ in plan])


if __name__ == "__main__":
    main()
