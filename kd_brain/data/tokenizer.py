"""Sentencepiece units for CTC, trained on labelled transcripts only.

Id 0 is reserved as the CTC blank (sentencepiece's pad piece, which
``encode`` never emits), so model outputs and token ids share one index
space: ``vocab_size`` outputs, blank included.
"""

import hashlib
import logging
import os

import sentencepiece as spm

from kd_brain.pipeline.atomic import atomic_open, write_json
from kd_brain.data.prepare import built_with, read_transcripts

logger = logging.getLogger(__name__)
BLANK_ID = 0


class Tokenizer:
    """A trained sentencepiece model with the CTC blank at id 0.

    Example
    -------
    >>> import tempfile, os
    >>> from kd_brain.data.prepare import write_csv
    >>> d = tempfile.mkdtemp()
    >>> rows = [{"ID": str(i), "wrd": w} for i, w in enumerate(["SET A TIMER", "PLAY SOME MUSIC", "TURN ON THE LIGHTS"] * 20)]
    >>> write_csv(os.path.join(d, "lab.csv"), rows, ["ID", "wrd"])
    >>> tok = train_tokenizer(os.path.join(d, "lab.csv"), d, vocab_size=30, model_type="char")
    >>> tok.decode(tok.encode("PLAY MUSIC"))
    'PLAY MUSIC'
    >>> BLANK_ID in tok.encode("PLAY MUSIC")
    False
    """

    def __init__(self, model_path):
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        with open(model_path, "rb") as f:
            self.hash = hashlib.sha1(f.read()).hexdigest()[:16]

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids if int(i) != BLANK_ID])

    def vocab_list(self):
        """Pieces in id order, for speechbrain's CTC decoders."""
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]


def tokenizer_dir(hp, token_type=None, vocab_size=None):
    """Where a config's tokenizer lives: one per data folder, unit type and size."""
    return os.path.join(hp["data_folder"], f"tokenizer_{token_type or hp['token_type']}{vocab_size or hp['vocab_size']}")


def train_tokenizer(labelled_csv, out_dir, vocab_size, model_type="unigram", alphabet=None, character_coverage=1.0):
    """Trains (or reuses) a sentencepiece model on the ``wrd`` column of ``labelled_csv``.

    Refuses a manifest without a ``wrd`` column (the unlabelled pool has none),
    so the unlabelled transcripts cannot reach the tokenizer. Skipped when a
    model trained with the same options on the same manifest exists.

    Arguments
    ---------
    labelled_csv : str
        Manifest with transcripts (the ``labelled`` split).
    out_dir : str
        Where ``tokenizer.model`` and ``tokenizer.json`` are written.
    vocab_size : int
        Number of units, CTC blank included.
    model_type : str
        "unigram", "bpe" or "char".
    alphabet : str, optional
        Characters that are units whether or not the labelled text has them,
        so the output size does not depend on the data (e.g. a small corpus
        without a "Q"). Sub-word models keep them as pieces of their own
        (sentencepiece's ``required_chars``), so any word can be spelt.
    """
    rows, text_hash = read_transcripts(labelled_csv, "tokenizer")
    options = {"manifest": os.path.abspath(labelled_csv), "vocab_size": vocab_size, "model_type": model_type,
               "alphabet": alphabet, "n_utts": len(rows), "text_hash": text_hash}
    prefix = os.path.join(out_dir, "tokenizer")
    info = prefix + ".json"
    if os.path.isfile(prefix + ".model") and built_with(info, options):
        logger.info("Tokenizer %s.model already trained with the same options: skipped", prefix)
        return Tokenizer(prefix + ".model")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(info):  # tokenizer.json marks a finished model: gone until this one is finished
        os.remove(info)
    text_file = prefix + "_train.txt"
    with atomic_open(text_file) as f:
        f.writelines(r["wrd"] + "\n" for r in rows)
    # Characters: the alphabet as user symbols fixes the unit set. Sub-words: user symbols
    # would always be cut out as single pieces (no letter inside a longer piece), so the
    # alphabet is only required to be in the character set.
    letters = {"user_defined_symbols": list(alphabet or [])} if model_type == "char" else \
        {"required_chars": alphabet or ""}
    try:
        # sentencepiece writes <prefix>.model itself (its bytes record the prefix: no temporary name);
        # tokenizer.json, written after it, is what makes it trusted
        spm.SentencePieceTrainer.train(
            input=text_file, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, pad_id=BLANK_ID, pad_piece="<blank>", unk_id=1,
            bos_id=-1, eos_id=-1, minloglevel=2, **letters,
        )
    except RuntimeError as e:  # e.g. more units asked for than the transcripts hold
        raise ValueError(f"vocab_size={vocab_size}, token_type={model_type}: sentencepiece cannot train on "
                         f"{labelled_csv} ({len(rows)} transcripts): {str(e).split('] ')[-1]}") from e
    write_json(info, options, indent=1)
    return Tokenizer(prefix + ".model")
