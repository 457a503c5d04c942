#!/usr/bin/env python3
"""Dev grid of the LM decoder's lm_weight and word_score for a trained model.

    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_blank_penalty=5 3.0,0 4.0,0 5.0,0
    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_units=word --lm_blank_penalty=0 2.0,1.0

``--key=value`` changes one of the model's other decoding keys (lm_units,
lm_order, lm_blank_penalty, lm_beam_size, lm_token_beam) for the whole grid.

Runs the model's best checkpoint once over the dev manifest of its data
folder (log-probs cached in ``<model>/dev_logprobs.pt``), then decodes dev with
the model's own LM search at each ``lm_weight,word_score`` and prints the dev
WER. In the default teacher config that search is the sub-word 6-gram without a
lexicon (``lm_units: piece``), where word_score is unused; ``--lm_units=word``
tunes the word n-gram with its lexicon. Dev only, by design: tuning on a test
condition is not offered.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from speechbrain.utils.metric_stats import ErrorRateStats  # noqa: E402

from kd_brain.data.dataio import make_dataset  # noqa: E402
from kd_brain.pipeline.modeldir import lm_decoder, lm_settings, load_label_source  # noqa: E402


def dev_log_probs(model_dir, source):
    """{utt: (log-probs [T, V], transcript)} of dev, computed once per model folder.

    ``source`` is the folder's ``load_label_source`` (model, origin config, best checkpoint, tokenizer).
    """
    cache = os.path.join(model_dir, "dev_logprobs.pt")
    if os.path.isfile(cache):
        return torch.load(cache, weights_only=True)
    cfg, origin, best, tokenizer = source
    cfg["checkpointer"].load_checkpoint(best)
    model, norm, feats = cfg["model"].eval(), cfg["normalize"].eval(), cfg["compute_features"]
    out = {}
    with torch.no_grad():
        for item in make_dataset(os.path.join(origin["data_folder"], "dev.csv"), tokenizer):
            f = norm(feats(item["sig"][None]), torch.ones(1))
            out[item["id"]] = (model(f, torch.ones(1))[0], item["wrd"])
    torch.save(out, cache)
    return out


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
    dev = dev_log_probs(model_dir, source)
    results = {}
    for lm_weight, word_score in grid:
        # the model's own decoder (LM and lexicon built once, skipped after) with two settings changed
        decoder = lm_decoder({**lm, "lm_weight": lm_weight, "word_score": word_score}, origin["data_folder"],
                             tokenizer)
        wer = ErrorRateStats()
        for utt, (lp, wrd) in dev.items():
            wer.append([utt], [decoder(lp[None], torch.ones(1))[0]], [wrd.split()])
        results[(lm_weight, word_score)] = wer.summarize("error_rate")
        print(f"{' '.join(f'--{k}={v}' for k, v in overrides.items())} "
              f"lm_weight={lm_weight} word_score={word_score}: dev WER {results[(lm_weight, word_score)]:.2f}",
              flush=True)
    return results


if __name__ == "__main__":
    main()
