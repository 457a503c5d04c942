#!/usr/bin/env python3
"""Dev grid of the LM decoder's lm_weight and word_score for a trained model.

    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_blank_penalty=5 3.0,0 4.0,0 5.0,0
    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_units=word --lm_blank_penalty=0 2.0,1.0

``--key=value`` changes one of the model's other decoding keys (lm_units,
lm_order, lm_blank_penalty, lm_beam_size, lm_token_beam) for the whole grid.

Runs the model's best checkpoint once over the dev conditions (clean ``dev``
and ``dev_noisy``), exactly as evaluation does (``EvalBrain`` through
``evaluate_conditions``: the same sets, batches of ``test_batch_size`` sorted
by duration, padding and ``compute_forward``), then decodes those batches with
the model's own LM search at each ``lm_weight,word_score`` and prints the
selection WER (the mean over the dev conditions, :mod:`kd_brain.results.selection`)
and each condition's: at the model's own setting they are the results table's
dev ``lm`` WERs. The log-probs are cached by checkpoint
(``kd_brain.brains.dev_pass``), so a retrained model is never tuned on an
earlier checkpoint's outputs. The pass runs on the CPU, like ``train.py``
without ``--device`` (a table made on a GPU may differ in the last digits).

In the default teacher config the search is the sub-word 6-gram without a
lexicon (``lm_units: piece``), where word_score is unused; ``--lm_units=word``
tunes the word n-gram with its lexicon. Dev only, by design: tuning on a test
condition is not offered.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.brains.dev_pass import dev_batches  # noqa: E402
from kd_brain.brains.evaluate import decoder_stats  # noqa: E402
from kd_brain.pipeline.modeldir import lm_decoder, lm_settings, load_label_source  # noqa: E402
from kd_brain.results.selection import dev_score  # noqa: E402


def selection_wer(decoder, batches):
    """``(the selection WER, {dev condition: WER})`` of ``decoder`` over :func:`dev_batches`."""
    wers = {name: decoder_stats(decoder, b).summarize("error_rate") for name, b in batches.items()}
    return dev_score(wers), wers


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.exit(__doc__)
    model_dir = argv[0]
    overrides = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--"))
    grid = [tuple(float(x) for x in a.split(",")) for a in argv[1:] if not a.startswith("--")]
    source = load_label_source(model_dir)
    _, origin, _, tokenizer = source
    lm = lm_settings(origin)
    for key, value in overrides.items():
        if key not in lm:
            sys.exit(f"--{key}: not a decoding key (choose from {', '.join(sorted(lm))})")
        lm[key] = value if key == "lm_units" else float(value) if key == "lm_blank_penalty" else int(value)
    dev = dev_batches(model_dir, source)
    results = {}
    for lm_weight, word_score in grid:
        # the model's own decoder (LM and lexicon built once, skipped after) with two settings changed
        decoder = lm_decoder({**lm, "lm_weight": lm_weight, "word_score": word_score}, origin["data_folder"],
                             tokenizer)
        results[(lm_weight, word_score)], wers = selection_wer(decoder, dev)
        print(f"{' '.join(f'--{k}={v}' for k, v in overrides.items())} "
              f"lm_weight={lm_weight} word_score={word_score}: mean dev WER {results[(lm_weight, word_score)]:.2f} "
              f"({', '.join(f'{n} {w:.2f}' for n, w in wers.items())})", flush=True)
    return results


if __name__ == "__main__":
    main()
