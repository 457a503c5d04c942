#!/usr/bin/env python3
"""The stage driver: the whole KD-Noise chain on one corpus, resumable.

    python recipes/KD-Noise/run.py                          # default: synthetic corpus
    python recipes/KD-Noise/run.py --corpus speechocean762  # the real bed (../shared/data)
    python recipes/KD-Noise/run.py --seeds 3                # + every training stage for seeds 1 and 2
    python recipes/KD-Noise/run.py --units char             # character models, in exp/synthetic_char
    python recipes/KD-Noise/run.py --teacher_epochs 20 --student_epochs 6   # the longer schedule (~67 min)
    python recipes/KD-Noise/run.py --ablation k temperature # the ablation grids (kd_brain/pipeline/grids.py)
    python recipes/KD-Noise/run.py --corpus librispeech --data_root /data --nproc 8 --device=cuda:0 --precision=bf16
        # full scale: /data holds LibriSpeech/, musan/, RIRS_NOISES/ (and VOiCES_devkit/, optional)

Stages (each one command, printed before it runs, so any stage can be rerun
or forked by hand): corpus, prepare, teacher, teacher_seq, extract, student,
student_seq, the baselines multicondition, pseudo_labels + pseudo_label, and
the report (paper table with bootstrap intervals, every stage's command and commit). A finished stage leaves ``<exp>/stages/<name>.done`` and
is skipped next time while its command and the stages it reads are unchanged; otherwise it and every
stage after it rerun from scratch, saying why (old outputs moved to ``<path>.stale-<n>``;
kd_brain/pipeline/fingerprint.py); an interrupted one resumes from its own checkpoints.
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
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from kd_brain.pipeline.grids import GRIDS, Grid, run_ablations  # noqa: E402
from kd_brain.pipeline.lock import releases_locks, take_lock  # noqa: E402
from kd_brain.pipeline.plan import CORPORA, default_exp, stages, unit_overrides, vocab_size  # noqa: E402
from kd_brain.pipeline.runner import run_stage  # noqa: E402
from kd_brain.pipeline.summary import write_paper_table, write_report  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")


def parse_args():
    # no abbreviations: a stage's own key must reach the stages (--seed=7 is not --seeds 7)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--corpus", default="synthetic", choices=CORPORA)
    parser.add_argument("--data_root", help="librispeech: the folder holding LibriSpeech/, musan/, RIRS_NOISES/ "
                        "(and VOiCES_devkit/)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) of training and extraction (torchrun)")
    parser.add_argument("--hours", type=float, default=3.3, help="size of the synthetic corpus")
    parser.add_argument("--exp", help="experiment folder (default: exp/<corpus>)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every model N times with different seeds (same corpus and test sets)")
    parser.add_argument("--stages", nargs="*",
                        help="run only these stages, even if done (afresh when something they read changed)")
    parser.add_argument("--units", default="subword", choices=["subword", "char"],
                        help="output units of every model (char: 30 characters; default exp/<corpus>_char)")
    # One key per model, not --number_of_epochs=N, which would reach every stage (the sequence stages' 1 too)
    parser.add_argument("--teacher_epochs", type=int, help="the teacher's epochs (default: its YAML's number_of_epochs)")
    parser.add_argument("--student_epochs", type=int, help="epochs of the student and both baselines "
                        "(default: hparams/student.yaml's number_of_epochs)")
    parser.add_argument("--ablation", nargs="+", metavar="GRID",
                        help=f"train the rows of these ablation grids ({', '.join(GRIDS)}, or all) on the main "
                        "job's teacher and store")
    parser.add_argument("--scale", default="ablation", choices=["ablation", "main"],
                        help="epochs of the ablation rows: 2 (ablation) or the main job's")
    return parser.parse_known_args()


def check_data(args):
    """Refuses a corpus whose data is not there (before any stage runs)."""
    if args.corpus == "speechocean762" and not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} not found: the real bed needs ../shared/data beside the repository")
    if args.corpus == "librispeech":
        missing = [d for d in ("LibriSpeech", "musan", "RIRS_NOISES")
                   if not args.data_root or not os.path.isdir(os.path.join(args.data_root, d))]
        if missing:
            sys.exit(f"--corpus librispeech --data_root {args.data_root}: {', '.join(missing)} not found in it")
        args.data_root = os.path.abspath(args.data_root)


@releases_locks
def main():
    args, extra = parse_args()
    extra = unit_overrides(args.units, extra)
    exp = args.exp or default_exp(args.corpus, args.units)
    # One run per experiment folder: a second run.py (or a stage started by hand) on it is refused;
    # the stages this one starts pass (they descend from the lock's owner). Released at exit.
    take_lock(os.path.join(REPO, exp))
    check_data(args)
    vocab = vocab_size(REPO, extra)
    if args.ablation:
        unknown = [g for g in args.ablation if g not in GRIDS + ["all"]]
        if unknown:
            sys.exit(f"--ablation {' '.join(unknown)}: choose from {', '.join(GRIDS)} or all")
        run_ablations(Grid(REPO, exp, args.scale, args.corpus, args.units, vocab, args.hours, SHARED),
                      args.ablation, extra)
        write_report(REPO, exp, args.corpus, args.units, vocab, SHARED)
        return
    runs, order = [], []
    for i in range(args.seeds):
        plan, run = stages(REPO, args.corpus, args.hours, exp, seed_index=i, units=args.units,
                           data_root=args.data_root, teacher_epochs=args.teacher_epochs,
                           student_epochs=args.student_epochs, shared=SHARED)
        if args.seeds > 1:
            print(f"\n##### seed run {i + 1} of {args.seeds}: {run}", flush=True)
        for name, argv in plan:
            if not args.stages or name in args.stages:
                run_stage(REPO, run, name, argv, extra, force=bool(args.stages), nproc=args.nproc)
        runs.append(run)
        order += [name for name, _ in plan if name not in order]
    write_paper_table(REPO, exp, runs, order)
    write_report(REPO, exp, args.corpus, args.units, vocab, SHARED)  # + breakdowns, and any grid run so far


if __name__ == "__main__":
    main()
