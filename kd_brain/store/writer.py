"""Writer of a soft-label store: per-rank shards of compressed top-k records (layout: :mod:`kd_brain.store`)."""


import contextlib
import json
import os
import struct
import zlib

import numpy as np
import torch
import zstandard

from kd_brain.pipeline.atomic import naming
from kd_brain.store.codec import (QUANT_SCHEDULE, SIDE_TOP, _check_side, _level_table, _nearest_level_lut, _pack,
                                  _pack_side, _quantize)
from kd_brain.store.files import (END_MAGIC, FORMAT_VERSION, META_FILE, SHARD_MAGIC, SHARD_RE, _atomic_write, _check,
                                  _pack_block, _read_meta, _shards, stored_ids)
from kd_brain.kd.targets import draw_units, log_partition, side_meta, tail_log_mass


class SoftLabelWriter:
    """Writes one rank's shards of a soft-label store; resumable.

    Each rank writes ``shard-r<rank>-<seq>.kds`` files: records go to a
    ``.tmp`` file that is finalized (footer, fsync, ``os.replace``) when it
    reaches ``max_shard_bytes`` or on :meth:`close`. A new writer deletes its
    rank's leftover ``.tmp`` (from a killed run) and continues after the
    finalized shards; ``utt_id in writer`` tells an extraction loop what any
    rank has already stored. After all ranks close, one process calls
    :func:`merge_index`.

    Arguments
    ---------
    store_dir : str
        Store directory (created if missing).
    k : int
        Entries kept per frame.
    vocab_size : int
        Teacher output size V, blank included (at most 65536).
    meta : dict
        JSON-serialisable metadata (tokenizer hash, frame shift, subsampling,
        teacher and manifest hashes ...); must equal that of an existing store.
    rank : int
        This writer's rank; ranks must not write concurrently with the same rank.
    quant_step : float
        Finest log-prob quantization step in nats (error <= quant_step / 2
        for entries within 4 nats of the top-1; see :func:`quant_bound`).
    max_shard_bytes : int
        Roll to a new shard once the current one reaches this size.
    level : int
        zstd compression level.
    target : str
        ``topk`` (the k best units) or ``sampled`` (k draws with replacement
        from the T = 1 softmax, see :func:`kd_brain.kd.targets.draw_units`).
    side_temperatures : list of float
        Also store the side array (:mod:`kd_brain.kd.targets`) at these
        temperatures: the tail mass beyond the k units (``topk``) or
        ``log Z_T`` (``sampled``, required there). Empty: none, and the
        store's metadata and records are those of a plain top-k store.
    sample_seed : int
        With ``target="sampled"``: the draws of an utterance depend on this
        and its ID only.

    Example
    -------
    >>> import tempfile
    >>> from kd_brain.store import SoftLabelStore, merge_index
    >>> d = tempfile.mkdtemp()
    >>> with SoftLabelWriter(d, k=2, vocab_size=4, meta={"tok": "x"}) as w:
    ...     w.add("u1", torch.randn(3, 4).log_softmax(-1))
    >>> merge_index(d)
    1
    >>> SoftLabelStore(d)["u1"].indices.shape
    torch.Size([3, 2])
    """

    def __init__(
        self, store_dir, k, vocab_size, meta, rank=0, quant_step=0.1,
        max_shard_bytes=256 << 20, level=3, target="topk", side_temperatures=(), sample_seed=None,
    ):
        # draws are with replacement: a sampled store may hold more entries per frame than units
        if not (0 < k <= (k if target == "sampled" else vocab_size) and vocab_size <= 65536):
            raise ValueError(f"need 0 < k <= vocab_size <= 65536, got k={k}, V={vocab_size}")
        self.store_dir, self.rank, self.k, self.vocab_size = store_dir, rank, k, vocab_size
        self.step, self.max_shard_bytes = quant_step, max_shard_bytes
        self.meta = dict(meta, format=FORMAT_VERSION, k=k, vocab_size=vocab_size, quant_step=quant_step,
                         quant_schedule=list(QUANT_SCHEDULE), **side_meta(target, side_temperatures, sample_seed))
        self.target, self.side_temperatures = target, self.meta.get("side_temperatures", [])
        self._table = _nearest_level_lut(_level_table(quant_step, QUANT_SCHEDULE))  # for _quantize
        os.makedirs(store_dir, exist_ok=True)
        self._init_meta()
        for name in os.listdir(store_dir):  # partial shards of a killed run
            if name.startswith(f"shard-r{rank:04d}-") and name.endswith(".kds.tmp"):
                os.remove(os.path.join(store_dir, name))
        own = _shards(store_dir, rank)
        self._seq = int(SHARD_RE.match(own[-1]).group(2)) + 1 if own else 0
        self.stored_ids = stored_ids(store_dir)
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._file, self._entries, self._broken = None, [], False

    def _init_meta(self):
        path = os.path.join(self.store_dir, META_FILE)
        try:
            _check(_read_meta(self.store_dir), self.meta, path, exact=True)
        except FileNotFoundError:
            data = json.dumps(self.meta, sort_keys=True, indent=1).encode()
            _atomic_write(path, data)  # identical content from every rank

    def __contains__(self, utt_id):
        return utt_id in self.stored_ids

    def add(self, utt_id, log_probs, nbest=None):
        """Stores the top-k (a sampled store: k draws) of one utterance's teacher outputs, and any side array.

        Arguments
        ---------
        utt_id : str
            Utterance ID (not yet stored).
        log_probs : torch.Tensor or numpy.ndarray
            [frames, V] log-probabilities or logits (log-softmax is applied).
        nbest : list of (list of int, float), optional
            The teacher's N-best hypotheses (token IDs, score).
        """
        x = torch.as_tensor(log_probs).detach().float().cpu()
        if x.ndim != 2 or x.shape[1] != self.vocab_size:
            raise ValueError(f"{utt_id}: expected [frames, {self.vocab_size}], got {list(x.shape)}")
        self._check_finite(utt_id, x)
        x, temps = x.log_softmax(-1), self.side_temperatures
        if self.target == "sampled":
            indices, values = draw_units(x, self.k, self.meta["sample_seed"], utt_id)
            side = log_partition(x, temps)
        else:
            values, indices = torch.topk(x, self.k, dim=-1)
            side = tail_log_mass(x, indices, temps) if temps else None
        self.add_topk(utt_id, indices, values, nbest, side)

    def add_topk(self, utt_id, indices, log_probs, nbest=None, side=None):
        """Stores a top-k computed elsewhere (e.g. ``torch.topk`` on the GPU).

        Arguments
        ---------
        utt_id : str
            Utterance ID (not yet stored).
        indices : torch.Tensor or numpy.ndarray
            [frames, k] token indices.
        log_probs : torch.Tensor or numpy.ndarray
            [frames, k] log-probabilities (T = 1) of those tokens.
        nbest : list of (list of int, float), optional
            The teacher's N-best hypotheses (token IDs, score).
        side : torch.Tensor or numpy.ndarray, optional
            [frames, len(side_temperatures)]: required iff the store has side
            temperatures (:func:`kd_brain.kd.targets.tail_log_mass` or
            :func:`~kd_brain.kd.targets.log_partition` of the full log-probs).
        """
        idx = torch.as_tensor(indices).detach().cpu().long().numpy()
        lp = torch.as_tensor(log_probs).detach().float().cpu().numpy()
        self._validate(utt_id, idx, lp)
        self._check_finite(utt_id, lp)
        side = self._side(utt_id, side, len(idx))
        if lp.size and lp.max() > 1e-3:
            raise ValueError(f"{utt_id}: positive log-probs; pass logits to add(), not add_topk()")
        if not (lp[:, :-1] >= lp[:, 1:]).all():  # torch.topk output is sorted already
            order = np.argsort(-lp, axis=1, kind="stable")
            idx, lp = np.take_along_axis(idx, order, 1), np.take_along_axis(lp, order, 1)
        self._write(utt_id, idx, *_quantize(lp, self.step, self._table), nbest, side)

    def add_batch(self, utt_ids, indices, log_probs, frames, nbests=None, side=None):
        """Stores a padded batch of top-k outputs, e.g. ``log_probs.topk(k)`` of a teacher batch.

        Same records as :meth:`add_topk` per utterance, with the checks and
        the quantization done once for the batch (that is most of the cost of
        writing). If a check fails, the utterances go through ``add_topk``
        one by one, so the error names the utterance.

        Arguments
        ---------
        utt_ids : list of str
            Utterance IDs (not yet stored).
        indices : torch.Tensor
            [batch, time, k] token indices, sorted by descending log-prob.
        log_probs : torch.Tensor
            [batch, time, k] their log-probabilities (T = 1).
        frames : list of int
            Valid frames per utterance; the rest is padding.
        nbests : list, optional
            Per utterance, an N-best list (see :meth:`add_topk`) or None.
        side : torch.Tensor, optional
            [batch, time, len(side_temperatures)], as in :meth:`add_topk`.
        """
        idx = torch.as_tensor(indices).detach().cpu().long().numpy()
        lp = torch.as_tensor(log_probs).detach().float().cpu().numpy()
        nbests = nbests or [None] * len(utt_ids)
        sides = None if side is None else torch.as_tensor(side).detach().float().cpu().numpy()
        if idx.ndim != 3 or idx.shape[2] != self.k or lp.shape != idx.shape:
            raise ValueError(f"add_batch: expected [batch, time, {self.k}] indices and log-probs, "
                             f"got {list(idx.shape)} and {list(lp.shape)}")
        if not len(utt_ids) == len(frames) == len(nbests) == len(idx):
            raise ValueError(f"add_batch: {len(utt_ids)} IDs, {len(frames)} frame counts, {len(nbests)} N-best "
                             f"lists and {len(idx)} rows differ")
        for uid, n in zip(utt_ids, frames):
            if not 0 <= n <= idx.shape[1]:
                raise ValueError(f"{uid}: {n} frames in a batch of {idx.shape[1]}")
        valid = (
            len(set(utt_ids)) == len(utt_ids)
            and not any(not u or "\0" in u or u in self.stored_ids for u in utt_ids)
            and (idx.size == 0 or (
                np.isfinite(lp).all() and lp.max() <= 1e-3 and (lp[..., :-1] >= lp[..., 1:]).all()
                and idx.min() >= 0 and idx.max() < self.vocab_size))
            and (side is None) == (not self.side_temperatures)
            and (side is None or (sides.shape == idx.shape[:2] + (len(self.side_temperatures),)
                                  and not np.isnan(sides).any() and not (sides > SIDE_TOP).any()))
        )
        if not valid:  # padding may be what fails; per utterance, the error names it
            for b, (uid, n, nb) in enumerate(zip(utt_ids, frames, nbests)):
                self.add_topk(uid, idx[b, :n], lp[b, :n], nb, None if side is None else sides[b, :n])
            return
        q1, dlevel = _quantize(lp, self.step, self._table)
        for b, (uid, n, nb) in enumerate(zip(utt_ids, frames, nbests)):
            self._write(uid, idx[b, :n], q1[b, :n], dlevel[b, :n], nb, None if side is None else sides[b, :n])

    def _side(self, utt_id, side, frames):
        if not self.side_temperatures:
            if side is not None:  # would be dropped without a trace
                raise ValueError(f"{utt_id}: side array given, but {self.store_dir} has no side_temperatures")
            return None
        return _check_side(utt_id, side, frames, len(self.side_temperatures))

    def _write(self, utt_id, idx, q1, dlevel, nbest, side=None):
        nbest = [(list(map(int, t)), float(s)) for t, s in (nbest or [])]
        payload = _pack(idx, q1, dlevel, nbest, self.vocab_size)
        blob = self._compressor.compress(payload if side is None else payload + _pack_side(side))
        self._append(utt_id, blob, len(idx))

    def _check_finite(self, utt_id, x):
        if not np.isfinite(np.asarray(x)).all():  # a CPU tensor or an array
            raise ValueError(f"{utt_id}: teacher output has NaN or infinite values; refused")

    def _validate(self, utt_id, idx, lp):
        if idx.ndim != 2 or idx.shape[1] != self.k or lp.shape != idx.shape:
            raise ValueError(f"{utt_id}: expected [frames, {self.k}] indices and log-probs")
        if idx.size and (idx.min() < 0 or idx.max() >= self.vocab_size):
            raise ValueError(f"{utt_id}: token index outside [0, {self.vocab_size})")
        if not utt_id or "\0" in utt_id:
            raise ValueError(f"bad utterance ID {utt_id!r}")
        if utt_id in self.stored_ids:
            raise ValueError(f"{utt_id}: already stored in {self.store_dir}")

    def _append(self, utt_id, blob, frames):
        self._broken = True  # until the write completes; close() then drops the .tmp (never read)
        try:
            if self._file is None:
                self._file = open(self._path() + ".tmp", "wb")
                self._file.write(SHARD_MAGIC)
            offset = self._file.tell()
            self._file.write(blob)
        except OSError as e:  # e.g. a full disk: name the shard (a failed write names no file)
            raise naming(e, self._path()) from e
        self._broken = False
        self._entries.append((utt_id, offset, len(blob), zlib.crc32(blob), frames))
        self.stored_ids.add(utt_id)
        if self._file.tell() >= self.max_shard_bytes:
            self._finalize()

    def _path(self):
        return os.path.join(self.store_dir, f"shard-r{self.rank:04d}-{self._seq:05d}.kds")

    def _finalize(self):
        ids, offsets, lengths, crcs, frames = zip(*self._entries)
        footer_off = self._file.tell()
        arrays = {
            "ids": np.array([i.encode() for i in ids]), "offset": np.array(offsets, "<i8"),
            "length": np.array(lengths, "<i8"), "crc": np.array(crcs, "<u4"),
            "frames": np.array(frames, "<i8"),
        }
        footer = _pack_block({"meta": self.meta}, arrays)
        where = struct.pack("<QQ", footer_off, len(footer))
        try:
            self._file.write(footer + where + struct.pack("<I", zlib.crc32(where)) + END_MAGIC)
            self._file.flush()
            os.fsync(self._file.fileno())  # a full disk may only show here
            self._file.close()
            os.replace(self._path() + ".tmp", self._path())
        except BaseException as e:  # the shard is lost, never half there: its records are redone on resume
            self._broken = True
            self.close()
            if isinstance(e, OSError):
                raise naming(e, self._path()) from e
            raise
        self._file, self._entries, self._seq = None, [], self._seq + 1

    def close(self):
        """Finalizes the current shard (an empty one is not written)."""
        if self._file is None:
            return
        if self._broken or not self._entries:  # half-written record: drop
            with contextlib.suppress(OSError):  # flushing may fail again on a full disk: dropped anyway
                self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._path() + ".tmp")
            self._file, self._entries = None, []
            return
        self._finalize()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
