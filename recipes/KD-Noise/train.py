#!/usr/bin/env python3
"""Trains a KD-Noise model and scores it on every test condition.

    python recipes/KD-Noise/train.py hparams/teacher.yaml [--key=value ...]
    python recipes/KD-Noise/train.py hparams/student.yaml [--criterion=frame|sequence|mwer|ctc ...]
    torchrun --nproc_per_node=N recipes/KD-Noise/train.py <yaml> [--num_threads=1] [--precision=bf16] ...

Every stage (teacher, student, sequence training) runs under torchrun
(SpeechBrain DDP; gloo without CUDA). ``batch_seconds`` is the *global*
batch: each of the N ranks trains on its 1/N share of every batch of the
1-process sampler (``kd_brain.brains.ddp.RankBatchSplitter``), so N ranks take the
1-process run's steps on the same batches; to keep each rank's share at the
1-process size instead, it is one override, ``--batch_seconds=<N x value>``.
Only the main process prepares data, writes the curve, validates, evaluates
and writes results; noise depends on (seed, epoch, utterance) only.

Thin glue. A teacher config prepares its data (skipped when done) and trains
the tokenizer on labelled transcripts; a student config (it has
``teacher_dir``: any trained model folder) reuses the data and tokenizer of
the teacher config at the end of that chain, reads soft labels by utterance
ID and hears contaminated audio; CTC and MWER train on transcribed rows only
(``train_splits`` entries are split names or CSV paths, e.g. pseudo-labels). Both then run ``EvalBrain`` on
dev, clean, the noisy conditions written by the prepare stage, and any
``--extra_test="{name: manifest.csv}"``, with the teacher config's decoders
(greedy, beam, and the n-gram LM decoder built from the labelled transcripts).
"""

import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

from kd_brain.brains.ctc import TeacherBrain
from kd_brain.brains.ddp import RankBatchSplitter, default_backend, rank, world_size
from kd_brain.brains.evaluate import EvalBrain, evaluate_conditions, headline_decoder, update_results
from kd_brain.brains.student import StudentBrain
from kd_brain.data.dataio import make_dataset
from kd_brain.pipeline.experiment import (condition_sets, dev_set, freeze_unused_aux_head, init_from,
                                          normalizer_frozen, prepare, student_data, trains_aux)
from kd_brain.pipeline.lock import releases_locks, take_lock
from kd_brain.pipeline.modeldir import lm_decoder, lm_settings, load_tokenizer, nbest_searcher, origin_config


def student_setup(hp):
    """(data folder, tokenizer, LM settings, train set, dev set, Brain arguments) of a student config."""
    # any trained model folder: a teacher, teacher_seq, a student (iterative teacher-student)
    thp = origin_config(hp["teacher_dir"])
    sb.utils.seed.seed_everything(hp["seed"])  # loading the teacher's config re-seeded with its seed
    data_folder, tokenizer = thp["data_folder"], load_tokenizer(thp, hp["vocab_size"])
    lm = lm_settings(thp)
    train_set, valid_set, contaminator = student_data(hp, tokenizer, data_folder)
    init_from(hp, tokenizer)
    searcher = None
    if hp["criterion"] == "mwer":
        searcher = nbest_searcher(hp["mwer_decoder"], lm, data_folder, tokenizer, hp["mwer_nbest"], hp["beam_size"])
    return data_folder, tokenizer, lm, train_set, valid_set, dict(contaminator=contaminator, nbest_searcher=searcher)


def teacher_setup(hp):
    """(data folder, tokenizer, LM settings, train set, dev set, Brain arguments) of a teacher config."""
    data_folder, (tokenizer, aux_tokenizer) = hp["data_folder"], prepare(hp)
    if trains_aux(hp) and aux_tokenizer is None:
        raise ValueError(f"aux_ctc_weight={hp['aux_ctc_weight']} but the model has no auxiliary head "
                         "(set aux_vocab_size in arch)")
    lm = lm_settings(hp)
    init_from(hp, tokenizer)
    train_set = make_dataset(os.path.join(data_folder, "labelled.csv"), tokenizer,
                             aux_tokenizer=aux_tokenizer if trains_aux(hp) else None)
    return data_folder, tokenizer, lm, train_set, dev_set(hp, tokenizer, data_folder), {}


@releases_locks
def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = default_backend(run_opts)  # gloo under torchrun without CUDA
    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, overrides)
    take_lock(hp["exp_folder"])  # one run per folder (passes under run.py; rank 0 only under torchrun)
    if hp.get("num_threads"):
        torch.set_num_threads(hp["num_threads"])
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(hp["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides)

    is_student = "teacher_dir" in hp
    data_folder, tokenizer, lm, train_set, valid_set, extra = (student_setup if is_student else teacher_setup)(hp)
    sampler = DynamicBatchSampler(train_set, max_batch_length=hp["batch_seconds"], num_buckets=hp["num_buckets"],
                                  length_func=lambda x: x["duration"], shuffle=True, seed=hp["seed"])
    if world_size() > 1:  # the 1-process batches, each split across the ranks
        sampler = RankBatchSplitter(sampler, rank(), world_size())
    freeze_unused_aux_head(hp)  # before the Brain: DDP registers the trainable parameters
    # the selection rule (kd_brain.results.selection): checkpoints by the mean dev WER, table's decoder
    beam = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(), beam_size=hp["beam_size"])
    decoder = lm_decoder(lm, data_folder, tokenizer)
    brain_class = StudentBrain if is_student else TeacherBrain
    brain = brain_class(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp, run_opts=run_opts,
                        checkpointer=hp["checkpointer"], tokenizer=tokenizer, frozen_normalizer=normalizer_frozen(hp),
                        dev_decoder=headline_decoder(decoder, beam), **extra)
    brain.train_sampler = sampler  # so fit() calls set_epoch: a new batch order every epoch
    brain.fit(hp["epoch_counter"], train_set, valid_set,
              train_loader_kwargs={"batch_sampler": sampler, "num_workers": hp["num_workers"]},
              valid_loader_kwargs={"batch_size": hp["test_batch_size"]})

    evaluator = EvalBrain(modules=hp["modules"], hparams=hp, run_opts=run_opts, checkpointer=hp["checkpointer"],
                          tokenizer=tokenizer, beam_searcher=beam, lm_decoder=decoder)
    scores = evaluate_conditions(evaluator, condition_sets(hp, tokenizer, data_folder),
                                 loader_kwargs={"batch_size": hp["test_batch_size"]})
    if sb.utils.distributed.if_main_process():
        md = update_results(hp["exp_folder"], hp["model_name"], scores)
        print(f"\nWER (%) in {hp['exp_folder']}/results.md:\n{md}")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
