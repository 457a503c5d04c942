"""A trained model folder: its saved config, where its data and units come from, its best checkpoint.

Every training run writes ``<output_folder>/hyperparams.yaml`` (the config
with its overrides) and ``save/`` (checkpoints with their dev WER). A teacher
config names its data folder and tokenizer itself; a student config (teacher_seq,
student, a baseline) names them only through ``teacher_dir``. ``origin_config``
follows that chain to the config that prepared the data, so *any* trained
model folder can label data (extraction, pseudo-labels) or teach a student:
the paper's best label source is a sequence-trained teacher, and iterative
teacher-student needs a student as teacher.
"""

import logging
import os

from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from kd_brain.decode.lm import LexiconLMDecoder, build_lm
from kd_brain.data.tokenizer import Tokenizer, tokenizer_dir

logger = logging.getLogger(__name__)
LM_KEYS = ("lm_order", "lm_weight", "word_score", "lm_beam_size", "lm_token_beam", "lm_blank_penalty")
MAX_CHAIN = 20  # teacher_dir links followed before we call it a loop


def saved_config(model_dir):
    """The config a model was trained with (saved next to it by ``create_experiment_directory``)."""
    path = os.path.join(model_dir, "hyperparams.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a trained model folder (train it first)")
    with open(path) as f:
        return load_hyperpyyaml(f)


def origin_config(model_dir):
    """The config that prepared the data and units of the model in ``model_dir``.

    That is the model's own config when it has ``data_folder`` (a teacher),
    else the origin of its ``teacher_dir`` (students, sequence-trained models),
    followed as far as needed.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name, text in [("t", "data_folder: D\\ntoken_type: char\\n"), ("s", f"teacher_dir: {d}/t\\n"),
    ...                    ("s2", f"teacher_dir: {d}/s\\n")]:
    ...     os.makedirs(os.path.join(d, name)); _ = open(os.path.join(d, name, "hyperparams.yaml"), "w").write(text)
    >>> origin_config(os.path.join(d, "s2"))["data_folder"]
    'D'
    """
    seen = []
    folder = model_dir
    for _ in range(MAX_CHAIN):
        cfg = saved_config(folder)
        seen.append(folder)
        if "data_folder" in cfg:
            return cfg
        if not cfg.get("teacher_dir"):
            raise KeyError(f"{folder}/hyperparams.yaml has neither data_folder nor teacher_dir: "
                           "cannot tell which data and tokenizer the model uses")
        folder = cfg["teacher_dir"]
    raise RuntimeError(f"teacher_dir links do not end in a teacher config: {' -> '.join(seen)}")


def load_tokenizer(cfg, vocab_size=None):
    """The tokenizer of a teacher (origin) config; checks the model's output size against it."""
    tokenizer = Tokenizer(os.path.join(tokenizer_dir(cfg), "tokenizer.model"))
    expected = cfg["vocab_size"] if vocab_size is None else vocab_size
    if tokenizer.vocab_size != expected:
        raise ValueError(f"vocab_size={expected} but the tokenizer has {tokenizer.vocab_size} units")
    return tokenizer


def lm_settings(cfg):
    """The LM decoding keys of an origin config (0 / absent: no LM; no lm_units: the word n-gram)."""
    # a config without lm_units (a character model's, or one trained by hand) decodes with the word n-gram
    return {**{k: cfg.get(k, 0) for k in LM_KEYS}, "lm_units": cfg.get("lm_units", "word")}


def lm_decoder(lm, data_folder, tokenizer, nbest=1):
    """Word n-gram + lexicon decoder from the labelled transcripts (built once), or None if lm_order is 0.

    ``lm`` holds the ``LM_KEYS`` of the teacher's config: students and
    sequence-trained models are decoded exactly like their teacher.
    """
    if not lm["lm_order"]:
        return None
    units = lm.get("lm_units", "word")  # lm_settings always sets it; hand-made dicts may not
    name = f"lm_{lm['lm_order']}gram_{tokenizer.hash}" + ("" if units == "word" else f"_{units}")
    lm_dir = os.path.join(data_folder, name)
    run_on_main(build_lm, args=[os.path.join(data_folder, "labelled.csv"), lm_dir, tokenizer, lm["lm_order"]],
                kwargs={"units": units})
    return LexiconLMDecoder(lm_dir, tokenizer.vocab_list(), beam_size=lm["lm_beam_size"],
                            token_beam=lm["lm_token_beam"], lm_weight=lm["lm_weight"], word_score=lm["word_score"],
                            nbest=nbest, units=units, blank_penalty=lm["lm_blank_penalty"])


def nbest_searcher(source, lm, data_folder, tokenizer, nbest, beam_size):
    """MWER's N-best: ``(log_probs, lens) -> per utterance, distinct texts best first``.

    ``source`` "lm": the n-gram LM search that scores the headline
    WER (the paper's sequence training sees acoustic, lexicon and LM scores
    together); "beam": speechbrain's CTC prefix search without LM.
    """
    if source == "lm" and lm["lm_order"]:
        return lm_decoder(lm, data_folder, tokenizer, nbest=nbest).nbest_texts
    if source not in ("lm", "beam"):
        raise ValueError(f"mwer_decoder={source!r}: choose lm or beam")
    from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

    beam = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(), beam_size=beam_size, topk=nbest)
    return lambda log_probs, lens: [list(dict.fromkeys(h.text for h in hyps)) for hyps in beam(log_probs, lens)]


def best_checkpoint(checkpointer, what):
    """The checkpoint with the lowest dev WER (not the most recent one), or a clear error."""
    best = checkpointer.find_checkpoint(min_key="WER")
    if best is None:
        raise FileNotFoundError(f"{what}: no checkpoint with a dev WER in {checkpointer.checkpoints_dir}; "
                                "train the model first")
    return best


def load_normalization(normalize, checkpoint):
    """Loads ``checkpoint``'s feature statistics into ``normalize`` (SpeechBrain's ``InputNormalization``).

    Through the load hook the class registers with SpeechBrain's checkpoint
    hooks (``mark_as_loader``), the one ``Checkpointer.load_checkpoint`` calls,
    rather than by the private method's name.
    """
    from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook

    get_default_hook(normalize, DEFAULT_LOAD_HOOKS)(normalize, checkpoint.paramfiles["normalize"], False)


def load_label_source(model_dir, what=None):
    """A trained model folder ready to label data: ``(config, origin config, best checkpoint, tokenizer)``.

    The model and its thread count come from the folder's own config, data
    folder and units from its origin; the checkpoint is the lowest-dev-WER one
    (extraction, pseudo-labelling and transcription all load exactly this
    one). ``what`` names the folder in the error when it has no checkpoint.
    """
    import torch

    cfg, origin = saved_config(model_dir), origin_config(model_dir)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    best = best_checkpoint(cfg["checkpointer"], what or f"teacher_dir={model_dir}")
    return cfg, origin, best, load_tokenizer(origin, cfg["model"].vocab_size)


def split_manifest(data_folder, split):
    """A training split: a name in the data folder (``labelled``) or a CSV path (pseudo-labels)."""
    return split if split.endswith(".csv") else os.path.join(data_folder, f"{split}.csv")
