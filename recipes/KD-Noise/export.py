#!/usr/bin/env python3
"""Exports a trained model folder to one TorchScript file (waveforms -> CTC log-probs).

    python recipes/KD-Noise/export.py exp/synthetic/student student.pt

The file holds the traced network (fbank, normaliser, CTC model) and, as
extra files, its units, sentencepiece model, training config and checkpoint
metadata (``kd_brain.decode.export``). The export is loaded back and checked against
the PyTorch model (max |log-prob difference| <= 1e-4) before it is kept.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.decode.export import export_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("out", help="the TorchScript file to write (e.g. student.pt)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        info = export_model(args.model_dir, args.out)
    except (FileNotFoundError, RuntimeError, OSError) as e:
        sys.exit(f"export: {e}")
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
