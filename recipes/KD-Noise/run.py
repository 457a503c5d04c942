#!/usr/bin/env python3
"""The stage driver: the whole KD-Noise chain on one corpus, resumable.

    python recipes/KD-Noise/run.py                       # default corpus
    python recipes/KD-Noise/run.py --corpus speechocean762

Each stage is one command (printed before it runs), so any stage can be
rerun or forked by hand. Every stage skips or resumes work that is already
done, so rerunning after an interruption continues where it stopped.
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join("recipes", "KD-Noise")

# corpus -> the stages' commands (argv lists, run from the repository root)
CORPORA = {
    "speechocean762": [
        ("teacher", [os.path.join(RECIPE, "train.py"), "hparams/teacher.yaml"]),
    ],
}


def run_stage(name, argv, extra):
    cmd = [sys.executable] + argv + extra
    print(f"\n=== stage {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"=== stage {name} done in {time.time() - t0:.0f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="speechocean762", choices=sorted(CORPORA))
    parser.add_argument("--stages", nargs="*", help="run only these stages (default: all)")
    args, extra = parser.parse_known_args()  # extra --key=value go to every stage
    t0 = time.time()
    for name, argv in CORPORA[args.corpus]:
        if not args.stages or name in args.stages:
            run_stage(name, argv, extra)
    print(f"\nAll stages done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
