#!/usr/bin/env python3
"""recipes/KD-Noise/run.py with another folder as its real bed, for bench/gpu_check.sh.

    python3 bench/gpu_run.py --shared gpu_pack/data -- --corpus speechocean762 --exp exp/gpu_check ...

run.py takes the real bed from ../shared/data beside the repository and refuses
``--corpus speechocean762`` without it; the GPU machine has no ../shared, only the
pack's copy. This runs run.py's own ``main`` with that copy as its bed folder; the
stages still read the paths their configs name, so the caller also passes the
pack's ``--corpus_dir``, ``--noise_csv`` and ``--rir_csv`` (as gpu_check.sh does).
"""

import argparse
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", required=True, help="the bed folder (shared/data layout)")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then run.py's arguments")
    args = parser.parse_args()
    if not os.path.isdir(args.shared):
        sys.exit(f"gpu_run: --shared {args.shared}: not a folder")
    rest = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    path = os.path.join(REPO, "recipes", "KD-Noise", "run.py")
    spec = importlib.util.spec_from_file_location("kd_noise_run", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    run.SHARED = os.path.abspath(args.shared)
    sys.argv = [path] + rest
    run.main()


if __name__ == "__main__":
    main()
