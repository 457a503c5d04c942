"""Criteria: frame KD (targets topk, tail, sampled; blank weighting), sequence KD, MWER."""

import math

import numpy as np
import pytest
import torch

from kd_brain.kd.losses import MWER, FrameKD, SequenceKD, ctc_per_utt, nbest_weights, pad_token_lists, word_errors
from kd_brain.store import IncompatibleStoreError, SoftLabelStore, SoftLabelWriter, merge_index
from kd_brain.kd.targets import draw_units, log_partition, tail_log_mass
from kd_brain.data.tokenizer import BLANK_ID


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
    manual = sum(float(wn) * ctc_per_utt(s, torch.tensor([1.0]), *pad_token_lists([t])).item() / len(t)
                 for wn, (t, _) in zip(w, nbest))
    assert got == pytest.approx(manual, rel=1e-5)


def test_sequence_kd_is_on_the_scale_of_speechbrain_ctc():
    """One hypothesis per utterance: SequenceKD equals SpeechBrain's CTC loss (mean of NLL per target token)
    on the same targets, so one learning rate means one step size for both criteria."""
    import speechbrain as sb

    torch.manual_seed(0)
    s = torch.randn(2, 12, 6).log_softmax(-1)
    lens = torch.tensor([1.0, 0.75])
    hyps = [[1, 2, 3, 4, 5], [2, 3]]
    tokens, n_tokens = pad_token_lists(hyps)
    ctc = sb.nnet.losses.ctc_loss(s, tokens, lens, n_tokens.float() / tokens.shape[1], blank_index=0)
    got = SequenceKD()(s, lens, [[(h, 0.0)] for h in hyps])
    assert got.item() == pytest.approx(ctc.item(), rel=1e-5)


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


# ---------------------------------------------------------------- frame targets

TEMPS = [1.0, 2.0, 4.0]


def toy_full(F=7, V=6, seed=1):
    """A toy teacher's full T = 1 log-probs [1, F, V] and a student's [1, F, V]."""
    g = torch.Generator().manual_seed(seed)
    teacher = (torch.randn(1, F, V, generator=g) * 2.5).log_softmax(-1)
    student = torch.randn(1, F, V, generator=g).log_softmax(-1)
    return teacher, student


def reference_bucket_kl(t_full, s_full, k, T):
    """By hand, from the FULL teacher distribution: KL over (its top-k units, one bucket for the rest)."""
    total = 0.0
    for t, s in zip(t_full.double().numpy(), s_full.double().numpy()):
        p = np.exp(t / T) / np.exp(t / T).sum()
        q = np.exp(s / T) / np.exp(s / T).sum()
        top = np.argsort(-t, kind="stable")[:k]
        rest = np.setdiff1d(np.arange(len(t)), top)
        pk, qk = np.append(p[top], p[rest].sum()), np.append(q[top], q[rest].sum())
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pk, qk) if a > 0)
    return total / len(t_full)


def tail_kd(T, k=None, **kw):
    kd = FrameKD(temperature=T, k=k, t2_scaling=False, target="tail", **kw)
    kd.check_store({"k": 4, "side_temperatures": TEMPS}, "toy")
    return kd


@pytest.mark.parametrize("T", TEMPS)
@pytest.mark.parametrize("k", [2, 4])
def test_tail_target_is_the_exact_bucket_kl(T, k):
    """Exact inputs (K = 4 of V = 6 kept, k <= K read): the tail loss is the KL over k units + one bucket."""
    t_full, s = toy_full()
    t_logp, idx = t_full.topk(4, dim=-1)
    side = tail_log_mass(t_full, idx, TEMPS)
    got = tail_kd(T, k)(s, torch.tensor([1.0]), idx, t_logp, side=side).item()
    assert got == pytest.approx(reference_bucket_kl(t_full[0], s[0], k, T), rel=1e-5, abs=1e-6)
    # topk pushes the rest to zero: a different number (the bucket is what the ablation changes)
    topk = FrameKD(temperature=T, k=k, t2_scaling=False)(s, torch.tensor([1.0]), idx, t_logp).item()
    assert topk != pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("T", TEMPS)
def test_tail_target_read_from_a_store_is_exact_up_to_quantization(T, tmp_path):
    """The store keeps T = 1 values (quantized) and the side array: any T in side_temperatures reads back the
    full-distribution KL, up to quantization."""
    t_full, s = toy_full(F=40, seed=2)
    with SoftLabelWriter(str(tmp_path), k=4, vocab_size=6, meta={}, side_temperatures=TEMPS) as w:
        w.add("u", t_full[0])
    merge_index(str(tmp_path))
    store = SoftLabelStore(str(tmp_path))
    labels, side = store["u"], store.side("u")
    kd = FrameKD(temperature=T, k=2, t2_scaling=False, target="tail")
    kd.check_store(store.meta, str(tmp_path))
    got = kd(s, torch.tensor([1.0]), labels.indices[None], labels.log_probs[None], side=side[None]).item()
    ref = reference_bucket_kl(t_full[0], s[0], 2, T)
    # Quantization (<= 0.05 nats within 4 nats of the top-1) and side values (1/256 nats) move it by ~0.1% here;
    # the side column of another T moves it by 20-90%, a bucket without ranks k+1..K by 28-210%.
    assert got == pytest.approx(ref, rel=0.01)


def test_tail_target_with_the_student_equal_to_the_teacher_is_zero():
    t_full, _ = toy_full()
    t_logp, idx = t_full.topk(4, dim=-1)
    side = tail_log_mass(t_full, idx, TEMPS)
    assert tail_kd(2.0, 2)(t_full, torch.tensor([1.0]), idx, t_logp, side=side).item() == pytest.approx(0, abs=1e-6)


def test_tail_target_gradient_is_finite_when_k_is_the_vocabulary():
    """k = K = V: an empty bucket, no NaN from its logsumexp over no units."""
    t_full, s = toy_full()
    s = s.clone().requires_grad_(True)
    t_logp, idx = t_full.topk(6, dim=-1)
    kd = FrameKD(temperature=2.0, target="tail")
    kd.check_store({"k": 6, "side_temperatures": [2.0]}, "toy")
    loss = kd(s, torch.tensor([1.0]), idx, t_logp, side=tail_log_mass(t_full, idx, [2.0]))
    loss.backward()
    full_kl = FrameKD(temperature=2.0)(s, torch.tensor([1.0]), idx, t_logp)
    assert loss.item() == pytest.approx(full_kl.item(), rel=1e-5) and torch.isfinite(s.grad).all()


def test_sampled_target_converges_to_the_full_kl_and_p_t(tmp_path):
    """K = 4000 draws on V = 5: the importance-weighted target per unit tends to p_T, the loss to KL(p_T || q_T)."""
    g = torch.Generator().manual_seed(4)
    t_full = torch.tensor([[2.0, 1.0, 0.0, -0.5, -1.0]]).log_softmax(-1).repeat(3, 1)
    s = torch.randn(1, 3, 5, generator=g).log_softmax(-1)
    with SoftLabelWriter(str(tmp_path), k=4000, vocab_size=5, meta={}, target="sampled", side_temperatures=[1.0, 2.0],
                         sample_seed=0) as w:
        w.add("u", t_full)
    merge_index(str(tmp_path))
    store = SoftLabelStore(str(tmp_path))
    labels, side = store["u"], store.side("u")
    p1 = t_full[0].exp()
    for col, T in enumerate([1.0, 2.0]):
        p_t = torch.softmax(t_full[0] / T, -1)
        w_j = torch.exp(labels.log_probs * (1 / T - 1) - side[:, col : col + 1]) / 4000
        est = torch.zeros(3, 5).scatter_add_(1, labels.indices, w_j)
        sigma = p_t * torch.sqrt((1 - p1) / (4000 * p1))  # of a binomial count, times the unit's weight
        assert ((est - p_t).abs() <= 4 * sigma + 0.03 * p_t).all(), (T, est, p_t)  # 0.03: quantized log-probs
        kd = FrameKD(temperature=T, k=4000, t2_scaling=False, target="sampled")
        kd.check_store(store.meta, str(tmp_path))
        got = kd(s, torch.tensor([1.0]), labels.indices[None], labels.log_probs[None], side=side[None]).item()
        q_t = torch.softmax(s[0] / T, -1)
        exact = (p_t * (p_t.log() - q_t.log())).sum(-1).mean().item()
        assert got == pytest.approx(exact, abs=0.03), T


def test_sampled_target_at_t1_is_the_empirical_distribution():
    """At T = 1 every draw weighs 1/K: the loss is the mean of log p - log q over the draws."""
    t_logp = torch.log(torch.tensor([[[0.6, 0.6, 0.3, 0.1]]]))
    idx = torch.tensor([[[0, 0, 1, 2]]])
    s = torch.randn(1, 1, 3).log_softmax(-1)
    kd = FrameKD(temperature=1.0, target="sampled", t2_scaling=False)
    kd.check_store({"k": 4, "target": "sampled", "side_temperatures": [1.0]}, "toy")
    got = kd(s, torch.tensor([1.0]), idx, t_logp, side=torch.zeros(1, 1, 1)).item()
    assert got == pytest.approx((t_logp[0, 0] - s[0, 0, idx[0, 0]]).mean().item(), rel=1e-6)


def test_target_settings_the_store_cannot_serve_are_refused():
    plain = {"k": 4}
    with pytest.raises(IncompatibleStoreError, match="target=tail needs a side array, and exp/sl has none"):
        FrameKD(target="tail").check_store(plain, "exp/sl")
    with pytest.raises(IncompatibleStoreError, match="target=sampled but exp/sl is a topk store"):
        FrameKD(target="sampled").check_store(plain, "exp/sl")
    sampled = {"k": 40, "target": "sampled", "side_temperatures": [1.0, 2.0, 4.0]}
    with pytest.raises(IncompatibleStoreError, match="target=topk but exp/ss is a sampled store"):
        FrameKD().check_store(sampled, "exp/ss")
    with pytest.raises(IncompatibleStoreError, match=r"temperature=3.0 is not in exp/ss's side_temperatures \[1.0"):
        FrameKD(temperature=3.0, target="sampled").check_store(sampled, "exp/ss")
    with pytest.raises(IncompatibleStoreError, match="target=sampled reads all K draws.*k=20 but exp/ss holds K=40"):
        FrameKD(k=20, target="sampled").check_store(sampled, "exp/ss")
    FrameKD(k=40, target="sampled").check_store(sampled, "exp/ss")
    FrameKD(target="topk").check_store(dict(plain, side_temperatures=[1.0]), "exp/sl")  # topk ignores the side array
    s, idx, t_logp = toy(k=3)
    with pytest.raises(ValueError, match="target=sampled reads all K draws: k=2 but the store holds K=3"):
        FrameKD(k=2, target="sampled")(s, torch.tensor([1.0]), idx, t_logp, side=torch.zeros(1, 5, 1))
    with pytest.raises(ValueError, match="target=tail needs the store's side array"):
        FrameKD(target="tail")(s, torch.tensor([1.0]), idx, t_logp)
    with pytest.raises(ValueError, match="target='soft'"):
        FrameKD(target="soft")


def blank_toy(F=12, V=6, seed=5):
    """Teacher frames of which some are blank-dominated (p_blank >= 0.9), one at 0.8 (not), the rest speech."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, F, V, generator=g)
    t[0, ::3, BLANK_ID] += 8.0  # p_blank ~ 0.99
    t[0, 1, :] = torch.log(torch.tensor([0.8, 0.1, 0.05, 0.03, 0.01, 0.01]))  # blank top-1, below the threshold
    t_full = t.log_softmax(-1)
    blank = (t_full[0].argmax(-1) == BLANK_ID) & (t_full[0, :, BLANK_ID].exp() >= 0.9)
    assert 0 < int(blank.sum()) < F and not blank[1]
    return t_full, torch.randn(1, F, V, generator=g).log_softmax(-1), blank


@pytest.mark.parametrize("target", ["topk", "tail", "sampled"])
def test_blank_weight_zero_drops_exactly_the_blank_frames(target):
    t_full, s, blank = blank_toy()
    if target == "sampled":
        idx, t_logp = draw_units(t_full[0], 8, 0, "u")
        idx, t_logp, side = idx[None], t_logp[None], log_partition(t_full, [2.0])
    else:
        t_logp, idx = t_full.topk(3, dim=-1)
        side = tail_log_mass(t_full, idx, [2.0])
    meta = {"k": idx.shape[-1], "side_temperatures": [2.0], "target": "sampled" if target == "sampled" else "topk"}

    def loss(frames, **kw):
        kd = FrameKD(temperature=2.0, target=target, **kw)
        kd.check_store(meta, "toy")
        return kd(s[:, frames], torch.tensor([1.0]), idx[:, frames], t_logp[:, frames], side=side[:, frames])

    every = torch.arange(len(blank))
    assert torch.equal(loss(every, blank_weight=1.0), loss(every))  # the default is today's loss
    dropped = loss(every, blank_weight=0.0)
    kept_only = loss(every[~blank])
    assert dropped.item() == pytest.approx(kept_only.item(), rel=1e-6)
    assert dropped.item() != pytest.approx(loss(every).item(), rel=1e-3)
    # a weight in between: sum w * kl / sum w over the frames
    half = loss(every, blank_weight=0.5).item()
    n_b, n_s = int(blank.sum()), int((~blank).sum())
    assert half == pytest.approx((0.5 * n_b * loss(every[blank]).item() + n_s * kept_only.item()) / (0.5 * n_b + n_s),
                                 rel=1e-5)


def test_blank_weight_respects_padding():
    t_full, s, blank = blank_toy()
    t_logp, idx = t_full.topk(3, dim=-1)
    kd = FrameKD(temperature=2.0, blank_weight=0.0)
    n = 8  # frames 8.. are padding: garbage there changes nothing
    garbage = s.clone()
    garbage[:, n:] = torch.randn(1, 12 - n, 6).log_softmax(-1) * 30
    padded = kd(garbage, torch.tensor([n / 12]), idx, t_logp)
    keep = torch.arange(n)[~blank[:n]]
    assert padded.item() == pytest.approx(FrameKD(temperature=2.0)(s[:, keep], torch.tensor([1.0]), idx[:, keep],
                                                                   t_logp[:, keep]).item(), rel=1e-6)
