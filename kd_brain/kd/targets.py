"""What a store holds per frame besides the top-k, for the frame-level target ablations.

The student reads one of three targets (``target`` in hparams/student.yaml;
:class:`kd_brain.kd.losses.FrameKD` builds them):

* ``topk``: the teacher's k best units, tempered and renormalised (the paper);
* ``tail``: the same k units at their tempered probability over the whole
  vocabulary, plus one bucket holding the rest of the teacher's mass. That
  needs, per frame and temperature T, the tempered mass of the units beyond
  the stored K: ``log sum_{j not in top-K} p_j^(1/T)`` (:func:`tail_log_mass`);
* ``sampled``: K draws with replacement from the teacher's T = 1 softmax
  (:func:`draw_units`, Anshumann et al. 2025), importance-weighted at read
  time; needs ``log Z_T = log sum_j p_j^(1/T)`` (:func:`log_partition`).

These per-frame values are the store's *side array* ([frames, len(T list)],
one column per temperature in the store's ``side_temperatures``), computed at
extraction from the full distribution, since the store keeps no more of it.
"""

import math

import torch

from kd_brain.pipeline.seeds import seed_for

TARGETS = ("topk", "tail", "sampled")


def temper(log_probs, temperature):
    """Tempered, renormalised top-k distribution from stored T = 1 log-probs.

    Equal to softmax(logits / T) restricted to the top-k and renormalised.

    Arguments
    ---------
    log_probs : torch.Tensor
        [..., k] top-k log-probabilities at T = 1.
    temperature : float
        Distillation temperature T > 0.

    Returns
    -------
    torch.Tensor
        [..., k] probabilities summing to 1 over the last axis.

    Example
    -------
    >>> p = temper(torch.log(torch.tensor([[0.6, 0.2]])), 1.0)
    >>> [round(x, 2) for x in p[0].tolist()]
    [0.75, 0.25]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(log_probs.float() / temperature, dim=-1)


def draw_units(log_probs, k, seed, utt_id):
    """K units per frame drawn with replacement from softmax(log_probs), sorted by descending log-prob.

    The draws depend only on this utterance's frames and (``seed``,
    ``utt_id``): not on the batch it came in, the rank, or a resume.
    Inverse CDF sampling with uniforms
    from a CPU generator, so not on the device's RNG either. Duplicates are
    adjacent (ties in log-prob are ordered by unit index).

    Arguments
    ---------
    log_probs : torch.Tensor
        [frames, V] log-probabilities (T = 1) of one utterance.
    k : int
        Draws per frame.
    seed : int
        The extraction's ``sample_seed``.
    utt_id : str
        The utterance ID.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Indices int64 [frames, k] and their log-probs [frames, k].

    Example
    -------
    >>> lp = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    >>> idx, logp = draw_units(lp, 6, 0, "u1")
    >>> sorted(set(idx[0].tolist())) <= [0, 1], torch.equal(idx, draw_units(lp, 6, 0, "u1")[0])
    (True, True)
    """
    gen = torch.Generator().manual_seed(seed_for(seed, 0, utt_id))  # one draw per utterance: epoch 0
    frames, vocab = log_probs.shape
    u = torch.rand((frames, k), generator=gen, dtype=torch.float64).to(log_probs.device)
    cdf = (log_probs.double() - log_probs.double().amax(-1, keepdim=True)).exp().cumsum(-1)
    cdf = cdf / cdf[:, -1:]  # normalised here: log-probs rounded in float32 do not sum to exactly 1
    idx = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_(max=vocab - 1)
    idx = idx.sort(-1).values  # unit order first, so equal log-probs stay grouped by unit
    logp = log_probs.gather(-1, idx)
    logp, order = logp.sort(stable=True, dim=-1, descending=True)
    return idx.gather(-1, order), logp


def tail_log_mass(log_probs, indices, temperatures):
    """Per frame and T, ``log sum p_j^(1/T)`` over the units j NOT in ``indices``.

    Summed over the masked-out units directly (not ``Z_T`` minus the top-K),
    so a tail of 1e-20 keeps its digits; -inf when ``indices`` covers all V.

    Arguments
    ---------
    log_probs : torch.Tensor
        [..., V] log-probabilities (T = 1).
    indices : torch.Tensor
        [..., K] the stored units (the top-K).
    temperatures : list of float

    Returns
    -------
    torch.Tensor
        [..., len(temperatures)].

    Example
    -------
    >>> lp = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> [round(x, 4) for x in tail_log_mass(lp, torch.tensor([[0]]), [1.0, 2.0]).exp()[0].tolist()]
    [0.5, 0.9949]
    """
    rest = log_probs.float().scatter(-1, indices.long(), float("-inf"))
    return torch.stack([torch.logsumexp(rest / float(t), -1) for t in temperatures], -1)


def log_partition(log_probs, temperatures):
    """Per frame and T, ``log Z_T = log sum_j p_j^(1/T)`` over all V units.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> [round(x, 4) for x in log_partition(lp, [1.0, 2.0])[0].tolist()]
    [0.0, 0.3466]
    """
    lp = log_probs.float()
    return torch.stack([torch.logsumexp(lp / float(t), -1) for t in temperatures], -1)


def side_meta(target="topk", side_temperatures=(), sample_seed=None):
    """Store metadata of a target's extra content; empty for a plain top-k store (unchanged meta).

    Example
    -------
    >>> side_meta()
    {}
    >>> side_meta("sampled", [1, 2], 0)
    {'target': 'sampled', 'side_temperatures': [1.0, 2.0], 'sample_seed': 0}
    """
    if target not in ("topk", "sampled"):
        raise ValueError(f"a store's target is topk or sampled (tail reads a topk store), got {target!r}")
    temps = [float(t) for t in side_temperatures or []]
    if any(not (t > 0 and math.isfinite(t)) for t in temps) or len(set(temps)) != len(temps):
        raise ValueError(f"side_temperatures must be distinct positive numbers, got {side_temperatures}")
    if target == "sampled" and not temps:
        raise ValueError("a sampled store needs side_temperatures: its weights at temperature T need log Z_T")
    if target == "topk" and not temps:
        return {}
    meta = {"target": target, "side_temperatures": temps}
    if target == "sampled":
        meta["sample_seed"] = int(sample_seed or 0)
    return meta


def side_column(meta, temperature, where, setting="temperature"):
    """The side-array column of ``temperature`` in a store, or a clear error.

    Arguments
    ---------
    meta : dict
        The store's metadata.
    temperature : float
        The temperature the student reads at.
    where : str
        The store directory (named in the error).
    setting : str
        The name of the student's setting (named in the error).

    Example
    -------
    >>> side_column({"side_temperatures": [1.0, 2.0]}, 2, "exp/softlabels")
    1
    >>> side_column({"side_temperatures": [1.0]}, 3.0, "exp/softlabels")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kd_brain.store.files.IncompatibleStoreError: temperature=3.0 is not in exp/softlabels's side_temperatures [1.0]: ...
    """
    from kd_brain.store.files import IncompatibleStoreError

    temps = meta.get("side_temperatures", [])
    for n, t in enumerate(temps):
        if math.isclose(t, float(temperature), rel_tol=1e-9):
            return n
    raise IncompatibleStoreError(f"{setting}={temperature} is not in {where}'s side_temperatures {temps}: "
                                 "extract with it in side_temperatures")
