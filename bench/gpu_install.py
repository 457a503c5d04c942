#!/usr/bin/env python3
"""Installs the pack's wheels that this Python lacks into one folder, with no package index (bench/gpu_check.sh).

    env -u PYTHONPATH python3 bench/gpu_install.py gpu_pack/wheels gpu_pack/site-py3.12   # then PYTHONPATH=<site>

A wheel whose distribution this interpreter already has is left out, so the folder
never shadows the machine's own packages (its torch, numpy, packaging ...); run it
without PYTHONPATH so that "already has" means the machine's own. The rest go in with
``pip install --no-index --no-deps --target`` (which also leaves an externally
managed system Python alone), or, where pip is missing (or ``--no-pip``), by
unpacking them: a wheel is a zip of its installed tree, plus ``<name>.data/purelib``
and ``platlib`` folders that belong at the top. Skipped when the folder already
holds the same wheels (``<site>/.installed``).
"""

import argparse
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import zipfile


def missing(wheels):
    """(wheel files whose distribution this Python lacks, ["name version"] of those it has)."""
    need, have = [], []
    for f in sorted(f for f in os.listdir(wheels) if f.endswith(".whl")):
        name = f.split("-")[0]
        try:
            have.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            need.append(f)
    return need, have


def unpack(paths, site):
    for p in paths:
        with zipfile.ZipFile(p) as z:
            z.extractall(site)
    for d in [d for d in os.listdir(site) if d.endswith(".data")]:
        for kind in ("purelib", "platlib"):
            sub = os.path.join(site, d, kind)
            for entry in os.listdir(sub) if os.path.isdir(sub) else []:
                shutil.move(os.path.join(sub, entry), os.path.join(site, entry))
        shutil.rmtree(os.path.join(site, d))  # scripts and headers: nothing the check runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", help="the pack's wheels folder")
    parser.add_argument("site", help="the folder to install into (put it on PYTHONPATH)")
    parser.add_argument("--no-pip", action="store_true", help="unpack the wheels even where pip exists")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.wheels):
        sys.exit(f"gpu_install: {args.wheels} not found: build the pack with bench/gpu_pack.sh")
    need, have = missing(args.wheels)
    stamp = os.path.join(args.site, ".installed")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            done = f.read().split()
        if done == need:
            print(f"gpu_install: the {len(need)} wheels this Python lacks are already in {args.site}")
            return
    print(f"gpu_install: this Python has {', '.join(have) or 'none of the packed packages'}; "
          f"installing {len(need)} wheels into {args.site}")
    shutil.rmtree(args.site, ignore_errors=True)
    os.makedirs(args.site)
    paths = [os.path.join(args.wheels, f) for f in need]
    pip = not args.no_pip and subprocess.run([sys.executable, "-m", "pip", "--version"],
                                             capture_output=True).returncode == 0
    if pip and paths:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                        "--no-deps", "--no-compile", "--target", args.site] + paths, check=True)
    else:
        unpack(paths, args.site)
    with open(stamp, "w") as f:
        f.write("\n".join(need))


if __name__ == "__main__":
    main()
