#!/usr/bin/env python3
"""Transcribes audio files or manifests with a trained model folder.

    python recipes/KD-Noise/transcribe.py exp/synthetic/student my.wav other.flac
    python recipes/KD-Noise/transcribe.py exp/synthetic/teacher_seq <manifest.csv> --decoder beam --out hyps.tsv

MODEL_DIR is any folder that train.py wrote (teacher, teacher_seq, student,
student_seq, the baselines): its best checkpoint, units and the LM decoder
of its teacher config; or a ``model.onnx`` (``model.int8.onnx``) written by
``export.py --format onnx``, run by onnxruntime (its tokenizer.model beside it;
``--decoder lm`` needs the original model folder on this machine). INPUT is audio files (any rate and channel count soundfile
reads; downmixed and resampled to 16 kHz, said in a log line) or CSV
manifests (``ID, wav[, wrd]``; a relative ``wav`` is read from the working
directory where it exists there, as training reads it, else beside the
manifest). Prints ``ID<TAB>text`` in input order (or writes it to
``--out``); when the inputs have transcripts (``wrd``) it also prints their
WER. ``--decoder``: greedy, beam (CTC prefix search) or lm (the default:
the model's headline decoder, the LM search its teacher config sets with
``lm_units``, ``lm_order``, ``lm_weight`` ...; by default a 6-gram over the
model's sub-word units, searched without a lexicon).
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.data.splits import CorpusError  # noqa: E402
from kd_brain.decode.transcribe import DECODERS, read_inputs, recogniser  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files and/or CSV manifests")
    p.add_argument("--decoder", default="lm", choices=DECODERS,
                   help="greedy (CTC best path), beam (CTC prefix search) or lm (default: the headline decoder, "
                        "the LM search of the model's teacher config, as evaluation scores it)")
    p.add_argument("--beam_size", type=int, default=10, help="width of the beam decoder")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", help="write ID<TAB>text here instead of printing it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--noprogressbar", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        items = read_inputs(args.inputs)
        rec = recogniser(args.model_dir, args.decoder, args.beam_size, args.device)
        results = list(rec.transcribe(items, args.batch_size, progress=not args.noprogressbar))
    except (CorpusError, FileNotFoundError, ValueError) as e:
        sys.exit(f"transcribe: {e}")
    lines = "".join(f"{utt}\t{hyp}\n" for utt, hyp, _ in results)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(lines)
    else:
        sys.stdout.write(lines)
    scored = [(utt, hyp, ref) for utt, hyp, ref in results if ref is not None]
    if scored:
        from speechbrain.utils.metric_stats import ErrorRateStats

        stats = ErrorRateStats()
        stats.append([u for u, _, _ in scored], [h.split() for _, h, _ in scored], [r.split() for _, _, r in scored])
        summary = stats.summarize()
        print(f"WER {summary['WER']:.2f}% on {len(scored)} utterances with transcripts "
              f"({summary['num_edits']} errors / {summary['num_scored_tokens']} words; decoder {args.decoder})",
              file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
