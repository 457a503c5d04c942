#!/usr/bin/env python3
"""Paired-bootstrap comparison of two trained models of one experiment, per condition.

    python recipes/KD-Noise/compare.py exp/synthetic teacher teacher_seq [--conditions dev clean] [--decoder lm]

Reads ``<exp>/scores.json`` (per-utterance errors of every decoder) and prints
the relative WER change of the second model against the first with its 95%
interval, P(improvement) and verdict; utterance and speaker-block bootstrap.
Select and tune on ``dev`` only: test conditions are for reporting.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.bootstrap import compare, verdict  # noqa: E402
from kd_brain.evaluate import headline  # noqa: E402
from kd_brain.report import interval_cell  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp")
    p.add_argument("reference")
    p.add_argument("model")
    p.add_argument("--conditions", nargs="*", help="default: every condition both models have")
    p.add_argument("--decoder", help="lm, beam or greedy (default: the headline decoder)")
    args = p.parse_args(argv)
    with open(os.path.join(args.exp, "scores.json")) as f:
        scores = json.load(f)
    for name in (args.reference, args.model):
        if name not in scores:
            sys.exit(f"{args.exp}/scores.json has no model {name!r}; it has {sorted(scores)}")
    ref, mod = scores[args.reference], scores[args.model]
    rows = []
    for cond in args.conditions or [c for c in ref if c in mod]:
        dec = args.decoder or headline(ref[cond])
        if "utt_errors" not in ref[cond] or dec not in ref[cond]["utt_errors"]:
            sys.exit(f"{args.reference}/{cond}: no per-utterance errors for decoder {dec} (scored before they were kept)")
        c = compare(ref[cond]["utt_errors"][dec], mod[cond]["utt_errors"][dec], ref[cond].get("speakers"))
        rows.append(f"| {cond} | {dec} | {ref[cond][dec]:.2f} | {mod[cond][dec]:.2f} | {interval_cell(c)} | "
                    f"{interval_cell(c['block'])} | {verdict(c)} |")
    print(f"| condition | decoder | {args.reference} | {args.model} | change (utterances) | change (speakers) | verdict |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return rows


if __name__ == "__main__":
    main()
