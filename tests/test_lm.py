"""N-gram LMs (words with a lexicon, units without one) and their decoding (kd_brain.decode.lm)."""

import math
import os

import pytest
import torch

from kd_brain.data.prepare import CorpusError, write_csv
from kd_brain.decode.lm import BOS, LexiconLMDecoder, build_lm, kneser_ney, write_arpa
from kd_brain.data.tokenizer import BLANK_ID, train_tokenizer

SENTENCES = [s.split() for s in [
    "PLAY SOME MUSIC", "PLAY SOME JAZZ", "PLAY MUSIC IN THE KITCHEN", "STOP THE MUSIC", "TURN ON THE LIGHTS",
    "TURN OFF THE LIGHTS IN THE KITCHEN", "SET A TIMER", "STOP",
]]


def arpa_prob(probs, backoffs, history, word):
    """P(word | history) by the ARPA back-off rule, from ``kneser_ney``'s tables."""
    history = tuple(history)
    gram = history + (word,)
    if gram in probs[len(gram) - 1]:
        return probs[len(gram) - 1][gram]
    return backoffs[len(history) - 1].get(history, 1.0) * arpa_prob(probs, backoffs, history[1:], word)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kneser_ney_is_a_distribution_for_every_history(order):
    probs, backoffs = kneser_ney(SENTENCES, order=order)
    vocab = [g[0] for g in probs[0] if g[0] != BOS]
    histories = [h for table in backoffs for h in table] + [("NEVER", "SEEN")[:order - 1], ("THE",)]
    for history in histories:
        total = sum(arpa_prob(probs, backoffs, history, w) for w in vocab)
        assert abs(total - 1) < 1e-9, (history, total)
    # Seen continuations beat unseen ones
    assert arpa_prob(probs, backoffs, ("PLAY",), "SOME") > arpa_prob(probs, backoffs, ("PLAY",), "LIGHTS")


def test_kenlm_reads_our_arpa_with_the_same_probabilities(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import create_word_dict

    path = str(tmp_path / "lm.arpa")
    write_arpa(SENTENCES, path, order=3)
    probs, backoffs = kneser_ney(SENTENCES, order=3)
    words = sorted({w for s in SENTENCES for w in s}) + ["</s>", "<unk>", "<s>"]
    word_dict = create_word_dict({w: [[w]] for w in words})
    lm = KenLM(path, word_dict)
    state, history = lm.start(False), [BOS]
    for word in ["TURN", "OFF", "THE", "MUSIC", "</s>"]:  # "THE MUSIC" after "OFF": a back-off
        state, score = lm.score(state, word_dict.get_index(word))
        assert score == pytest.approx(math.log10(arpa_prob(probs, backoffs, history[-2:], word)), abs=1e-5)
        history.append(word)


def _tokenizer(tmp_path):
    rows = [{"ID": str(i), "wrd": " ".join(s)} for i, s in enumerate(SENTENCES * 5)]
    write_csv(str(tmp_path / "labelled.csv"), rows, ["ID", "wrd"])
    return train_tokenizer(str(tmp_path / "labelled.csv"), str(tmp_path / "tok"), vocab_size=30, model_type="char",
                           alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def _emissions(tokenizer, frames):
    """Log-probs [1, T, V] from a list of {piece: prob} frames; the rest of the mass is blank."""
    pieces = tokenizer.vocab_list()
    lp = torch.full((1, len(frames), len(pieces)), 1e-4)
    for t, frame in enumerate(frames):
        for piece, p in frame.items():
            lp[0, t, pieces.index(piece)] = p
        lp[0, t, BLANK_ID] = max(1 - sum(frame.values()), 1e-4)
    return (lp / lp.sum(-1, keepdim=True)).log()


def test_lexicon_decoder_turns_a_misspelling_into_a_known_word(tmp_path):
    tok = _tokenizer(tmp_path)
    lm_dir = build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm"), tok, order=3)
    # "PLAY MUSIK": the acoustics prefer K over C in the last letter
    spelled = [{"\u2581": 0.9}] + [{c: 0.9} for c in "PLAY"] + [{"\u2581": 0.9}] + [{c: 0.9} for c in "MUSI"]
    lp = _emissions(tok, spelled + [{"K": 0.5, "C": 0.4}, {}])
    greedy = tok.decode(lp[0].argmax(-1).unique_consecutive().tolist())
    assert greedy == "PLAY MUSIK"
    decoder = LexiconLMDecoder(lm_dir, tok.vocab_list(), beam_size=20, lm_weight=1.0, word_score=0.0)
    assert decoder(lp, torch.ones(1)) == [["PLAY", "MUSIC"]]
    # relative lengths are honoured: the first 5 frames hold "PLAY"
    assert decoder(lp, torch.tensor([5 / lp.shape[1]])) == [["PLAY"]]


def test_build_lm_refuses_unlabelled_manifests_and_is_skipped_when_done(tmp_path):
    tok = _tokenizer(tmp_path)
    write_csv(str(tmp_path / "unlabelled.csv"), [{"ID": "u1", "wav": "a.wav"}], ["ID", "wav"])
    with pytest.raises(CorpusError, match="unlabelled.csv.*wrd"):
        build_lm(str(tmp_path / "unlabelled.csv"), str(tmp_path / "lm"), tok)
    out = build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm"), tok)
    arpa = os.path.join(out, "words.arpa")
    mtime = os.path.getmtime(arpa)
    build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm"), tok)
    assert os.path.getmtime(arpa) == mtime
    with open(os.path.join(out, "lexicon.txt")) as f:
        lexicon = dict(line.rstrip("\n").split("\t") for line in f)
    assert lexicon["KITCHEN"] == "K I T C H E N"
    assert set(lexicon) == {w for s in SENTENCES for w in s}


def test_lexicon_spells_words_with_real_subword_pieces(tmp_path):
    rows = [{"ID": str(i), "wrd": " ".join(s)} for i, s in enumerate(SENTENCES * 5)]
    write_csv(str(tmp_path / "labelled.csv"), rows, ["ID", "wrd"])
    tok = train_tokenizer(str(tmp_path / "labelled.csv"), str(tmp_path / "tok"), vocab_size=30, model_type="unigram")
    out = build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm"), tok)
    pieces = set(tok.vocab_list())
    with open(os.path.join(out, "lexicon.txt")) as f:
        for line in f:
            word, spelling = line.rstrip("\n").split("\t")
            assert set(spelling.split()) <= pieces, (word, spelling)
            assert "".join(spelling.split()).lstrip("\u2581") == word


def test_lexicon_decoder_returns_words_from_subword_units(tmp_path):
    """Sub-word CTC (pieces like "\u2581PLAY") through the lexicon decoder gives words, misspellings mended."""
    rows = [{"ID": str(i), "wrd": " ".join(s)} for i, s in enumerate(SENTENCES * 5)]
    write_csv(str(tmp_path / "labelled.csv"), rows, ["ID", "wrd"])
    tok = train_tokenizer(str(tmp_path / "labelled.csv"), str(tmp_path / "tok"), vocab_size=36, model_type="unigram",
                          alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    assert any(len(p.lstrip("\u2581")) > 1 for p in tok.vocab_list())  # real sub-words, not only letters
    lm_dir = build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm"), tok, order=3)
    pieces = tok.vocab_list()
    frames = [{pieces[i]: 0.9} for i in tok.encode("TURN OFF THE LIGHTS")]
    # the last piece is uncertain between its own and a letter that spells no known word
    last = pieces[tok.encode("TURN OFF THE LIGHTS")[-1]]
    wrong = next(p for p in pieces if p not in (last, "<blank>", "<unk>", "\u2581") and len(p) == 1 and p != "S")
    frames[-1] = {last: 0.45, wrong: 0.5}
    lp = _emissions(tok, frames + [{}])
    decoder = LexiconLMDecoder(lm_dir, pieces, beam_size=20, lm_weight=1.0, word_score=0.0)
    assert decoder(lp, torch.ones(1)) == [["TURN", "OFF", "THE", "LIGHTS"]]
    # the per-frame token beam keeps the two candidates of the last piece: same words
    narrow = LexiconLMDecoder(lm_dir, pieces, beam_size=20, lm_weight=1.0, word_score=0.0, token_beam=4)
    assert narrow(lp, torch.ones(1)) == [["TURN", "OFF", "THE", "LIGHTS"]]
    one = LexiconLMDecoder(lm_dir, pieces, beam_size=20, lm_weight=1.0, word_score=0.0, token_beam=1)
    assert one(lp, torch.ones(1)) != [["TURN", "OFF", "THE", "LIGHTS"]]  # only the wrong letter was tried
    assert tok.decode(lp[0].argmax(-1).unique_consecutive().tolist()) != "TURN OFF THE LIGHTS"


def test_piece_lm_decodes_without_a_lexicon_and_keeps_unknown_words(tmp_path):
    """lm_units piece: an n-gram over the tokenizer's units, lexicon-free search; words split at "\u2581"."""
    rows = [{"ID": str(i), "wrd": " ".join(s)} for i, s in enumerate(SENTENCES * 5)]
    write_csv(str(tmp_path / "labelled.csv"), rows, ["ID", "wrd"])
    tok = train_tokenizer(str(tmp_path / "labelled.csv"), str(tmp_path / "tok"), vocab_size=36, model_type="unigram",
                          alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    lm_dir = build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "lm_piece"), tok, order=6, units="piece")
    assert not os.path.exists(os.path.join(lm_dir, "lexicon.txt"))
    with open(os.path.join(lm_dir, "pieces.arpa")) as f:
        unigrams = {line.split("\t")[1] for line in f.read().split("\\1-grams:")[1].split("\\2-grams:")[0].splitlines()
                    if "\t" in line}
    assert unigrams <= set(tok.vocab_list()) | {"<s>", "</s>", "<unk>"}
    pieces = tok.vocab_list()
    ids = tok.encode("TURN OFF THE LIGHTS")
    frames = [{pieces[i]: 0.9} for i in ids]
    wrong = next(p for p in pieces if p not in (pieces[ids[-1]], "<blank>", "<unk>", "\u2581") and len(p) == 1
                 and p != "S")
    frames[-1] = {pieces[ids[-1]]: 0.45, wrong: 0.5}
    lp = _emissions(tok, [f for frame in frames for f in (frame, {})])  # a blank after each: "O F F" stays
    decoder = LexiconLMDecoder(lm_dir, pieces, beam_size=20, lm_weight=1.0, units="piece")
    assert decoder(lp, torch.ones(1)) == [["TURN", "OFF", "THE", "LIGHTS"]]
    assert decoder.nbest_texts(lp, torch.ones(1))[0][0] == "TURN OFF THE LIGHTS"
    # a word no transcript has, spelt clearly by the acoustics, survives (a lexicon search cannot output it)
    clear = _emissions(tok, [f for i in tok.encode("STOP THE MUSIK") for f in ({pieces[i]: 0.99}, {})])
    assert decoder(clear, torch.ones(1)) == [["STOP", "THE", "MUSIK"]]
    with pytest.raises(ValueError, match="lm_units='phone'"):
        build_lm(str(tmp_path / "labelled.csv"), str(tmp_path / "x"), tok, units="phone")
