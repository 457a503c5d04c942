"""FastDropout: the same regularisation as torch.nn.Dropout, from cheaper random draws."""

import os

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_brain.model.dropout import FastDropout, use_fast_dropout

MODEL_YAML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hparams", "model.yaml")


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_masks_have_rate_p_independent_elements_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    y = FastDropout(p)(x)
    dropped = y == 0
    n = dropped.numel()
    tol = 5 * (p * (1 - p) / n) ** 0.5  # 5 binomial standard deviations
    assert abs(dropped.float().mean().item() - p) < tol
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - p)))
    # the four 16-bit quarters of one 64-bit draw are used as independent uniforms
    flat = dropped.flatten().float()
    for lag in (1, 2, 3, 4):
        both = (flat[:-lag] * flat[lag:]).mean().item()
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5, lag
    # every position of a row is dropped at the same rate (no stuck positions from the int16 view)
    per_col = dropped.float().mean(0)
    assert per_col.min() > p - 0.1 and per_col.max() < p + 0.1


def test_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(1)
    drop = FastDropout(0.2)
    x = torch.rand(64, 33, requires_grad=True)  # numel not a multiple of 4
    y = drop(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() / 0.8)
    drop.eval()
    assert drop(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_same_seed_same_mask_other_seed_other_mask():
    def mask(seed):
        torch.manual_seed(seed)
        return FastDropout(0.1)(torch.ones(10_000)) == 0

    assert torch.equal(mask(3), mask(3))
    assert not torch.equal(mask(3), mask(4))


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_rate_is_refused(p):
    with pytest.raises(ValueError, match="dropout p="):
        FastDropout(p)


def build(fast):
    torch.manual_seed(0)
    with open(MODEL_YAML) as f:
        hp = load_hyperpyyaml(f, {"vocab_size": 40, "d_model": 32, "d_ffn": 64, "fast_dropout": fast})
    return hp["model"]


def test_default_model_swaps_every_dropout_and_keeps_its_checkpoint_format():
    fast, plain = build(True), build(False)
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    n_fast = sum(isinstance(m, FastDropout) for m in fast.modules())
    assert n_fast == sum(type(m) is torch.nn.Dropout for m in plain.modules()) > 0
    assert [m.p for m in fast.modules() if isinstance(m, FastDropout)] == \
        [m.p for m in plain.modules() if type(m) is torch.nn.Dropout]
    # same parameters from the same seed; a checkpoint of either loads into the other
    fast.load_state_dict(plain.state_dict())
    feats, lens = torch.rand(2, 120, 80), torch.tensor([1.0, 0.7])
    assert torch.equal(fast.eval()(feats, lens), plain.eval()(feats, lens))
    # in training the fast model draws no bernoulli masks at all
    fast.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast(feats, lens, aux=True)[0].sum().backward()
    assert not [e.key for e in prof.key_averages() if "bernoulli" in e.key or e.key == "aten::dropout"]


def test_use_fast_dropout_counts_nested_modules():
    net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.2)))
    assert use_fast_dropout(net) == 2
    assert use_fast_dropout(net) == 0
