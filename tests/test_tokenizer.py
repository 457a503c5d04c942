"""The tokenizer sees labelled transcripts only."""

import hashlib
import json

import pytest

from kd_brain.data.prepare import CorpusError, read_csv
from kd_brain.data.tokenizer import BLANK_ID, train_tokenizer


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "char"])
def test_tokenizer_trained_on_labelled_only(tiny_prepared, tmp_path, model_type):
    _, paths = tiny_prepared
    vocab_size = 30 if model_type == "char" else 40
    tok = train_tokenizer(paths["labelled"], tmp_path, vocab_size=vocab_size, model_type=model_type,
                          alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    with open(tmp_path / "tokenizer.json") as f:
        info = json.load(f)
    labelled = read_csv(paths["labelled"])
    assert info["n_utts"] == len(labelled)
    assert info["text_hash"] == hashlib.sha1("\n".join(r["wrd"] for r in labelled).encode()).hexdigest()
    # the sentencepiece training text is exactly the labelled transcripts
    assert (tmp_path / "tokenizer_train.txt").read_text().split("\n")[:-1] == [r["wrd"] for r in labelled]
    assert tok.vocab_size == vocab_size and tok.vocab_list()[BLANK_ID] == "<blank>"
    sentence = labelled[0]["wrd"]
    assert BLANK_ID not in tok.encode(sentence) and tok.decode(tok.encode(sentence)) == sentence


def test_tokenizer_refuses_unlabelled_manifest(tiny_prepared, tmp_path):
    _, paths = tiny_prepared
    with pytest.raises(CorpusError, match="no 'wrd' column"):
        train_tokenizer(paths["unlabelled"], tmp_path, vocab_size=40)


def test_tokenizer_reused_when_unchanged(tiny_prepared, tmp_path):
    _, paths = tiny_prepared
    train_tokenizer(paths["labelled"], tmp_path, vocab_size=40)
    stamp = (tmp_path / "tokenizer.model").stat().st_mtime_ns
    train_tokenizer(paths["labelled"], tmp_path, vocab_size=40)
    assert (tmp_path / "tokenizer.model").stat().st_mtime_ns == stamp


def test_subword_tokenizer_keeps_every_letter_and_longer_pieces(tiny_prepared, tmp_path):
    """Sub-words: the alphabet is required (any word can be spelt), not forced to single pieces."""
    _, paths = tiny_prepared
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
    tok = train_tokenizer(paths["labelled"], tmp_path, vocab_size=60, model_type="unigram", alphabet=alphabet)
    pieces = tok.vocab_list()
    assert set(alphabet) <= set(pieces) and "\u2581" in pieces  # flashlight's word separator is a unit
    sentence = read_csv(paths["labelled"])[0]["wrd"]
    ids = tok.encode(sentence)
    assert len(ids) < len(sentence.replace(" ", "")) and tok.decode(ids) == sentence
    assert tok.decode(tok.encode("QUIZZICAL JUKEBOX")) == "QUIZZICAL JUKEBOX"  # unseen words, spelt by letters


def test_too_many_units_is_an_error_naming_the_setting(tiny_prepared, tmp_path):
    _, paths = tiny_prepared
    with pytest.raises(ValueError, match=r"vocab_size=5000, token_type=unigram.*labelled.csv.*Vocabulary size too high"):
        train_tokenizer(paths["labelled"], tmp_path, vocab_size=5000, model_type="unigram")
