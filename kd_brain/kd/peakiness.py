"""How peaky a model's frame posteriors are: what top-k selection has to choose from.

The paper selects the top-k of smooth senone posteriors from a frame-level
cross-entropy model; a CTC model's posteriors are peaky (most frames are
blank with near-certainty, the rest one unit). These statistics say which
kind a teacher has, over the valid frames of a set of utterances:

* ``top1_T<t>``: mean probability of the best unit at temperature t;
* ``topk_T2_k<k>``: mean mass of the k best units at T = 2 (the paper's T);
* ``blank_p90``: share of frames whose blank probability is at least 0.9 (T = 1);
* ``entropy``: mean frame entropy at T = 1, in nats.
"""

import torch

TEMPERATURES = (1.0, 2.0, 4.0)
KS = (1, 5, 20, 40)


def peakiness(batches, blank_index=0, temperatures=TEMPERATURES, ks=KS):
    """The statistics of the module docstring over ``(log_probs [B, T, V], relative lengths [B])`` pairs.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[[0.95, 0.05, 0.0], [0.2, 0.5, 0.3], [0.9, 0.1, 0.0]]]) + 1e-12)
    >>> stats = peakiness([(lp, torch.tensor([2 / 3]))], ks=(1,))
    >>> stats["frames"], round(stats["top1_T1"], 3), stats["blank_p90"]
    (2, 0.725, 0.5)
    """
    sums, frames = {}, 0
    for log_probs, lens in batches:
        n = torch.round(lens * log_probs.shape[1]).long()
        mask = torch.arange(log_probs.shape[1])[None, :] < n[:, None]
        lp = log_probs.float()[mask]  # [frames, V]
        frames += lp.shape[0]
        for t in temperatures:
            p = torch.softmax(lp / t, dim=-1)
            _add(sums, f"top1_T{t:g}", p.max(dim=-1).values)
            if t == 2.0:
                top = p.sort(dim=-1, descending=True).values.cumsum(dim=-1)
                for k in ks:
                    _add(sums, f"topk_T2_k{k}", top[:, min(k, top.shape[1]) - 1])
        p1 = lp.exp()
        _add(sums, "blank_p90", (p1[:, blank_index] >= 0.9).float())
        _add(sums, "entropy", -(p1 * lp.clamp_min(-1e4)).sum(dim=-1))
    if not frames:
        raise ValueError("peakiness: no frames")
    return {"frames": frames, **{k: v / frames for k, v in sums.items()}}


def _add(sums, key, values):
    sums[key] = sums.get(key, 0.0) + float(values.sum())
