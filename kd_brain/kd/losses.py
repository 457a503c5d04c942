"""Distillation and sequence criteria for CTC models.

* ``FrameKD``: per-frame KL from a target built from the teacher's stored
  frame to the student's full softmax at temperature T (``target``):

  - ``topk`` (the paper): the k best units, tempered and renormalised; the
    student's mass elsewhere is pushed to zero;
  - ``tail``: the k units at their tempered probability over all V units,
    plus one bucket holding the teacher's remaining mass (ranks k+1..K of
    the store and the tail beyond K from the store's side array), matched
    to the student's mass outside the k units: exact KL over k + 1 outcomes;
  - ``sampled`` (Anshumann et al. 2025, random-sampling KD): the store's K
    draws with replacement from the teacher's T = 1 softmax, weighted
    ``w_j = p_j^(1/T - 1) / (K Z_T)`` (1/K at T = 1), so that
    ``sum_j w_j (log p_T(i_j) - log q_T(i_j))`` is an unbiased estimate of
    the full KL(p_T || q_T).

  Frames the teacher calls blank with T = 1 probability >= ``blank_threshold``
  weigh ``blank_weight`` in the per-frame mean (Hilmes et al. 2025; 0 drops
  them), with any target.
* ``SequenceKD``: CTC loss towards each of the teacher's N-best
  hypotheses, weighted by the teacher's normalised hypothesis scores.
* ``MWER``: minimum word error rate over an N-best list, interpolated with CTC.

All three take student log-probabilities ``[B, T, V]`` and relative lengths,
and compute in float32 whatever their dtype (``--precision=bf16|fp16``).
The Brain looks a criterion up by name (``criterion: frame`` in YAML).
"""

import torch
import speechbrain as sb

from kd_brain.store.files import IncompatibleStoreError
from kd_brain.kd.targets import TARGETS, side_column, temper
from kd_brain.data.tokenizer import BLANK_ID


def length_mask(lens, max_len):
    """Boolean [B, T] mask of valid frames from relative lengths."""
    abs_len = torch.round(lens * max_len).long()
    return torch.arange(max_len, device=lens.device)[None, :] < abs_len[:, None]


def frame_entropy(log_probs, lens):
    """Mean entropy (nats) of the valid frames' posteriors: subtracted, times ``entropy_weight``, from a
    teacher's CTC loss it is a confidence penalty (Pereyra et al. 2017; for CTC, Liu et al. 2018), which
    keeps the posteriors from collapsing onto one unit per frame.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 1e-9], [0.5, 0.5]]]))
    >>> round(float(frame_entropy(lp, torch.tensor([2 / 3]))), 4)  # ln 2 and 0 over two frames
    0.3466
    """
    mask = length_mask(lens, log_probs.shape[1])
    ent = -(log_probs.exp() * log_probs).sum(dim=-1)
    return (ent * mask).sum() / mask.sum().clamp_min(1)


class FrameKD(torch.nn.Module):
    """Frame-level KL(teacher target || student) at temperature T (see the module docstring).

    ``topk``: mass outside the teacher's top-k gets zero target and the
    student's *full* softmax is used, so every unit the teacher dropped is
    pushed down (cross-entropy against a distribution supported on the top-k,
    as in the paper). Renormalising the student over the top-k instead would
    leave that mass unconstrained. ``tail`` keeps that mass in one bucket
    instead; ``sampled`` estimates the full KL from the stored draws. The
    loss is the mean over valid frames of the per-frame KL (weighted:
    ``sum w * kl / sum w`` with ``w`` = ``blank_weight`` on blank-dominated
    frames, 1 elsewhere), optionally times T^2 (Hinton et al.) so gradient
    magnitudes do not shrink as T grows. ``tail`` and ``sampled`` read the
    store's side array at T: call :meth:`check_store` first (train.py does).

    Arguments
    ---------
    temperature : float
        Applied to teacher and student alike.
    k : int, optional
        Use only the first k stored outputs (k <= stored k); None uses all.
        ``sampled`` reads all K draws (the first k of a sorted sample are
        a biased sample): k must be None or K.
    t2_scaling : bool
        Multiply by T^2.
    target : str
        ``topk``, ``tail`` or ``sampled``.
    blank_weight : float
        Weight of frames whose teacher top-1 is the blank with T = 1
        probability >= ``blank_threshold`` (1: every frame alike; 0: dropped).
    blank_threshold : float
        See ``blank_weight``.

    Example
    -------
    >>> kd = FrameKD(temperature=2.0)
    >>> idx = torch.tensor([[[0, 1], [2, 0]]])
    >>> t_logp = torch.log(torch.tensor([[[0.7, 0.2], [0.9, 0.05]]]))
    >>> s_logp = torch.randn(1, 2, 3).log_softmax(-1)
    >>> kd(s_logp, torch.tensor([1.0]), idx, t_logp).item() > 0
    True
    >>> tail = FrameKD(temperature=2.0, target="tail")
    >>> tail.check_store({"k": 2, "side_temperatures": [2.0]}, "exp/softlabels")
    >>> side = torch.log(torch.tensor([[[0.1], [0.05]]])) / 2  # the one unit beyond the top-2
    >>> tail(s_logp, torch.tensor([1.0]), idx, t_logp, side=side).item() > 0
    True
    """

    def __init__(self, temperature=2.0, k=None, t2_scaling=True, target="topk", blank_weight=1.0,
                 blank_threshold=0.9):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: choose one of {list(TARGETS)}")
        if not blank_weight >= 0:
            raise ValueError(f"blank_weight must be >= 0, got {blank_weight}")
        self.temperature = temperature
        self.k = k
        self.t2_scaling = t2_scaling
        self.target = target
        self.blank_weight, self.blank_threshold = float(blank_weight), float(blank_threshold)
        self.side_column = None  # set by check_store

    def check_store(self, meta, store_dir):
        """Checks that a store serves this target; remembers its side-array column at this T.

        Arguments
        ---------
        meta : dict
            The store's metadata (``SoftLabelStore.meta``).
        store_dir : str
            The store directory (named in errors).
        """
        stored = meta.get("target", "topk")
        if stored != ("sampled" if self.target == "sampled" else "topk"):
            raise IncompatibleStoreError(
                f"target={self.target} but {store_dir} is a {stored} store: "
                + ("point store_dir at the extraction's sampled_folder" if self.target == "sampled"
                   else "target=sampled reads it; tail and topk read a top-k store"))
        if self.k is not None and self.k > meta["k"]:
            raise IncompatibleStoreError(f"k={self.k} but {store_dir} keeps only {meta['k']} outputs per frame")
        if self.target == "sampled" and self.k not in (None, meta["k"]):
            raise IncompatibleStoreError(f"target=sampled reads all K draws (the first k of a sorted sample are "
                                         f"biased): k={self.k} but {store_dir} holds K={meta['k']}; set k={meta['k']}")
        if self.target != "topk":
            if not meta.get("side_temperatures"):
                raise IncompatibleStoreError(f"target={self.target} needs a side array, and {store_dir} has none: "
                                             "extract with side_temperatures set")
            self.side_column = side_column(meta, self.temperature, store_dir)

    def frame_weights(self, lens, teacher_idx, teacher_logp):
        """Each frame's weight in the loss's mean [B, F]: 0 on padding, ``blank_weight`` on
        blank-dominated frames, else 1 (their sum is what the loss averages over, e.g. under DDP).

        Example
        -------
        >>> idx = torch.tensor([[[0, 1], [2, 0], [0, 1]]])
        >>> logp = torch.log(torch.tensor([[[0.95, 0.05], [0.6, 0.4], [0.5, 0.5]]]))
        >>> FrameKD(blank_weight=0.5).frame_weights(torch.tensor([1.0]), idx, logp)
        tensor([[0.5000, 1.0000, 1.0000]])
        """
        weight = length_mask(lens, teacher_idx.shape[1]).float()
        if self.blank_weight != 1.0:  # else the weights are the mask itself: the loss is unchanged
            # the stored list is sorted, so a blank above any threshold >= 0.5 is its first entry (drawn, if sampled)
            blank = (teacher_idx[..., 0] == BLANK_ID) & (teacher_logp[..., 0].exp() >= self.blank_threshold)
            weight = weight * torch.where(blank, self.blank_weight, 1.0)
        return weight

    def forward(self, student_logp, lens, teacher_idx, teacher_logp, side=None):
        """Student log-probs [B, F, V], relative lengths [B], the stored [B, F, K] indices and
        T = 1 log-probs, and (``tail``, ``sampled``) the side array [B, F, n_T]."""
        K = teacher_idx.shape[-1]
        if self.k is not None:
            if self.k > K:
                raise ValueError(f"k={self.k} but the store keeps only {K} outputs per frame")
            if self.target == "sampled" and self.k != K:
                raise ValueError(f"target=sampled reads all K draws: k={self.k} but the store holds K={K}")
        T = self.temperature
        # the KL in float32 under mixed precision too (bf16's 7 mantissa bits would swamp the small
        # per-frame KLs); .float() of a float32 tensor is the tensor itself, so fp32 runs are unchanged
        student_logp, teacher_logp = student_logp.float(), teacher_logp.float()
        if self.target == "topk":
            if self.k is not None:
                teacher_idx, teacher_logp = teacher_idx[..., : self.k], teacher_logp[..., : self.k]
            p = temper(teacher_logp, T)
            log_q = torch.log_softmax(student_logp / T, dim=-1).gather(-1, teacher_idx)
            per_frame = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)
        else:
            if side is None or self.side_column is None:
                raise ValueError(f"target={self.target} needs the store's side array (batch.kd_side) and "
                                 "check_store() on the store first")
            s = side[..., self.side_column].to(student_logp.dtype)
            fn = tail_kl if self.target == "tail" else sampled_kl
            per_frame = fn(student_logp, teacher_idx, teacher_logp, s, T, self.k or K)
        weight = self.frame_weights(lens, teacher_idx, teacher_logp).to(per_frame.dtype)
        # the weight sum is a frame count when blank_weight = 1; else 0 only if every weight is
        denom = weight.sum().clamp_min(1.0 if self.blank_weight == 1.0 else 1e-12)
        loss = (per_frame * weight).sum() / denom
        return loss * T * T if self.t2_scaling else loss


def tail_kl(student_logp, idx, logp, tail, T, k):
    """Per-frame KL over (the first k stored units, one bucket for the rest of the vocabulary).

    The teacher's tempered distribution over all V units is read from the
    stored top-K (T = 1 log-probs) and the tempered mass beyond them,
    ``tail = log sum_{j not in top-K} p_j^(1/T)``: p_T(i) = p_i^(1/T) / Z_T
    with Z_T = sum_{i <= K} p_i^(1/T) + exp(tail). The bucket holds ranks
    k+1..K and the tail; the student's bucket is its softmax at T summed
    over every unit but the k.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))  # the teacher's full distribution
    >>> s = lp.clone()  # a student equal to it
    >>> idx = torch.tensor([[[0, 1, 2]]])
    >>> no_tail = torch.tensor([[float("-inf")]])
    >>> round(abs(tail_kl(s, idx, lp, no_tail, 2.0, 1).item()), 6)
    0.0
    """
    lq_all = torch.log_softmax(student_logp / T, dim=-1)
    lt = logp / T
    log_z = torch.logsumexp(torch.cat([lt, tail[..., None]], -1), -1, keepdim=True)
    log_p = lt[..., :k] - log_z
    log_p_rest = torch.logsumexp(torch.cat([lt[..., k:], tail[..., None]], -1), -1) - log_z[..., 0]
    read = idx[..., :k]
    # finite, not -inf: with k = V the bucket's logsumexp would have a NaN gradient
    lq_rest = torch.logsumexp(lq_all.scatter(-1, read, torch.finfo(lq_all.dtype).min), -1)
    per_frame = (log_p.exp() * (log_p - lq_all.gather(-1, read))).sum(-1)
    p_rest = log_p_rest.exp()
    # an empty bucket (k = K = V) adds 0, not 0 * inf
    return per_frame + torch.where(p_rest > 0, p_rest * (log_p_rest.clamp_min(-1e4) - lq_rest), 0.0)


def sampled_kl(student_logp, idx, logp, log_z, T, k):
    """Per-frame importance-weighted estimate of KL(p_T || q_T) from K draws of the teacher at T = 1.

    ``log_z`` is the teacher's ``log Z_T = log sum_j p_j^(1/T)`` per frame.
    Draw j (unit i_j, T = 1 log-prob ``logp_j``) has exact teacher
    log p_T(i_j) = logp_j / T - log Z_T and weight
    w_j = p_T(i_j) / (K p(i_j)) = exp(logp_j (1/T - 1) - log Z_T) / K.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[[0.5, 0.5]]]))
    >>> s = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    >>> draws = torch.tensor([[[0, 1]]])  # one draw of each: the exact KL at T = 1
    >>> round(sampled_kl(s, draws, lp, torch.zeros(1, 1), 1.0, 2).item(), 4)  # 0.5 log 2
    0.3466
    """
    log_pt = logp / T - log_z[..., None]
    w = torch.exp(logp * (1.0 / T - 1.0) - log_z[..., None]) / k
    log_q = torch.log_softmax(student_logp / T, dim=-1).gather(-1, idx)
    return (w * (log_pt - log_q)).sum(-1)


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
    """Sequence-level distillation: sum_n w_n * CTC(student, teacher_hyp_n) / |hyp_n|, averaged over utterances.

    ``w`` is the softmax of the teacher's N-best scores (``score_temperature``
    flattens or sharpens it). Hypotheses with no tokens are skipped. Each
    hypothesis's negative log-likelihood is divided by its number of tokens,
    as SpeechBrain's CTC loss divides by the target's (``reduction="mean"``):
    both criteria then take steps of one scale at one learning rate (a sum
    over tokens would be larger by the hypothesis length).

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
        student_logp = student_logp.float()  # in float32 under mixed precision too (a no-op otherwise)
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
        nll = ctc_per_utt(student_logp[idx], lens[idx], tgt, tgt_lens) / tgt_lens.to(student_logp.dtype)
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
        log_probs = log_probs.float()  # in float32 under mixed precision too (a no-op otherwise)
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
