#!/usr/bin/env python3
"""Dev grid of the LM decoder's lm_weight and word_score for a trained model.

    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_blank_penalty=5 3.0,0 4.0,0 5.0,0
    python recipes/KD-Noise/tune_lm.py exp/synthetic/teacher --lm_units=word --lm_blank_penalty=0 2.0,1.0

``--key=value`` changes one of the model's other decoding keys (lm_units,
lm_order, lm_blank_penalty, lm_beam_size, lm_token_beam) for the whole grid.

Runs the model's best checkpoint once over the dev set of its data folder,
exactly as evaluation does (``EvalBrain`` through ``evaluate_conditions``:
the same dev set, batches of ``test_batch_size`` sorted by duration, padding
and ``compute_forward``), then decodes those batches with the model's own LM
search at each ``lm_weight,word_score`` and prints the dev WER: at the model's
own setting it is the results table's dev ``lm`` WER. The log-probs are cached
in ``<model>/dev_logprobs.<hash>.pt``, ``<hash>`` the checkpoint's model file
(``kd_brain.brains.extract.file_hash``), so a retrained model is never tuned on
an earlier checkpoint's outputs; caches of other checkpoints are deleted when a
new one is written. The pass runs on the CPU, like ``train.py`` without
``--device`` (a table made on a GPU may differ in the last digits).

In the default teacher config the search is the sub-word 6-gram without a
lexicon (``lm_units: piece``), where word_score is unused; ``--lm_units=word``
tunes the word n-gram with its lexicon. Dev only, by design: tuning on a test
condition is not offered.
"""

import glob
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.brains.evaluate import LogProbsBrain, decoder_stats, evaluate_conditions  # noqa: E402
from kd_brain.brains.extract import file_hash  # noqa: E402
from kd_brain.pipeline.atomic import atomic_path, is_temporary  # noqa: E402
from kd_brain.pipeline.experiment import condition_sets  # noqa: E402
from kd_brain.pipeline.modeldir import lm_decoder, lm_settings, load_label_source  # noqa: E402


def cache_path(model_dir, checkpoint):
    """``<model>/dev_logprobs.<hash>.pt``: named by the checkpoint's model file, so no other checkpoint reads it."""
    return os.path.join(model_dir, f"dev_logprobs.{file_hash(checkpoint.paramfiles['model'])}.pt")


def dev_batches(model_dir, source):
    """Evaluation's dev batches ``(ids, transcripts, log-probs, lengths)`` of the best checkpoint, cached.

    ``source`` is the folder's ``load_label_source`` (model config, origin config, best checkpoint, tokenizer).
    """
    cfg, origin, best, tokenizer = source
    cache = cache_path(model_dir, best)
    if os.path.isfile(cache):
        return torch.load(cache, weights_only=True)
    # train.py's evaluation, decoders left out: the table's dev set, loader, checkpoint and forward
    brain = LogProbsBrain(modules=cfg["modules"], hparams=cfg, run_opts={"noprogressbar": True},
                          checkpointer=cfg["checkpointer"], tokenizer=tokenizer)
    brain.checkpoint = best  # the one the cache is named after (evaluation's min_key="WER" picks it too)
    dev = condition_sets(cfg, tokenizer, origin["data_folder"])["dev"]
    batches = evaluate_conditions(brain, {"dev": dev}, loader_kwargs={"batch_size": cfg["test_batch_size"]})
    batches = batches["dev"]["batches"]
    with atomic_path(cache) as tmp:
        torch.save(batches, tmp)
    for old in glob.glob(os.path.join(model_dir, "dev_logprobs*.pt")):  # other checkpoints' (and unkeyed) caches
        if old != cache and not is_temporary(os.path.basename(old)):
            os.remove(old)
    return batches


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
        results[(lm_weight, word_score)] = decoder_stats(decoder, dev).summarize("error_rate")
        print(f"{' '.join(f'--{k}={v}' for k, v in overrides.items())} "
              f"lm_weight={lm_weight} word_score={word_score}: dev WER {results[(lm_weight, word_score)]:.2f}",
              flush=True)
    return results


if __name__ == "__main__":
    main()
