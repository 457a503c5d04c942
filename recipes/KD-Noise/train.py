#!/usr/bin/env python3
"""Trains a KD-Noise model and scores it on every test condition.

    python recipes/KD-Noise/train.py hparams/teacher.yaml [--key=value ...]
    python recipes/KD-Noise/train.py hparams/student.yaml [--criterion=frame|sequence|mwer|ctc ...]
    torchrun --nproc_per_node=N recipes/KD-Noise/train.py <yaml> [--num_threads=1] [--precision=bf16] ...

Every stage (teacher, student, sequence training) runs under torchrun
(SpeechBrain DDP; gloo without CUDA). ``batch_seconds`` is the *global*
batch: each of the N ranks trains on its 1/N share of every batch of the
1-process sampler (``kd_brain.ddp.RankBatchSplitter``), so N ranks take the
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
(greedy, beam, and a word n-gram built from the labelled transcripts).
"""

import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.decoders.ctc import CTCPrefixBeamSearcher
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import run_on_main

from kd_brain.brain import TeacherBrain
from kd_brain.data import prepare_corpus
from kd_brain.ddp import RankBatchSplitter, default_backend, rank, world_size
from kd_brain.dataio import contaminator_item, make_dataset, make_student_dataset
from kd_brain.evaluate import EvalBrain, evaluate_conditions, update_results
from kd_brain.lock import releases_locks, take_lock
from kd_brain.modeldir import (best_checkpoint, lm_decoder, lm_settings, load_tokenizer, nbest_searcher,
                              origin_config, split_manifest)
from kd_brain.store import SoftLabelStore
from kd_brain.student import StudentBrain
from kd_brain.tokenizer import Tokenizer, tokenizer_dir, train_tokenizer

logger = logging.getLogger(__name__)
CONDITIONS = ("clean", "noisy_sim", "rerecorded")
TRANSCRIPT_CRITERIA = ("ctc", "mwer")  # criteria whose targets are transcripts


def prepare(hp):
    """Manifests and tokenizers of a teacher config; each step is skipped when already done.

    Returns the tokenizer of the model's units and, when the model has an
    auxiliary head, the character tokenizer of that head (else None).
    """
    # ``splits`` (Kaldi dirs per role, e.g. LibriSpeech's standard subsets) replaces the speaker
    # split of train_subdir; configs without it keep the speaker split's keys
    split = {"splits": hp["splits"]} if hp.get("splits") else dict(
        train_subdir=hp["train_subdir"], test_subdir=hp["test_subdir"], labelled_fraction=hp["labelled_fraction"],
        n_dev_speakers=hp["n_dev_speakers"])
    run_on_main(prepare_corpus, kwargs=dict(
        corpus_dir=hp["corpus_dir"], out_dir=hp["data_folder"], seed=hp["split_seed"], on_bad=hp["on_bad"],
        num_workers=hp["prep_workers"], convert_audio=hp["convert_audio"], labelled_hours=hp.get("labelled_hours"),
        exclude_csv=hp.get("exclude_csv"), **split))
    labelled = os.path.join(hp["data_folder"], "labelled.csv")
    run_on_main(train_tokenizer, args=[labelled, tokenizer_dir(hp), hp["vocab_size"], hp["token_type"],
                                       hp["token_alphabet"]])
    aux_size = hp["model"].aux_vocab_size
    if not aux_size:
        return load_tokenizer(hp), None
    aux_dir = tokenizer_dir(hp, "char", aux_size)
    run_on_main(train_tokenizer, args=[labelled, aux_dir, aux_size, "char", hp["token_alphabet"]])
    aux = Tokenizer(os.path.join(aux_dir, "tokenizer.model"))
    if aux.vocab_size != aux_size:
        raise ValueError(f"aux_vocab_size={aux_size} but the character tokenizer has {aux.vocab_size} units")
    return load_tokenizer(hp), aux


def init_from(hp):
    """Loads model + normaliser from another model's best checkpoint, once (before any own checkpoint).

    ``init_from`` is a model folder in ``exp_folder`` (``teacher``), else a
    path (e.g. ``exp/synthetic/teacher``, to pretrain the bed's teacher).
    When that model's units differ from ``hp["tokenizer"]``'s (sub-words
    trained on another corpus' transcripts), its output layer is left out and
    starts anew; the rest of the model must match exactly.
    """
    if not hp.get("init_from") or hp["checkpointer"].find_checkpoint() is not None:
        return
    candidates = [os.path.join(hp["exp_folder"], hp["init_from"]), hp["init_from"]]
    folder = next((c for c in candidates if os.path.isdir(os.path.join(c, "save"))), None)
    if folder is None:
        raise FileNotFoundError(f"init_from={hp['init_from']}: no trained model folder (with save/) at "
                                f"{' or '.join(dict.fromkeys(candidates))}")
    best = best_checkpoint(Checkpointer(os.path.join(folder, "save")), f"init_from={hp['init_from']}")
    state = torch.load(best.paramfiles["model"], map_location="cpu", weights_only=True)
    source_units = load_tokenizer(origin_config(folder), state["head.weight"].shape[0]).vocab_list()
    same_units = source_units == hp["tokenizer"].vocab_list()
    if not same_units:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = hp["model"].load_state_dict(state, strict=False)
    new_head = [] if same_units else [k for k in hp["model"].state_dict() if k.startswith("head.")]
    if unexpected or sorted(missing) != sorted(new_head):
        raise ValueError(f"init_from={hp['init_from']}: {best.path} is another architecture "
                         f"(missing {missing}, unexpected {unexpected}); set arch like that model's")
    hp["normalize"]._load(best.paramfiles["normalize"])
    logger.info("Initialised %s from %s%s", hp["model_name"], best.path,
                "" if same_units else f" except the output layer: its {len(source_units)} units are not ours")


def trains_aux(hp):
    """Whether the config's criterion trains the auxiliary head (teacher configs with aux_ctc_weight > 0)."""
    return hp.get("aux_ctc_weight", 0) > 0


def freeze_unused_aux_head(hp):
    """Freezes the auxiliary head where no criterion trains it (students, sequence training).

    It keeps the teacher's weights, weight decay leaves it alone, and DDP
    does not wait for gradients that never come.
    """
    model = hp["model"]
    if model.aux_vocab_size and not trains_aux(hp):
        model.aux_head.requires_grad_(False)


def student_data(hp, tokenizer, data_folder):
    """Training and dev sets of a student config (soft labels and noise as the criterion needs)."""
    criterion = hp["criterion"]
    store = None
    if criterion in ("frame", "sequence"):
        store = SoftLabelStore(hp["store_dir"])
        frame = hp["model"].frame_info()
        store.check_compatible({"tokenizer_hash": tokenizer.hash, "vocab_size": frame["vocab_size"],
                                "frame_shift_ms": frame["frame_shift_ms"], "subsampling": frame["subsampling"]})
        if criterion == "frame":  # the store must serve the criterion's target at its temperature
            hp["criteria"]["frame"].check_store(store.meta, hp["store_dir"])
        elif store.target != "topk":
            raise ValueError(f"criterion={criterion} reads the N-best of a top-k store; {hp['store_dir']} "
                             f"is a {store.target} store")
    if hp["contaminate"] and world_size() > 1:
        # the noise cache is written by whoever decodes a clip first: the main process, alone
        run_on_main(_warm_noise_cache, args=[hp["contaminator"]])
    contaminator = hp["contaminator"]() if hp["contaminate"] else None
    hp["contaminator"] = contaminator  # the built one: the Brain sets its epoch
    manifests = [split_manifest(data_folder, s) for s in hp["train_splits"]]
    # CTC and MWER need transcripts: rows without one (the unlabelled pool) are left out,
    # never trained on placeholder targets
    train = make_student_dataset(manifests, tokenizer, contaminator, store, nbest=criterion == "sequence",
                                 labelled_only=criterion in TRANSCRIPT_CRITERIA)
    valid = make_dataset(os.path.join(data_folder, "dev.csv"), tokenizer, sort_key="duration")
    if contaminator is not None:  # dev hears the training noise pool, one fixed draw (epoch -1)
        valid.add_dynamic_item(contaminator_item(contaminator))
        valid.set_output_keys(["id", "sig", "noisy_sig", "wrd", "tokens"])
    return train, valid


def _warm_noise_cache(factory):
    factory()  # builds a contaminator (decoding clips into the cache); it is not sent to the other ranks


def condition_sets(hp, tokenizer, data_folder):
    """Named test sets: dev, clean and the noisy conditions that exist, then ``extra_test``."""
    paths = {"dev": os.path.join(data_folder, "dev.csv"), "clean": os.path.join(data_folder, "test_clean.csv")}
    for name in CONDITIONS:  # written by the prepare stage (its clean.csv adds the audit columns)
        path = os.path.join(hp["prep_folder"], "conditions", f"{name}.csv")
        if os.path.isfile(path):
            paths[name] = path
    paths.update(hp["extra_test"] or {})
    return {name: make_dataset(p, tokenizer, sort_key="duration") for name, p in paths.items()}


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
    if is_student:
        # any trained model folder: a teacher, teacher_seq, a student (iterative teacher-student)
        thp = origin_config(hp["teacher_dir"])
        sb.utils.seed.seed_everything(hp["seed"])  # loading the teacher's config re-seeded with its seed
        data_folder, tokenizer = thp["data_folder"], load_tokenizer(thp, hp["vocab_size"])
        lm = lm_settings(thp)
        hp["tokenizer"] = tokenizer
        train_set, valid_set = student_data(hp, tokenizer, data_folder)
        init_from(hp)
        if hp["criterion"] == "mwer":
            hp["nbest_searcher"] = nbest_searcher(hp["mwer_decoder"], lm, data_folder, tokenizer,
                                                  hp["mwer_nbest"], hp["beam_size"])
    else:
        data_folder, (tokenizer, aux_tokenizer) = hp["data_folder"], prepare(hp)
        if trains_aux(hp) and aux_tokenizer is None:
            raise ValueError(f"aux_ctc_weight={hp['aux_ctc_weight']} but the model has no auxiliary head "
                             "(set aux_vocab_size in arch)")
        lm = lm_settings(hp)
        hp["tokenizer"] = tokenizer
        init_from(hp)
        train_set = make_dataset(os.path.join(data_folder, "labelled.csv"), tokenizer,
                                 aux_tokenizer=aux_tokenizer if trains_aux(hp) else None)
        valid_set = make_dataset(os.path.join(data_folder, "dev.csv"), tokenizer, sort_key="duration")

    sampler = DynamicBatchSampler(train_set, max_batch_length=hp["batch_seconds"], num_buckets=hp["num_buckets"],
                                  length_func=lambda x: x["duration"], shuffle=True, seed=hp["seed"])
    if world_size() > 1:  # the 1-process batches, each split across the ranks
        sampler = RankBatchSplitter(sampler, rank(), world_size())
    freeze_unused_aux_head(hp)  # before the Brain: DDP registers the trainable parameters
    brain_class = StudentBrain if is_student else TeacherBrain
    brain = brain_class(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                        run_opts=run_opts, checkpointer=hp["checkpointer"])
    brain.train_sampler = sampler  # so fit() calls set_epoch: a new batch order every epoch
    brain.fit(hp["epoch_counter"], train_set, valid_set,
              train_loader_kwargs={"batch_sampler": sampler, "num_workers": hp["num_workers"]},
              valid_loader_kwargs={"batch_size": hp["test_batch_size"]})

    hp["beam_searcher"] = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(),
                                                beam_size=hp["beam_size"])
    hp["lm_decoder"] = lm_decoder(lm, data_folder, tokenizer)
    evaluator = EvalBrain(modules=hp["modules"], hparams=hp, run_opts=run_opts, checkpointer=hp["checkpointer"])
    scores = evaluate_conditions(evaluator, condition_sets(hp, tokenizer, data_folder),
                                 loader_kwargs={"batch_size": hp["test_batch_size"]})
    if sb.utils.distributed.if_main_process():
        md = update_results(hp["exp_folder"], hp["model_name"], scores)
        print(f"\nWER (%) in {hp['exp_folder']}/results.md:\n{md}")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
