#!/usr/bin/env python3
"""Writes the teacher's top-k soft labels for labelled + unlabelled audio.

    python recipes/KD-Noise/extract.py hparams/extract.yaml [--key=value ...]
    torchrun --nproc_per_node=2 recipes/KD-Noise/extract.py hparams/extract.yaml [--num_workers=2] [--precision=bf16]

Resumable: utterances already stored are skipped; a complete store is left alone.
Under torchrun (gloo without CUDA) each rank labels its batches of one fixed
batch plan and writes its own shards; the main process merges the index, so
the store holds the records a 1-process run writes. ``num_workers`` are each
rank's audio-reading dataloader workers. ``--precision=bf16|fp16`` (or
``--eval_precision``) runs the teacher under autocast; its output layer and
softmax stay float32 (``kd_brain.brains.ddp.float32_outputs``).
With ``sampled_k > 0`` the same teacher pass also writes the sampled store
(``sampled_folder``; the student's ``target: sampled``).
"""

import contextlib
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_brain.data.dataio import make_dataset
from kd_brain.brains.ddp import default_backend, with_options
from kd_brain.brains.extract import ExtractBrain, NBestSearcher, extract, store_meta
from kd_brain.pipeline.lock import releases_locks, take_lock
from kd_brain.pipeline.modeldir import load_label_source
from kd_brain.store import SoftLabelWriter, merge_index


@releases_locks
def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = default_backend(run_opts)
    if "precision" in run_opts.overridden_args and "eval_precision" not in run_opts.overridden_args:
        # extraction only evaluates: --precision names its precision, as for the training stages
        run_opts = with_options(run_opts, eval_precision=run_opts.precision)
    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, overrides)
    take_lock(hp["exp_folder"])  # one run per folder (passes under run.py; rank 0 only under torchrun)
    sb.utils.distributed.ddp_init_group(run_opts)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    thp, origin, best, tokenizer = load_label_source(hp["teacher_dir"])
    manifests = [os.path.join(origin["data_folder"], f"{s}.csv") for s in hp["splits"]]
    meta = store_meta(thp["model"], tokenizer, best.paramfiles["model"], manifests)
    meta.update(teacher_dir=hp["teacher_dir"], teacher_checkpoint=os.path.relpath(best.path, hp["teacher_dir"]),
                teacher_dev_wer=best.meta.get("WER"))

    searcher = NBestSearcher(tokenizer, hp["nbest"], hp["beam_size"]) if hp["nbest"] > 0 else None
    brain = ExtractBrain(modules=thp["modules"], hparams=thp, run_opts=run_opts, checkpointer=thp["checkpointer"],
                         nbest_searcher=searcher)
    brain.checkpoint = best  # the lowest-dev-WER checkpoint, the one the metadata names
    vocab_size = thp["model"].vocab_size
    k = min(hp["k"], vocab_size)  # k beyond V (k=40 of 30 characters) is the full distribution
    if k < hp["k"]:
        print(f"extract: k={hp['k']} > the teacher's {vocab_size} units: the store keeps all {vocab_size}")
    temps = hp.get("side_temperatures") or []
    common = dict(vocab_size=vocab_size, meta=meta, rank=rank, quant_step=hp["quant_step"], level=hp["zstd_level"])
    writer = SoftLabelWriter(hp["output_folder"], k=k, side_temperatures=temps, **common)
    sampled_k, folders = hp.get("sampled_k", 0), [hp["output_folder"]]
    sampled = None
    if sampled_k > 0:
        if not temps:
            raise ValueError("sampled_k > 0 needs side_temperatures: the sampled target at temperature T weighs "
                             "its draws with log Z_T (set e.g. side_temperatures=[1.0,2.0,4.0])")
        sampled = SoftLabelWriter(hp["sampled_folder"], k=sampled_k, target="sampled", side_temperatures=temps,
                                  sample_seed=hp["sample_seed"], **common)
        folders.append(hp["sampled_folder"])
    with writer, sampled or contextlib.nullcontext():
        for manifest in manifests:
            n = extract(brain, make_dataset(manifest), writer, hp["batch_size"], rank, world, sampled,
                        num_workers=hp["num_workers"])
            print(f"rank {rank}: {manifest}: {n} utterances extracted")
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        for folder in folders:
            print(f"{folder}: {merge_index(folder)} utterances in the store")


if __name__ == "__main__":
    main(sys.argv[1:])
