#!/usr/bin/env python3
"""Dev WER against training wall time for trained models, as one PNG and a table.

    python recipes/KD-Noise/curves.py exp/synthetic/teacher exp/synthetic_subword/teacher --out curves.png
    python recipes/KD-Noise/curves.py chars=exp/a/teacher subwords=exp/b/teacher --out curves.png

Each argument is a model folder (its ``curve.csv``), optionally ``label=folder``.
Prints, per model, the epochs, the wall time and the best dev WER with its epoch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.results.report import curve_chart, read_curve  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model folders, or label=folder")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--x", default="elapsed_s", choices=["elapsed_s", "epoch"])
    args = p.parse_args(argv)
    curves = {}
    for spec in args.models:
        label, folder = spec.split("=", 1) if "=" in spec else (spec.rstrip("/"), spec)
        curves[label] = read_curve(folder)
    print("| model | epochs | wall time (min) | best dev WER (epoch) | last dev WER |")
    print("|---|---|---|---|---|")
    for label, rows in curves.items():
        best = min(rows, key=lambda r: r["dev_wer"])
        print(f"| {label} | {len(rows)} | {rows[-1]['elapsed_s'] / 60:.1f} | {best['dev_wer']:.2f} ({int(best['epoch'])}) "
              f"| {rows[-1]['dev_wer']:.2f} |")
    curve_chart(curves, args.out, x=args.x)
    print(f"curves: {args.out}")


if __name__ == "__main__":
    main()
