"""Distillation and sequence criteria for CTC models.

* ``FrameKD``: per-frame KL from the teacher's tempered top-k distribution to
  the student's full softmax (the paper's frame-level criterion).
* ``SequenceKD``: CTC loss towards each of the teacher's N-best
  hypotheses, weighted by the teacher's normalised hypothesis scores.
* ``MWER``: minimum word error rate over an N-best list, interpolated with CTC.

All three take student log-probabilities ``[B, T, V]`` and relative lengths.
The Brain looks a criterion up by name (``criterion: frame`` in YAML).
"""

import torch
import speechbrain as sb

from kd_brain.tokenizer import BLANK_ID


def length_mask(lens, max_len):
    """Boolean [B, T] mask of valid frames from relative lengths."""
    abs_len = torch.round(lens * max_len).long()
    return torch.arange(max_len, device=lens.device)[None, :] < abs_len[:, None]


def tempered_topk(logp, temperature):
    """Teacher's top-k log-probs [.., k] -> tempered, renormalised probabilities.

    Equal to softmax(logits / T) restricted to the top-k units and
    renormalised, because log-probs and logits differ by a per-frame constant.

    Example
    -------
    >>> p = tempered_topk(torch.log(torch.tensor([[0.6, 0.2]])), 1.0)
    >>> [round(x, 2) for x in p[0].tolist()]
    [0.75, 0.25]
    """
    return torch.softmax(logp / temperature, dim=-1)


class FrameKD(torch.nn.Module):
    """Frame-level KL(teacher_top-k || student) at temperature T.

    Mass outside the teacher's top-k: the teacher puts zero there and the
    student's *full* softmax is used, so every unit the teacher dropped is
    pushed down (cross-entropy against a distribution supported on the top-k,
    as in the paper). Renormalising the student over the top-k instead would
    leave that mass unconstrained. The loss is the mean over valid frames of
    ``sum_k p_k (log p_k - log q_k)``, optionally times T^2 (Hinton et al.) so
    gradient magnitudes do not shrink as T grows.

    Arguments
    ---------
    temperature : float
        Applied to teacher and student alike.
    k : int, optional
        Use only the first k stored outputs (k <= stored k); None uses all.
    t2_scaling : bool
        Multiply by T^2.

    Example
    -------
    >>> kd = FrameKD(temperature=2.0)
    >>> idx = torch.tensor([[[0, 1], [2, 0]]])
    >>> t_logp = torch.log(torch.tensor([[[0.7, 0.2], [0.9, 0.05]]]))
    >>> s_logp = torch.randn(1, 2, 3).log_softmax(-1)
    >>> kd(s_logp, torch.tensor([1.0]), idx, t_logp).item() > 0
    True
    """

    def __init__(self, temperature=2.0, k=None, t2_scaling=True):
        super().__init__()
        self.temperature = temperature
        self.k = k
        self.t2_scaling = t2_scaling

    def forward(self, student_logp, lens, teacher_idx, teacher_logp):
        if self.k is not None:
            if self.k > teacher_idx.shape[-1]:
                raise ValueError(f"k={self.k} but the store keeps only {teacher_idx.shape[-1]} outputs per frame")
            teacher_idx, teacher_logp = teacher_idx[..., : self.k], teacher_logp[..., : self.k]
        T = self.temperature
        p = tempered_topk(teacher_logp, T)
        log_q = torch.log_softmax(student_logp / T, dim=-1).gather(-1, teacher_idx)
        per_frame = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)
        mask = length_mask(lens, student_logp.shape[1]).to(per_frame.dtype)
        loss = (per_frame * mask).sum() / mask.sum().clamp_min(1.0)
        return loss * T * T if self.t2_scaling else loss


def ctc_per_utt(log_probs, lens, targets, target_lens):
    """CTC negative log-likelihood per utterance (no reduction), target lengths absolute."""
    abs_in = torch.round(lens * log_probs.shape[1]).int()
    return torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, abs_in, target_lens.int(),
        blank=BLANK_ID, reduction="none", zero_infinity=True)


def pad_token_lists(seqs, device=None):
    """List of id lists -> (padded LongTensor [N, L], lengths [N])."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    out = torch.zeros(len(seqs), max(1, int(lens.max()) if len(seqs) else 1), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lens


def nbest_weights(scores, temperature=1.0):
    """Teacher hypothesis scores (log domain) -> weights that sum to one.

    Example
    -------
    >>> nbest_weights(torch.tensor([-1.0, -2.0, -3.0])).sum().item()
    1.0
    """
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float32) / temperature, dim=-1)


class SequenceKD(torch.nn.Module):
    """Sequence-level distillation: sum_n w_n * CTC(student, teacher_hyp_n).

    ``w`` is the softmax of the teacher's N-best scores (``score_temperature``
    flattens or sharpens it). Hypotheses with no tokens are skipped.

    Example
    -------
    >>> kd = SequenceKD()
    >>> s = torch.randn(1, 6, 4).log_softmax(-1)
    >>> kd(s, torch.tensor([1.0]), [[([1, 2], -0.5), ([1, 3], -1.5)]]).item() > 0
    True
    """

    def __init__(self, score_temperature=1.0):
        super().__init__()
        self.score_temperature = score_temperature

    def forward(self, student_logp, lens, nbests):
        """nbests: per utterance, a list of (token ids, teacher log score)."""
        rows, targets, weights = [], [], []
        for b, nbest in enumerate(nbests):
            nbest = [(t, s) for t, s in nbest if len(t) > 0]
            if not nbest:
                continue
            w = nbest_weights([s for _, s in nbest], self.score_temperature)
            for (tokens, _), wn in zip(nbest, w):
                rows.append(b)
                targets.append(list(tokens))
                weights.append(wn)
        if not rows:
            return student_logp.sum() * 0.0
        idx = torch.tensor(rows, device=student_logp.device)
        tgt, tgt_lens = pad_token_lists(targets, student_logp.device)
        nll = ctc_per_utt(student_logp[idx], lens[idx], tgt, tgt_lens)
        return (torch.stack(weights).to(nll.device) * nll).sum() / len(nbests)


def word_errors(ref_words, hyp_words):
    """Levenshtein distance between word lists."""
    prev = list(range(len(hyp_words) + 1))
    for i, r in enumerate(ref_words, 1):
        cur = [i] + [0] * len(hyp_words)
        for j, h in enumerate(hyp_words, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


class MWER(torch.nn.Module):
    """Minimum word error rate over N-best lists, interpolated with CTC.

    For each utterance the N-best hypotheses' log-likelihoods under the
    model (computed with CTC) are renormalised over the list; the loss is the
    expected number of word errors relative to the list's mean error
    (a baseline that lowers the variance), plus ``ctc_weight`` x CTC on the
    reference for stability.

    Example
    -------
    >>> mwer = MWER(ctc_weight=0.0)
    >>> s = torch.randn(1, 6, 4, requires_grad=True)
    >>> loss = mwer(s.log_softmax(-1), torch.tensor([1.0]), [[[1, 2], [1, 3]]], [[2, 0]],
    ...             torch.tensor([[1, 2]]), torch.tensor([1.0]))
    >>> loss.backward(); s.grad.abs().sum().item() > 0
    True
    """

    def __init__(self, ctc_weight=0.1):
        super().__init__()
        self.ctc_weight = ctc_weight

    def forward(self, log_probs, lens, hyp_tokens, hyp_errors, ref_tokens, ref_lens):
        """hyp_tokens: per utterance a list of token-id lists; hyp_errors: word errors of each;
        ref_tokens / ref_lens: padded references and relative lengths (as in ``batch.tokens``)."""
        risks = []
        for b, (hyps, errs) in enumerate(zip(hyp_tokens, hyp_errors)):
            if len(hyps) < 2:  # a single hypothesis carries no preference
                continue
            tgt, tgt_lens = pad_token_lists(hyps, log_probs.device)
            n = len(hyps)
            ll = -ctc_per_utt(log_probs[b:b + 1].expand(n, -1, -1), lens[b:b + 1].expand(n), tgt, tgt_lens)
            post = torch.softmax(ll, dim=0)
            e = torch.as_tensor(errs, dtype=post.dtype, device=post.device)
            risks.append((post * (e - e.mean())).sum())
        risk = torch.stack(risks).mean() if risks else log_probs.sum() * 0.0
        if self.ctc_weight > 0:
            ctc = sb.nnet.losses.ctc_loss(log_probs, ref_tokens, lens, ref_lens, blank_index=BLANK_ID)
            return risk + self.ctc_weight * ctc
        return risk
