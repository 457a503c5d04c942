#!/usr/bin/env python3
"""How peaky trained models' frame posteriors are, on a dev condition.

    python recipes/KD-Noise/peakiness.py exp/synthetic/teacher exp/synthetic/teacher_smooth [--condition dev]

For each model folder: the best unit's mean probability at T = 1, 2 and 4, the
mass of the top 1 / 5 / 20 / 40 units at T = 2, the share of frames with blank
probability >= 0.9 and the mean frame entropy (``kd_brain.kd.peakiness``), over
the valid frames of its best checkpoint's outputs on the dev condition (``dev``:
clean, the teacher's own domain; or ``dev_noisy``), computed as evaluation
computes them and cached with the decoder grid's (``kd_brain.brains.dev_pass``).
Prints a markdown table, then one JSON line.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.brains.dev_pass import dev_batches  # noqa: E402
from kd_brain.kd.peakiness import peakiness  # noqa: E402
from kd_brain.pipeline.modeldir import load_label_source  # noqa: E402
from kd_brain.results.selection import DEV_CONDITIONS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("model_dir", nargs="+")
    parser.add_argument("--condition", default="dev", choices=DEV_CONDITIONS)
    args = parser.parse_args(argv)
    out = {}
    for model_dir in args.model_dir:
        batches = dev_batches(model_dir, load_label_source(model_dir, what=f"model folder {model_dir}"))
        if args.condition not in batches:
            sys.exit(f"{model_dir}: no {args.condition} outputs (the prepare stage writes dev_noisy)")
        out[model_dir] = peakiness([(lp, lens) for _, _, lp, lens in batches[args.condition]])
    keys = [k for k in next(iter(out.values())) if k != "frames"]
    print(f"| model ({args.condition}, frames) | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for model_dir, stats in out.items():
        print(f"| {model_dir} ({stats['frames']}) | " + " | ".join(
            f"{stats[k]:.3f}" if k == "entropy" else f"{100 * stats[k]:.1f}%" for k in keys) + " |")
    print(json.dumps({"condition": args.condition, "peakiness": out}))
    return out


if __name__ == "__main__":
    main()
