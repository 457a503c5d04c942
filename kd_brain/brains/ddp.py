"""Data-parallel training (torchrun) that gives the numbers of a 1-process run.

SpeechBrain's default under DDP wraps a batch sampler in
``DistributedSamplerWrapper``: each rank gets *whole* batches, so the global
batch is N times the 1-process one, and the batch order is reshuffled by
``DistributedSampler`` (seed 0, not the config's). Here instead:

* ``RankBatchSplitter`` keeps the 1-process batch sequence (the config's
  ``DynamicBatchSampler``, seeded by the config) and gives rank r the
  utterances ``r, r + N, ...`` of each batch: the global batch, the steps
  per epoch and the order are those of the 1-process run, whatever N.
  ``batch_seconds`` is therefore the *global* batch; to grow it with N
  (each rank keeping the 1-process share), it is one override,
  ``--batch_seconds=<N x value>``.
* ``pad_to_global_length`` pads each share as far as the global batch is
  padded, for a model that sees its padding in training
  (``mask_padding_in_training: False``), so an utterance's numbers are
  those of the 1-process run up to summation order.
* The input normaliser's statistics (SpeechBrain's ``InputNormalization``)
  are reduced over the ranks at each update, so every rank holds the
  1-process statistics.
* ``rank_share`` weighs each rank's loss so that DDP's gradient average
  (the mean over ranks) is the gradient of the global batch's loss: a rank
  holding c of the batch's C units (utterances, or frames for frame KD)
  scales its mean loss by N c / C.
* ``global_mean`` averages a logged number (the epoch's train loss) over
  ranks, so the curve shows the global loss, not rank 0's share.
* ``unwrapped`` lets the main process run a forward pass alone
  (validation, test): a DDP wrapper may sync buffers in forward.

Noise needs nothing: the contaminator seeds each utterance's draw by
``(seed, epoch, utterance ID)`` (``kd_brain.noise.contamination.seed_for``), never
by rank, batch or worker.
"""

import contextlib
import dataclasses
import logging
import os

import torch
from speechbrain.utils.distributed import ddp_all_reduce, is_distributed_initialized

logger = logging.getLogger(__name__)


def world_size():
    """Number of processes in the DDP group (1 without one)."""
    return torch.distributed.get_world_size() if is_distributed_initialized() else 1


def rank():
    """This process's rank (0 without a DDP group)."""
    return torch.distributed.get_rank() if is_distributed_initialized() else 0


def default_backend(run_opts):
    """A copy of ``run_opts`` with gloo where CUDA is absent and no ``--distributed_backend`` was given (SpeechBrain defaults to nccl)."""
    launched = "RANK" in os.environ  # torchrun; a 1-process run's options stay as given
    if not launched or "distributed_backend" in getattr(run_opts, "overridden_args", ()) or torch.cuda.is_available():
        return run_opts
    return with_options(run_opts, distributed_backend="gloo")


def with_options(run_opts, **options):
    """``run_opts`` with ``options`` set, as if given on the command line (a Brain reads only those)."""
    if dataclasses.is_dataclass(run_opts):  # sb.parse_arguments' RunOptions is frozen
        return dataclasses.replace(run_opts, **options, overridden_args=set(run_opts.overridden_args) | set(options))
    return {**run_opts, **options}


class RankBatchSplitter(torch.utils.data.Sampler):
    """This rank's share of every batch of a (1-process) batch sampler.

    Arguments
    ---------
    batch_sampler : iterable of lists of int
        The global batches (e.g. ``DynamicBatchSampler``); its ``set_epoch`` is passed through.
    rank : int
    world_size : int

    A batch with fewer utterances than ranks goes whole to every rank: each
    then computes the same gradient, and their average is that gradient
    (``rank_share`` gives each weight 1).

    Example
    -------
    >>> batches = [[0, 1, 2, 3, 4], [5]]
    >>> [list(RankBatchSplitter(batches, r, 2)) for r in (0, 1)]
    [[[0, 2, 4], [5]], [[1, 3], [5]]]
    """

    def __init__(self, batch_sampler, rank, world_size):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __iter__(self):
        for batch in self.batch_sampler:
            batch = list(batch)
            yield batch if len(batch) < self.world_size else batch[self.rank::self.world_size]

    def __len__(self):
        return len(self.batch_sampler)

    def set_epoch(self, epoch):
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def pad_to_global_length(wavs, wav_lens):
    """Pads this rank's share of a batch to the longest utterance of the whole (global) batch.

    In training a model that sees its padding (``mask_padding_in_training:
    False``) gives an utterance outputs that depend on how far its batch is
    padded, so each rank pads as the 1-process batch would: the numbers then
    differ from one process only in summation order. Relative lengths are recomputed like
    ``PaddedBatch`` does (sample count / padded length). Unchanged without DDP.
    """
    if world_size() == 1:
        return wavs, wav_lens
    n = wavs.shape[1]
    longest = int(ddp_all_reduce(torch.tensor(n, device=wavs.device), torch.distributed.ReduceOp.MAX))
    if longest == n:
        return wavs, wav_lens
    samples = torch.round(wav_lens * n).long().tolist()
    wavs = torch.nn.functional.pad(wavs, (0, longest - n))
    return wavs, torch.tensor([s / longest for s in samples], dtype=wav_lens.dtype, device=wav_lens.device)


def rank_share(count, device="cpu"):
    """``N c / C``: the factor on this rank's mean loss that makes DDP's average the global batch's mean.

    ``count`` is c, the units this rank's loss averages over (its
    utterances, or its frames); C is their sum over ranks. 1.0 without DDP.
    """
    if world_size() == 1:
        return 1.0
    total = ddp_all_reduce(torch.tensor(float(count), dtype=torch.float64, device=device),
                           torch.distributed.ReduceOp.SUM)
    return world_size() * float(count) / max(float(total), 1e-12)


def global_mean(value, device="cpu"):
    """The mean over ranks of a float (the value itself without DDP); gloo has no AVG, hence SUM / N."""
    if world_size() == 1:
        return value
    total = ddp_all_reduce(torch.tensor(float(value), dtype=torch.float64, device=device),
                           torch.distributed.ReduceOp.SUM)
    return float(total) / world_size()


@contextlib.contextmanager
def unwrapped(modules):
    """Temporarily replaces DDP-wrapped entries of a ``ModuleDict`` by the modules they wrap.

    For a forward pass that only the main process runs: a DDP forward
    broadcasts buffers after a training step, which would wait for ranks
    that are not there.
    """
    wrapped = {k: m for k, m in modules.items() if isinstance(m, torch.nn.parallel.DistributedDataParallel)}
    for k, m in wrapped.items():
        modules[k] = m.module
    try:
        yield
    finally:
        for k, m in wrapped.items():
            modules[k] = m


@contextlib.contextmanager
def float32_outputs(model, device_type):
    """Under autocast, runs the model's output layers (``head``, ``aux_head``) in float32.

    CPU autocast leaves ``log_softmax`` in bfloat16 (7 mantissa bits:
    ~0.06 nats at a log-prob of -16), and the log-probs feed the KD loss,
    CTC and the stored soft labels; the layers' float32 logits make the
    model's ``log_softmax`` float32. A no-op without autocast, so full
    precision runs are unchanged.
    """
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    model = getattr(model, "module", model)

    def hook(module, inputs, output):
        with torch.autocast(device_type, enabled=False):
            return module.forward(*(x.float() for x in inputs))

    handles = [getattr(model, name).register_forward_hook(hook)
               for name in ("head", "aux_head") if isinstance(getattr(model, name, None), torch.nn.Module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
