"""tune_lm.py scores what the results table scores: evaluation's dev batches, of the checkpoint being tuned.

The table's side comes from rerunning ``train.py`` on a trained tiny teacher
(training is done, so the rerun only evaluates the best checkpoint and
rewrites ``scores.json``). Each test first gives that checkpoint a seeded
random output layer, so the decoders see words and two seeds are two
different checkpoints. Besides the WER, the tests compare what the LM search
is given: on a model whose padded frames are masked, a per-utterance pass
differs from evaluation's padded batches only in the last float digits, which
seldom changes a WER on 12 utterances, but "exactly as the table" means the
same tensors.
"""

import io
import json
import math

import pytest
import torch

from kd_brain.decode.lm import LexiconLMDecoder
from kd_brain.results.selection import DEV_CONDITIONS, dev_score
from tests.conftest import REPO, SHARED, TINY_OVERRIDES, load_recipe, need, overrides_argv, prepare_tiny

SETTING = (1.5, 2.5)  # teacher_bed.yaml's lm_weight, word_score: the setting the table is decoded at


@pytest.fixture(scope="module")
def model(tiny_corpus, tmp_path_factory):
    """A prepared tiny experiment and its 1-epoch teacher, of this module's own (its weights get replaced): (exp, train argv, model file, bytes)."""
    from speechbrain.utils.checkpoints import Checkpointer

    need(SHARED.is_dir(), f"{SHARED} (real noise clips for dev_noisy) not found")
    exp = tmp_path_factory.mktemp("tune_exp")
    prepare_tiny(exp, tiny_corpus)  # both dev conditions
    argv = [str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}", f"--exp_folder={exp}",
            "--noprogressbar"] + overrides_argv(number_of_epochs=1)
    load_recipe("train").main(argv)
    path = Checkpointer(str(exp / "teacher" / "save")).find_checkpoint(min_key="WER").paramfiles["model"]
    return exp, argv, path, path.read_bytes()


@pytest.fixture
def lm_calls(monkeypatch):
    """Every call of the n-gram LM search, as ``[(log_probs, lens)]``."""
    calls, real = [], LexiconLMDecoder.__call__

    def call(self, log_probs, lens):
        calls.append((log_probs.detach().cpu().clone(), lens.detach().cpu().clone()))
        return real(self, log_probs, lens)

    monkeypatch.setattr(LexiconLMDecoder, "__call__", call)
    return calls


def perturb(model, seed):
    """Makes the best checkpoint's model file the trained weights with a seeded random output layer."""
    _, _, path, trained = model
    state = torch.load(io.BytesIO(trained), weights_only=True)
    state["head.weight"] = torch.randn(state["head.weight"].shape, generator=torch.Generator().manual_seed(seed))
    state["head.bias"] = torch.zeros_like(state["head.bias"])
    torch.save(state, path)


def table_dev_wer(model, lm_calls):
    """The results table's unrounded dev WER of the "lm" decoder (rerun of train.py) and the LM calls it made."""
    exp, argv, _, _ = model
    lm_calls.clear()
    load_recipe("train").main(argv)
    scores = json.loads((exp / "scores.json").read_text())["teacher"]
    wers = {}
    for name in DEV_CONDITIONS:
        if name in scores:
            errors = scores[name]["utt_errors"]["lm"]
            wers[name] = 100.0 * sum(e for e, _ in errors.values()) / sum(n for _, n in errors.values())
    assert set(wers) == set(DEV_CONDITIONS), "the tiny experiment must have both dev conditions"
    return dev_score(wers), list(lm_calls)


def tune(model, lm_calls):
    """tune_lm's dev WER at ``SETTING`` and the LM calls it made."""
    lm_calls.clear()
    wer = load_recipe("tune_lm").main([str(model[0] / "teacher"), ",".join(map(str, SETTING))])[SETTING]
    return wer, list(lm_calls)


def assert_decodes_the_tables_dev_batches(model, tune_calls, table_calls):
    """Each of tune_lm's LM calls is one of the table's (dev comes first there, other conditions after), bit
    for bit: dev's padded batches of test_batch_size with their lengths, from the same checkpoint."""
    scores = json.loads((model[0] / "scores.json").read_text())["teacher"]
    assert len(tune_calls) == sum(math.ceil(scores[c]["n_utts"] / TINY_OVERRIDES["test_batch_size"])
                                  for c in DEV_CONDITIONS)
    for log_probs, lens in tune_calls:
        assert any(log_probs.shape == t.shape and torch.equal(log_probs, t) and torch.equal(lens, t_lens)
                   for t, t_lens in table_calls), f"an LM call evaluation never made: {tuple(log_probs.shape)}"


def caches(model):
    return sorted(p.name for p in (model[0] / "teacher").glob("dev_logprobs*"))


def test_grid_decodes_the_tables_dev_batches_and_scores_its_wer(model, lm_calls):
    perturb(model, seed=0)
    table, table_calls = table_dev_wer(model, lm_calls)
    wer, tune_calls = tune(model, lm_calls)
    assert wer == table  # exactly
    assert_decodes_the_tables_dev_batches(model, tune_calls, table_calls)


def test_a_new_checkpoint_is_never_tuned_on_an_old_cache(model, lm_calls):
    perturb(model, seed=1)
    _, old_calls = tune(model, lm_calls)
    old = caches(model)
    assert len(old) == 1 and old[0].startswith("dev_logprobs.")
    perturb(model, seed=2)  # retrained, as far as tune_lm can tell: another model file under the same name
    table, table_calls = table_dev_wer(model, lm_calls)
    assert not any(torch.equal(lp, t) for lp, _ in old_calls for t, _ in table_calls), "the checkpoints must differ"
    wer, tune_calls = tune(model, lm_calls)
    assert wer == table
    assert_decodes_the_tables_dev_batches(model, tune_calls, table_calls)
    assert len(caches(model)) == 1 and caches(model) != old  # the old checkpoint's cache is gone
