"""Decoding and WER: greedy and prefix beam search, ErrorRateStats == jiwer."""

import json
import os
import types

import jiwer
import pytest
import speechbrain as sb
import torch
from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

from kd_brain.brains.evaluate import EvalBrain, update_results
from kd_brain.decode.lm import LexiconLMDecoder, build_lm
from kd_brain.data.tokenizer import train_tokenizer
from kd_brain.data.prepare import write_csv


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    sentences = ["PLAY SOME MUSIC", "SET A TIMER FOR TEN MINUTES", "TURN ON THE KITCHEN LIGHTS"]
    rows = [{"ID": str(i), "wrd": sentences[i % 3]} for i in range(60)]
    write_csv(str(d / "lab.csv"), rows, ["ID", "wrd"])
    return train_tokenizer(str(d / "lab.csv"), str(d), vocab_size=30, model_type="char")


def tokenizer_csv(tokenizer):
    """The labelled manifest the fixture's tokenizer was trained on."""
    return os.path.join(os.path.dirname(tokenizer.model_path), "lab.csv")


def peaky_log_probs(token_ids, vocab, frames_per_token=3):
    """Log-probs whose best path spells ``token_ids`` (blank between repeats)."""
    path = []
    for t in token_ids:
        path += [t] + [0] * (frames_per_token - 1)
    lp = torch.full((len(path), vocab), -8.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = -0.01
    return lp.log_softmax(-1)


def score_toy(tokenizer, tmp_path, lm_decoder=None):
    """EvalBrain's decoding/scoring half on three utterances: 1 deletion + 1 substitution in 14 words."""
    refs = ["PLAY SOME MUSIC", "SET A TIMER FOR TEN MINUTES", "TURN ON THE KITCHEN LIGHTS"]
    hyps = ["PLAY SOME MUSIC", "SET A TIMER TEN MINUTES", "TURN ON THE KITCHEN LIGHT"]  # 1 del + 1 sub
    lps = [peaky_log_probs(tokenizer.encode(h), tokenizer.vocab_size) for h in hyps]
    T = max(x.shape[0] for x in lps)
    batch_lp = torch.stack([torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[0]), value=0.0) for x in lps])
    lens = torch.tensor([x.shape[0] / T for x in lps])
    brain = EvalBrain.__new__(EvalBrain)  # only the decoding/scoring half is exercised here
    brain.hparams, brain.device, brain.condition, brain.results = types.SimpleNamespace(output_folder=str(tmp_path)), \
        "cpu", "toy", {}
    brain.tokenizer, brain.lm_decoder = tokenizer, lm_decoder
    brain.beam_searcher = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(), beam_size=4)
    brain.on_stage_start(sb.Stage.TEST)
    batch = types.SimpleNamespace(id=["a", "b", "c"], wrd=refs)
    brain.compute_objectives((batch_lp, lens), batch, sb.Stage.TEST)
    brain.on_stage_end(sb.Stage.TEST, 0.0)
    return brain.results["toy"], refs, hyps


def test_wer_matches_jiwer_and_reference(tokenizer, tmp_path):
    results, refs, hyps = score_toy(tokenizer, tmp_path)
    assert "lm" not in results  # no language model configured
    expected = 100 * 2 / 14
    assert results["greedy"] == pytest.approx(expected, abs=0.01)
    assert results["beam"] == pytest.approx(expected, abs=0.01)
    assert 100 * jiwer.wer(refs, hyps) == pytest.approx(expected)
    text = (tmp_path / "wer_toy_beam.txt").read_text()
    assert "%WER 14.29" in text and "LIGHTS" in text
    # per-utterance counts for the bootstrap: [word errors, reference words]
    assert results["utt_errors"]["beam"] == {"a": [0, 3], "b": [1, 6], "c": [1, 5]}


def test_lm_decoder_is_scored_and_fixes_an_out_of_lexicon_word(tokenizer, tmp_path):
    lm_dir = build_lm(tokenizer_csv(tokenizer), str(tmp_path / "lm"), tokenizer)
    decoder = LexiconLMDecoder(lm_dir, tokenizer.vocab_list(), beam_size=20, lm_weight=1.0)
    results, _, _ = score_toy(tokenizer, tmp_path, decoder)
    # "LIGHT" is not in the lexicon: the LM decoder says "LIGHTS"; the missing "FOR" stays missing
    assert results["lm"] == pytest.approx(100 / 14, abs=0.01)
    assert results["beam"] == pytest.approx(200 / 14, abs=0.01)
    assert "%WER 7.14" in (tmp_path / "wer_toy_lm.txt").read_text()


def test_results_table_merges_models(tmp_path):
    update_results(tmp_path, "teacher", {"clean": {"greedy": 20.0, "beam": 19.0, "n_utts": 5}})
    md = update_results(tmp_path, "student", {"clean": {"greedy": 15.0, "beam": 14.5, "n_utts": 5},
                                              "noisy_sim": {"greedy": 30.0, "beam": 29.0, "n_utts": 5}})
    lines = md.splitlines()
    assert lines[0] == "| model | decoder | clean (n=5) | noisy_sim (n=5) |"
    assert "| teacher | beam | 19.00 | - |" in lines and "| student | beam | 14.50 | 29.00 |" in lines
    assert (tmp_path / "results.md").read_text() == md


def test_headline_wer_is_the_lm_decoder_when_there_is_one(tmp_path):
    update_results(tmp_path, "teacher", {"clean": {"greedy": 20.0, "beam": 19.0, "n_utts": 5}})
    md = update_results(tmp_path, "student", {"clean": {"greedy": 15.0, "beam": 14.5, "lm": 9.0, "n_utts": 5}})
    assert json.loads((tmp_path / "results.json").read_text())["wer"] == {"teacher": {"clean": 19.0},
                                                                   "student": {"clean": 9.0}}
    lines = md.splitlines()
    assert lines.index("| student | lm | 9.00 |") < lines.index("| student | beam | 14.50 |")
    assert not any(line.startswith("| teacher | lm") for line in lines)
