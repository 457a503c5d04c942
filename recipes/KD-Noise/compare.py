#!/usr/bin/env python3
"""Paired-bootstrap comparison of two trained models (of one experiment or two), per condition.

    python recipes/KD-Noise/compare.py exp/synthetic teacher teacher_seq [--conditions dev clean] [--decoder lm]
    python recipes/KD-Noise/compare.py exp/subword teacher teacher --reference_exp exp/char
    python recipes/KD-Noise/compare.py --transcripts test.csv fp32.tsv int8.tsv   # two transcribe.py outputs

Reads ``<exp>/scores.json`` (per-utterance errors of every decoder) and prints
the relative WER change of the second model against the first with its 95%
interval, P(improvement) and verdict; utterance and speaker-block bootstrap.
With ``--reference_exp`` the reference model comes from another experiment
(e.g. characters against sub-words on the same corpus): both must have scored
the same utterances against the same transcripts. With ``--transcripts`` it
compares two ``transcribe.py --out`` files (``ID<TAB>text``) on a manifest's
``wrd`` column (speakers from its ``spk_id`` column, where present).
Select and tune on ``dev`` only: test conditions are for reporting.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.data.splits import CorpusError  # noqa: E402
from kd_brain.data.validate import read_manifest  # noqa: E402
from kd_brain.results.bootstrap import compare, transcript_counts, verdict  # noqa: E402
from kd_brain.brains.evaluate import headline  # noqa: E402
from kd_brain.results.report import interval_cell  # noqa: E402


def read_model(exp, name):
    """One model's scores from ``<exp>/scores.json``, or an exit naming what is there."""
    with open(os.path.join(exp, "scores.json")) as f:
        scores = json.load(f)
    if name not in scores:
        sys.exit(f"{exp}/scores.json has no model {name!r}; it has {sorted(scores)}")
    return scores[name]


def read_transcripts(path):
    """``{utt: text}`` of a ``transcribe.py --out`` file (``ID<TAB>text`` lines)."""
    with open(path, encoding="utf-8") as f:
        return dict((line.rstrip("\n").split("\t", 1) + [""])[:2] for line in f if line.strip())


def compare_transcripts(manifest, reference, model):
    """The markdown row of two transcript files scored on ``manifest``'s ``wrd``."""
    try:
        rows = read_manifest(manifest, required=("ID", "wav", "wrd"))
        refs = {u: r["wrd"] for u, r in rows.items()}
        speakers = {u: r["spk_id"] for u, r in rows.items() if r.get("spk_id")}
        a, b = (transcript_counts(refs, read_transcripts(p)) for p in (reference, model))
    except (ValueError, CorpusError) as e:
        sys.exit(f"compare: {e}")
    c = compare(a, b, speakers)
    wer = [100.0 * sum(e for e, _ in x.values()) / sum(n for _, n in x.values()) for x in (a, b)]
    print(f"| manifest | {reference} | {model} | change (utterances) | change (speakers) | verdict |")
    print("|---|---|---|---|---|---|")
    row = f"| {manifest} | {wer[0]:.2f} | {wer[1]:.2f} | {interval_cell(c)} | " \
          f"{interval_cell(c['block']) if 'block' in c else ''} | {verdict(c)} |"
    print(row)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcripts", metavar="MANIFEST",
                   help="compare two transcribe.py outputs (positional: REFERENCE.tsv MODEL.tsv) on it")
    p.add_argument("exp", nargs="?")
    p.add_argument("reference")
    p.add_argument("model")
    p.add_argument("--conditions", nargs="*", help="default: every condition both models have")
    p.add_argument("--decoder", help="lm, beam or greedy (default: the headline decoder)")
    p.add_argument("--reference_exp", help="experiment of the reference model (default: exp)")
    args = p.parse_args(argv)
    if args.transcripts:
        if args.exp:
            p.error("--transcripts MANIFEST takes two transcript files")
        return compare_transcripts(args.transcripts, args.reference, args.model)
    if not args.exp:
        p.error("give EXP REFERENCE MODEL, or --transcripts MANIFEST REFERENCE MODEL")
    ref_exp = args.reference_exp or args.exp
    ref, mod = read_model(ref_exp, args.reference), read_model(args.exp, args.model)
    rows = []
    for cond in args.conditions or [c for c in ref if c in mod]:
        dec = args.decoder or headline(ref[cond])
        if "utt_errors" not in ref[cond] or dec not in ref[cond]["utt_errors"]:
            sys.exit(f"{args.reference}/{cond}: no per-utterance errors for decoder {dec} (evaluate it again to record them)")
        if set(ref[cond]["utt_errors"][dec]) != set(mod[cond]["utt_errors"][dec]):
            sys.exit(f"{cond}: {ref_exp}/{args.reference} and {args.exp}/{args.model} scored different utterances")
        c = compare(ref[cond]["utt_errors"][dec], mod[cond]["utt_errors"][dec], ref[cond].get("speakers"))
        rows.append(f"| {cond} | {dec} | {ref[cond][dec]:.2f} | {mod[cond][dec]:.2f} | {interval_cell(c)} | "
                    f"{interval_cell(c['block'])} | {verdict(c)} |")
    names = (args.reference, args.model) if not args.reference_exp else (
        f"{ref_exp}/{args.reference}", f"{args.exp}/{args.model}")  # two experiments: say which is which
    print(f"| condition | decoder | {names[0]} | {names[1]} | change (utterances) | change (speakers) | verdict |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return rows


if __name__ == "__main__":
    main()
