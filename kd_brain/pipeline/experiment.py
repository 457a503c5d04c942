"""Building an experiment from a training config: its data, its initialisation, its test sets.

The functions ``recipes/KD-Noise/train.py`` chains: a teacher config prepares
its manifests and tokenizers (:func:`prepare`), a student config reads the
data of the teacher it learns from (:func:`student_data`); either may start
from another model's best checkpoint (:func:`init_from`); both are scored on
the same named test sets (:func:`condition_sets`).
"""

import logging
import os

import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import run_on_main

from kd_brain.brains.ddp import world_size
from kd_brain.data.dataio import make_dataset, make_student_dataset
from kd_brain.data.prepare import prepare_corpus
from kd_brain.data.tokenizer import Tokenizer, tokenizer_dir, train_tokenizer
from kd_brain.noise.conditions import CONDITIONS, DEV_NOISY
from kd_brain.pipeline.fingerprint import check_labels
from kd_brain.pipeline.modeldir import (best_checkpoint, load_normalization, load_tokenizer, origin_config,
                                     split_manifest)
from kd_brain.store import SoftLabelStore

logger = logging.getLogger(__name__)
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


def init_from(hp, tokenizer):
    """Loads model + normaliser from another model's best checkpoint, once (before any own checkpoint).

    ``init_from`` is a model folder in ``exp_folder`` (``teacher``), else a
    path (e.g. ``exp/synthetic/teacher``, to pretrain the bed's teacher).
    When that model's units differ from ``tokenizer``'s (sub-words
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
    same_units = source_units == tokenizer.vocab_list()
    if not same_units:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = hp["model"].load_state_dict(state, strict=False)
    new_head = [] if same_units else [k for k in hp["model"].state_dict() if k.startswith("head.")]
    if unexpected or sorted(missing) != sorted(new_head):
        raise ValueError(f"init_from={hp['init_from']}: {best.path} is another architecture "
                         f"(missing {missing}, unexpected {unexpected}); set arch like that model's")
    load_normalization(hp["normalize"], best)
    if init_normalizer(hp) == "reestimate":  # from this config's training data, over its first epoch
        hp["normalize"].count = 0
    logger.info("Initialised %s from %s%s (input statistics: %s)", hp["model_name"], best.path,
                "" if same_units else f" except the output layer: its {len(source_units)} units are not ours",
                init_normalizer(hp))


NORMALIZER_POLICIES = ("frozen", "reestimate")


def init_normalizer(hp):
    """What a model initialised from another does with that model's input statistics (``init_normalizer``):
    ``frozen`` keeps them (the teacher's soft labels were made with them), ``reestimate`` estimates
    them anew from this config's training data during its first epoch. None without ``init_from``."""
    if not hp.get("init_from"):
        return None
    policy = hp.get("init_normalizer", "frozen")
    if policy not in NORMALIZER_POLICIES:
        raise ValueError(f"init_normalizer={policy}: choose one of {', '.join(NORMALIZER_POLICIES)}")
    return policy


def normalizer_frozen(hp):
    """Whether training must leave the input statistics as they are (a frozen initialisation)."""
    return init_normalizer(hp) == "frozen"


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
    """Training and dev sets of a student config (soft labels and noise as the criterion needs),
    and the built contaminator (None without contamination): ``(train, valid, contaminator)``."""
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
        # labels of this teacher's best checkpoint and of these manifests (a retrained teacher leaves its
        # old store behind): refused, or with allow_label_mismatch recorded in the model folder
        check_labels(store.meta, hp["store_dir"], [store.meta.get("teacher_dir"), hp["teacher_dir"]],
                     [split_manifest(data_folder, s) for s in hp["train_splits"]],
                     allow=hp.get("allow_label_mismatch", False), record_dir=hp.get("output_folder"))
    if hp["contaminate"] and world_size() > 1:
        # the noise cache is written by whoever decodes a clip first: the main process, alone
        run_on_main(_warm_noise_cache, args=[hp["contaminator"]])
    contaminator = hp["contaminator"]() if hp["contaminate"] else None  # the Brain sets its epoch
    manifests = [split_manifest(data_folder, s) for s in hp["train_splits"]]
    # CTC and MWER need transcripts: rows without one (the unlabelled pool) are left out,
    # never trained on placeholder targets
    train = make_student_dataset(manifests, tokenizer, contaminator, store, nbest=criterion == "sequence",
                                 labelled_only=criterion in TRANSCRIPT_CRITERIA)
    return train, dev_set(hp, tokenizer, data_folder), contaminator


def _warm_noise_cache(factory):
    factory()  # builds a contaminator (decoding clips into the cache); it is not sent to the other ranks


def dev_manifests(hp, data_folder):
    """``{dev condition: manifest}``: clean dev and, once the prepare stage wrote it, ``dev_noisy``
    (:mod:`kd_brain.noise.conditions`); the conditions of the selection rule
    (:mod:`kd_brain.results.selection`)."""
    paths = {"dev": os.path.join(data_folder, "dev.csv")}
    noisy = os.path.join(hp["prep_folder"], "conditions", f"{DEV_NOISY}.csv")
    if os.path.isfile(noisy):
        paths[DEV_NOISY] = noisy
    else:
        logger.warning("%s not found (written by the prepare stage): checkpoints are selected on clean dev only",
                       noisy)
    return paths


def dev_set(hp, tokenizer, data_folder):
    """The validation set: every dev condition in one dataset, IDs ``condition/utt``, so that
    dev WER (:func:`kd_brain.results.selection.dev_wer`) is the mean over the conditions."""
    return make_dataset(dev_manifests(hp, data_folder), tokenizer, sort_key="duration")


def condition_sets(hp, tokenizer, data_folder):
    """Named test sets: the dev conditions, clean and the noisy test conditions that exist, then
    ``extra_test``."""
    paths = {**dev_manifests(hp, data_folder), "clean": os.path.join(data_folder, "test_clean.csv")}
    for name in CONDITIONS:  # written by the prepare stage (its clean.csv adds the audit columns)
        path = os.path.join(hp["prep_folder"], "conditions", f"{name}.csv")
        if os.path.isfile(path):
            paths[name] = path
    paths.update(hp["extra_test"] or {})
    return {name: make_dataset(p, tokenizer, sort_key="duration") for name, p in paths.items()}
