#!/usr/bin/env python3
"""WER per SNR bucket, number of noises, noise kind, room and RT60.

    python recipes/KD-Noise/breakdown.py --exp exp/synthetic
    python recipes/KD-Noise/breakdown.py --exp exp/synthetic --models teacher student --reference teacher_seq

Reads ``<exp>/scores.json`` (per-utterance errors, headline decoder) and the noisy test
manifests ``<exp>/conditions/<condition>.csv``; writes ``<exp>/breakdown.md`` (a table per
condition and breakdown: "WER [95% interval] (utterances)" and the relative change against
``--reference`` with its paired interval), ``<exp>/breakdown_snr.png`` and
``<exp>/breakdown_bars_<condition>.png``, and prints the markdown. Models missing from
scores.json are skipped with a note. Run from the folder holding ``exp/``; bucket
definitions: ``kd_brain/results/breakdown.py``. ``write_breakdown`` is importable from here too.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.results.breakdown import write_breakdown  # noqa: E402
from kd_brain.results.report import MODELS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment folder, e.g. exp/synthetic")
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--reference", default="teacher_seq", help="model the relative changes are against")
    p.add_argument("--conditions", nargs="*", help="default: every scored condition with noise in its manifest")
    args = p.parse_args(argv)
    markdown, pngs = write_breakdown(args.exp, args.models, args.reference, args.conditions)
    print(markdown)
    print("Wrote " + ", ".join([os.path.join(args.exp, "breakdown.md")] + pngs))
    return markdown, pngs


if __name__ == "__main__":
    main()
