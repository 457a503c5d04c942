"""Criteria: frame KD, sequence KD, MWER."""

import math

import numpy as np
import pytest
import torch

from kd_brain.losses import MWER, FrameKD, SequenceKD, ctc_per_utt, nbest_weights, pad_token_lists, word_errors


def reference_frame_kd(s_logp, idx, t_logp, T, n_valid):
    """Plain-loop KL(p_topk || softmax(s/T)) averaged over valid frames."""
    total = 0.0
    for t in range(n_valid):
        p = np.exp(t_logp[t] / T) / np.exp(t_logp[t] / T).sum()
        z = s_logp[t] / T
        log_q = z - np.log(np.exp(z).sum())
        total += sum(p[j] * (math.log(p[j]) - log_q[idx[t, j]]) for j in range(len(p)))
    return total / n_valid


def toy(T=5, V=7, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, T, V, generator=g).log_softmax(-1)
    t_full = torch.randn(1, T, V, generator=g).mul(3).log_softmax(-1)
    t_logp, idx = t_full.topk(k, dim=-1)
    return s, idx, t_logp


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_frame_kd_equals_reference(T):
    s, idx, t_logp = toy()
    got = FrameKD(temperature=T, t2_scaling=False)(s, torch.tensor([1.0]), idx, t_logp).item()
    ref = reference_frame_kd(s[0].numpy(), idx[0].numpy(), t_logp[0].numpy(), T, 5)
    assert got == pytest.approx(ref, rel=1e-5)
    scaled = FrameKD(temperature=T, t2_scaling=True)(s, torch.tensor([1.0]), idx, t_logp).item()
    assert scaled == pytest.approx(ref * T * T, rel=1e-5)


def test_frame_kd_zero_when_student_is_tempered_teacher():
    _, idx, t_logp = toy()
    T = 2.0
    s = torch.full((1, 5, 7), -1e4)
    s.scatter_(-1, idx, T * torch.log_softmax(t_logp / T, -1))  # softmax(s / T) == tempered top-k teacher
    assert FrameKD(temperature=T)(s.log_softmax(-1), torch.tensor([1.0]), idx, t_logp).item() == pytest.approx(0, abs=1e-5)


def test_frame_kd_masks_padding():
    s, idx, t_logp = toy()
    kd = FrameKD(temperature=2.0)
    short = kd(s[:, :3], torch.tensor([1.0]), idx[:, :3], t_logp[:, :3])
    garbage = s.clone()
    garbage[:, 3:] = torch.randn(1, 2, 7).log_softmax(-1) * 50
    padded = kd(garbage, torch.tensor([0.6]), idx, t_logp)  # 3 of 5 frames valid
    assert padded.item() == pytest.approx(short.item(), rel=1e-6)


def test_frame_kd_k_larger_than_store_refused():
    s, idx, t_logp = toy(k=3)
    with pytest.raises(ValueError, match="k=5 but the store keeps only 3"):
        FrameKD(k=5)(s, torch.tensor([1.0]), idx, t_logp)


def test_sequence_kd_weights_sum_to_one_and_match_manual():
    w = nbest_weights([-0.1, -2.0, -7.5])
    assert w.sum().item() == pytest.approx(1.0) and bool((w[:-1] >= w[1:]).all())
    s = torch.randn(1, 8, 5).log_softmax(-1)
    nbest = [([1, 2, 3], -0.1), ([1, 2], -2.0), ([4], -7.5)]
    got = SequenceKD()(s, torch.tensor([1.0]), [nbest]).item()
    manual = sum(float(wn) * ctc_per_utt(s, torch.tensor([1.0]), *pad_token_lists([t])).item()
                 for wn, (t, _) in zip(w, nbest))
    assert got == pytest.approx(manual, rel=1e-5)


def test_mwer_prefers_lower_error_hypothesis():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 4, requires_grad=True)
    hyps, errs = [[[1, 2], [3, 2]]], [[0, 2]]  # hypothesis [1, 2] has fewer word errors
    ref, ref_len = torch.tensor([[1, 2]]), torch.tensor([1.0])
    mwer = MWER(ctc_weight=0.0)
    loss = mwer(logits.log_softmax(-1), torch.tensor([1.0]), hyps, errs, ref, ref_len)
    loss.backward()
    # Raising unit 1 (only in the better hypothesis) lowers the loss; raising unit 3 raises it.
    assert logits.grad[0, :, 1].sum() < 0 < logits.grad[0, :, 3].sum()
    better = logits.detach().clone()
    better[0, :2, 1] += 2.0
    assert mwer(better.log_softmax(-1), torch.tensor([1.0]), hyps, errs, ref, ref_len) < loss


def test_word_errors():
    assert word_errors("A B C".split(), "A X C D".split()) == 2
    assert word_errors([], ["A"]) == 1
