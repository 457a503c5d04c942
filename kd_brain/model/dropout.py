"""Dropout with a cheaper random mask on CPU.

``torch.nn.Dropout`` draws one random number per element (``bernoulli_``), and
torch's CPU generator is serial: in a training step of the default conformer
(hparams/model.yaml, 2 threads, 30 s batches) the masks take 19% of the time,
more than the attention. ``FastDropout`` draws one 64-bit number per four
elements from the same (seeded) generator and uses each 16-bit quarter as a
uniform draw, so a run stays reproducible from its seed; p is rounded to a
multiple of 1/65536. ``bench/bench_dropout.py`` measures both side by side.
"""

import torch

_LEVELS = 1 << 16  # 16-bit uniforms


class FastDropout(torch.nn.Module):
    """Inverted dropout (keep with probability 1 - p, scale by 1 / (1 - p)).

    On CUDA, where ``bernoulli_`` is cheap, it calls ``torch.nn.functional.dropout``.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> drop = FastDropout(0.25)
    >>> y = drop(torch.ones(100_000))
    >>> round((y == 0).float().mean().item(), 2), round(y.max().item(), 4)
    (0.25, 1.3333)
    >>> torch.equal(drop.eval()(torch.ones(3)), torch.ones(3))
    True
    """

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p}: must be in [0, 1)")
        self.p = p
        # int16 draws below this value are dropped: round(p * 65536) of the 65536 levels
        self.threshold = round(p * _LEVELS) - _LEVELS // 2

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return torch.nn.functional.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


def use_fast_dropout(module):
    """Replaces every ``torch.nn.Dropout`` inside ``module`` (in place) by a ``FastDropout``.

    Returns the number replaced. Parameters and state dicts are unchanged
    (dropout has neither), so checkpoints load either way.

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    >>> use_fast_dropout(net), type(net[1]).__name__, net[1].p
    (1, 'FastDropout', 0.1)
    """
    found = [(parent, name, child.p) for parent in module.modules()
             for name, child in parent.named_children() if type(child) is torch.nn.Dropout]
    for parent, name, p in found:
        setattr(parent, name, FastDropout(p))
    return len(found)
