#!/usr/bin/env python3
"""Trains a KD-Noise model and scores it on every test condition.

    python recipes/KD-Noise/train.py hparams/teacher.yaml [--key=value ...]

Thin glue: preparation (skipped when done), tokenizer (labelled transcripts
only), datasets, ``fit``, then ``EvalBrain`` on the conditions. The Brain
classes, data handling and metrics live in ``kd_brain``.
"""

import logging
import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.decoders.ctc import CTCPrefixBeamSearcher
from speechbrain.utils.distributed import run_on_main

from kd_brain.brain import TeacherBrain
from kd_brain.data import prepare_corpus
from kd_brain.dataio import make_dataset
from kd_brain.evaluate import EvalBrain, evaluate_conditions, update_results
from kd_brain.tokenizer import Tokenizer, tokenizer_dir, train_tokenizer

logger = logging.getLogger(__name__)


def prepare(hp):
    """Manifests and tokenizer; each step is skipped when already done."""
    run_on_main(prepare_corpus, kwargs=dict(
        corpus_dir=hp["corpus_dir"], out_dir=hp["data_folder"], train_subdir=hp["train_subdir"],
        test_subdir=hp["test_subdir"], labelled_fraction=hp["labelled_fraction"],
        n_dev_speakers=hp["n_dev_speakers"], seed=hp["seed"], on_bad=hp["on_bad"], num_workers=hp["prep_workers"],
        convert_audio=hp["convert_audio"]))
    tok_dir = tokenizer_dir(hp)
    run_on_main(train_tokenizer, args=[os.path.join(hp["data_folder"], "labelled.csv"), tok_dir,
                                       hp["vocab_size"], hp["token_type"]])
    tokenizer = Tokenizer(os.path.join(tok_dir, "tokenizer.model"))
    if tokenizer.vocab_size != hp["vocab_size"]:
        raise ValueError(f"vocab_size={hp['vocab_size']} but the tokenizer has {tokenizer.vocab_size} units")
    return tokenizer


def condition_sets(hp, tokenizer, extra=()):
    """Named test sets: ``dev`` and ``clean`` now; noisy ones join through the same path."""
    paths = {"dev": os.path.join(hp["data_folder"], "dev.csv"),
             "clean": os.path.join(hp["data_folder"], "test_clean.csv")}
    paths.update(dict(extra))
    return {name: make_dataset(p, tokenizer, sort_key="duration") for name, p in paths.items()}


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(hp["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides)

    tokenizer = prepare(hp)
    hp["tokenizer"] = tokenizer
    train_set = make_dataset(os.path.join(hp["data_folder"], "labelled.csv"), tokenizer)
    valid_set = make_dataset(os.path.join(hp["data_folder"], "dev.csv"), tokenizer, sort_key="duration")
    sampler = DynamicBatchSampler(train_set, max_batch_length=hp["batch_seconds"], num_buckets=hp["num_buckets"],
                                  length_func=lambda x: x["duration"], shuffle=True, seed=hp["seed"])

    brain = TeacherBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                         run_opts=run_opts, checkpointer=hp["checkpointer"])
    brain.train_sampler = sampler  # so fit() calls set_epoch: a new batch order every epoch
    brain.fit(hp["epoch_counter"], train_set, valid_set,
              train_loader_kwargs={"batch_sampler": sampler, "num_workers": hp["num_workers"]},
              valid_loader_kwargs={"batch_size": hp["test_batch_size"]})

    hp["beam_searcher"] = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(),
                                                beam_size=hp["beam_size"])
    evaluator = EvalBrain(modules=hp["modules"], hparams=hp, run_opts=run_opts, checkpointer=hp["checkpointer"])
    scores = evaluate_conditions(evaluator, condition_sets(hp, tokenizer),
                                 loader_kwargs={"batch_size": hp["test_batch_size"]})
    if sb.utils.distributed.if_main_process():
        md = update_results(hp["exp_folder"], hp["model_name"], scores)
        print(f"\nWER (%) in {hp['exp_folder']}/results.md:\n{md}")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
