"""The tokenizer sees labelled transcripts only."""

import hashlib
import json

import pytest

from kd_brain.data import CorpusError, read_csv
from kd_brain.tokenizer import BLANK_ID, train_tokenizer


def test_tokenizer_trained_on_labelled_only(tiny_prepared, tmp_path):
    _, paths = tiny_prepared
    tok = train_tokenizer(paths["labelled"], tmp_path, vocab_size=40)
    with open(tmp_path / "tokenizer.json") as f:
        info = json.load(f)
    labelled = read_csv(paths["labelled"])
    assert info["n_utts"] == len(labelled)
    assert info["text_hash"] == hashlib.sha1("\n".join(r["wrd"] for r in labelled).encode()).hexdigest()
    # the sentencepiece training text is exactly the labelled transcripts
    assert (tmp_path / "tokenizer_train.txt").read_text().split("\n")[:-1] == [r["wrd"] for r in labelled]
    assert tok.vocab_size == 40 and tok.vocab_list()[BLANK_ID] == "<blank>"
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
