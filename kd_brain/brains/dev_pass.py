"""A trained model's outputs on the dev conditions, computed as evaluation computes them, cached by checkpoint.

Decoder grids (``recipes/KD-Noise/tune_lm.py``) and posterior statistics
(``recipes/KD-Noise/peakiness.py``) read the same log-probs many times; the
forward pass runs once. The cache ``<model>/dev_logprobs.<hash>.pt`` is named
after the checkpoint's model file (:func:`kd_brain.brains.extract.file_hash`),
so a retrained model is never read through an earlier checkpoint's outputs;
caches of other checkpoints are deleted when a new one is written.
"""

import glob
import os

import torch

from kd_brain.brains.evaluate import LogProbsBrain, evaluate_conditions
from kd_brain.brains.extract import file_hash
from kd_brain.pipeline.atomic import atomic_path, is_temporary
from kd_brain.pipeline.experiment import condition_sets
from kd_brain.results.selection import DEV_CONDITIONS


def cache_path(model_dir, checkpoint):
    """``<model>/dev_logprobs.<hash>.pt``: named by the checkpoint's model file, so no other checkpoint reads it."""
    return os.path.join(model_dir, f"dev_logprobs.{file_hash(checkpoint.paramfiles['model'])}.pt")


def dev_batches(model_dir, source):
    """Evaluation's batches ``{dev condition: [(ids, transcripts, log-probs, lengths)]}`` of the best
    checkpoint, cached.

    ``source`` is the folder's ``kd_brain.pipeline.modeldir.load_label_source`` (model config, origin
    config, best checkpoint, tokenizer). The pass is ``train.py``'s evaluation with the decoders left out
    (``LogProbsBrain`` through ``evaluate_conditions``): the table's dev sets, batches of
    ``test_batch_size`` sorted by duration, padding and ``compute_forward``, on the CPU.
    """
    cfg, origin, best, tokenizer = source
    cache = cache_path(model_dir, best)
    if os.path.isfile(cache):
        return torch.load(cache, weights_only=True)
    brain = LogProbsBrain(modules=cfg["modules"], hparams=cfg, run_opts={"noprogressbar": True},
                          checkpointer=cfg["checkpointer"], tokenizer=tokenizer)
    brain.checkpoint = best  # the one the cache is named after (evaluation's min_key="WER" picks it too)
    sets = condition_sets(cfg, tokenizer, origin["data_folder"])
    dev = {name: sets[name] for name in DEV_CONDITIONS if name in sets}
    scores = evaluate_conditions(brain, dev, loader_kwargs={"batch_size": cfg["test_batch_size"]})
    batches = {name: scores[name]["batches"] for name in dev}
    with atomic_path(cache) as tmp:
        torch.save(batches, tmp)
    for old in glob.glob(os.path.join(model_dir, "dev_logprobs*.pt")):  # other checkpoints' (and unkeyed) caches
        if old != cache and not is_temporary(os.path.basename(old)):
            os.remove(old)
    return batches
