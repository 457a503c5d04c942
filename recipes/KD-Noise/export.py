#!/usr/bin/env python3
"""Exports a trained model folder: one TorchScript file, a SpeechBrain inference folder, or ONNX.

    python recipes/KD-Noise/export.py exp/synthetic/student student.pt
    python recipes/KD-Noise/export.py exp/synthetic/student student_sb --format speechbrain
    python recipes/KD-Noise/export.py exp/synthetic/student student_onnx --format onnx

``--format torchscript`` (the default) writes one file: the traced network
(fbank, normaliser, CTC model, waveforms -> CTC log-probs) and, as extra
files, its units, sentencepiece model, training config and checkpoint
metadata (``kd_brain.decode.export``). ``--format speechbrain`` writes a
folder that ``speechbrain.inference.ASR.EncoderASR.from_hparams(source=OUT,
savedir=...)`` loads: ``hyperparams.yaml`` (CTC greedy decoding),
``hyperparams_beam.yaml`` (prefix beam search of ``--beam_size``, by default
the model config's), the weights, the sentencepiece model and a model card,
README.md, with the model's WERs and training command
(``kd_brain.decode.speechbrain_folder``). ``--format onnx`` writes a folder in
icefall's CTC convention (``kd_brain.decode.onnx_export``): ``model.onnx``
(fbank features and their lengths ``x, x_lens`` -> ``log_probs,
log_probs_len``, the normaliser inside, metadata), ``model.int8.onnx``
(dynamic int8 quantisation), ``tokens.txt`` and the sentencepiece model.
Every export is loaded back and checked against the PyTorch model before it is kept.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.decode.export import export_model  # noqa: E402
from kd_brain.decode.onnx_export import export_onnx  # noqa: E402
from kd_brain.decode.speechbrain_folder import export_folder  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("out", help="the TorchScript file (e.g. student.pt), or the SpeechBrain or ONNX folder to write")
    p.add_argument("--format", default="torchscript", choices=("torchscript", "speechbrain", "onnx"))
    p.add_argument("--beam_size", type=int, help="speechbrain: the beam of hyperparams_beam.yaml "
                                                 "(default: the model config's beam_size, as its evaluation)")
    args = p.parse_args(argv)
    if args.beam_size is not None and args.format != "speechbrain":
        p.error("--beam_size applies to --format speechbrain only")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.format == "speechbrain":
            info = export_folder(args.model_dir, args.out, beam_size=args.beam_size)
        elif args.format == "onnx":
            info = export_onnx(args.model_dir, args.out)
        else:
            info = export_model(args.model_dir, args.out)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, RuntimeError, OSError) as e:
        sys.exit(f"export: {e}")
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
