"""Soft-label store: the teacher's top-k CTC log-probabilities, per utterance.

Layout of a store directory::

    meta.json                     store settings + the creator's metadata
    shard-r0000-00000.kds         finalized shards, one series per rank
    shard-r0001-00000.kds.tmp     a shard being written (discarded on resume)
    index.kdi                     merged index over all finalized shards

Every frame keeps the teacher's top-k token indices and their log-probs at
T = 1, sorted by descending log-prob; any temperature is applied at read time
(:func:`temper`), which equals softmax(logits / T) restricted to the top-k
and renormalised, because log-probs differ from logits by a per-frame
constant.

The record encoding is in :mod:`kd_brain.store_codec`, the file framing
(blocks, shard footers, index) in :mod:`kd_brain.store_files`.

Disk cost at k = 20 (the CPU configs, 256 sub-words, and the large
LibriSpeech config, 512 units, emit 25 frames/s):

* computed, uncompressed: k * (2 B index + 2 B value) = 80 B/frame
  = 7.2 MB per hour of audio (x 7,200 h = 52 GB);
* measured, the main job's sub-word store (``bench/bench_real_store.py``):
  8.5 / 15.2 / 27.0 / 49.6 B/frame at k = 5 / 10 / 20 / 40, i.e. 2.4 MB
  per hour of audio at k = 20 (x 7,200 h = 17.5 GB); its character store
  (30 units) was 21.8 B/frame at k = 20;
* estimated, large config (no such teacher is trained here):
  ``bench/bench_store.py`` on synthetic peaky CTC posteriors at V = 500
  (a linear read-out of a smooth encoder state; see the benchmark) gives
  25.9 B/frame = 2.33 MB per hour of audio (x 7,200 h = 17 GB), with mean
  KL 6e-5 (T = 1) / 2e-4 (T = 2) nats/frame; 32 B/frame (2.9 MB/h) in the
  worst case of i.i.d. tails. Dense float32 HDF5 at V = 500 is 2,000 B/frame
  = 180 MB per hour (1.3 TB).

The indices cost ~19 of those 25.9 bytes: with the exact rank order kept, a
tail whose ordering changes every frame is close to incompressible (their
order-0 entropy per rank is 14.2 B/frame on the benchmark). zstd level 3 is
the default: level 9 saves ~0.6 B/frame, but writing then costs 4.8% of the
CPU teacher's forward pass instead of 2.6-3.0% (``bench/bench_extract.py``).
"""

import json
import mmap
import os
import struct
import zlib
from collections import namedtuple

import numpy as np
import torch
import zstandard

from kd_brain.store_codec import QUANT_SCHEDULE, _decode, _decode_nbest, _level_table, _nearest_level_lut, _pack, _quantize
from kd_brain.store_files import (END_MAGIC, FORMAT_VERSION, INDEX_FILE, META_FILE, SHARD_MAGIC, SHARD_RE,
                                  CorruptStoreError, _atomic_write, _check, _pack_block, _read_meta, _shards,
                                  _unpack_block, stored_ids)
# The store's API, wherever it is defined
from kd_brain.store_codec import quant_bound, temper  # noqa: F401,E402
from kd_brain.store_files import IncompatibleStoreError, StoreError, merge_index  # noqa: F401,E402

SoftLabels = namedtuple("SoftLabels", ["indices", "log_probs"])


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

    Example
    -------
    >>> import tempfile
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
        max_shard_bytes=256 << 20, level=3,
    ):
        if not 0 < k <= vocab_size <= 65536:
            raise ValueError(f"need 0 < k <= vocab_size <= 65536, got k={k}, V={vocab_size}")
        self.store_dir, self.rank, self.k, self.vocab_size = store_dir, rank, k, vocab_size
        self.step, self.max_shard_bytes = quant_step, max_shard_bytes
        self.meta = dict(meta, format=FORMAT_VERSION, k=k, vocab_size=vocab_size, quant_step=quant_step,
                         quant_schedule=list(QUANT_SCHEDULE))
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
        """Stores the top-k of one utterance's teacher outputs.

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
        values, indices = torch.topk(x.log_softmax(-1), self.k, dim=-1)
        self.add_topk(utt_id, indices, values, nbest)

    def add_topk(self, utt_id, indices, log_probs, nbest=None):
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
        """
        idx = torch.as_tensor(indices).detach().cpu().long().numpy()
        lp = torch.as_tensor(log_probs).detach().float().cpu().numpy()
        self._validate(utt_id, idx, lp)
        self._check_finite(utt_id, lp)
        if lp.size and lp.max() > 1e-3:
            raise ValueError(f"{utt_id}: positive log-probs; pass logits to add(), not add_topk()")
        if not (lp[:, :-1] >= lp[:, 1:]).all():  # torch.topk output is sorted already
            order = np.argsort(-lp, axis=1, kind="stable")
            idx, lp = np.take_along_axis(idx, order, 1), np.take_along_axis(lp, order, 1)
        self._write(utt_id, idx, *_quantize(lp, self.step, self._table), nbest)

    def add_batch(self, utt_ids, indices, log_probs, frames, nbests=None):
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
        """
        idx = torch.as_tensor(indices).detach().cpu().long().numpy()
        lp = torch.as_tensor(log_probs).detach().float().cpu().numpy()
        nbests = nbests or [None] * len(utt_ids)
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
        )
        if not valid:  # padding may be what fails; per utterance, the error names it
            for b, (uid, n, nb) in enumerate(zip(utt_ids, frames, nbests)):
                self.add_topk(uid, idx[b, :n], lp[b, :n], nb)
            return
        q1, dlevel = _quantize(lp, self.step, self._table)
        for b, (uid, n, nb) in enumerate(zip(utt_ids, frames, nbests)):
            self._write(uid, idx[b, :n], q1[b, :n], dlevel[b, :n], nb)

    def _write(self, utt_id, idx, q1, dlevel, nbest):
        nbest = [(list(map(int, t)), float(s)) for t, s in (nbest or [])]
        blob = self._compressor.compress(_pack(idx, q1, dlevel, nbest, self.vocab_size))
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
        if self._file is None:
            self._file = open(self._path() + ".tmp", "wb")
            self._file.write(SHARD_MAGIC)
        self._broken = True  # until the write completes
        offset = self._file.tell()
        self._file.write(blob)
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
        self._file.write(footer + where + struct.pack("<I", zlib.crc32(where)) + END_MAGIC)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._path() + ".tmp", self._path())
        self._file, self._entries, self._seq = None, [], self._seq + 1

    def close(self):
        """Finalizes the current shard (an empty one is not written)."""
        if self._file is None:
            return
        if self._broken or not self._entries:  # half-written record: drop
            self._file.close()
            os.remove(self._path() + ".tmp")
            self._file, self._entries = None, []
            return
        self._finalize()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SoftLabelStore:
    """Random-access reader of a merged soft-label store.

    Picklable: file handles (mmaps) are opened on first access in each
    process, so a DataLoader worker opens its own.

    Arguments
    ---------
    store_dir : str
        Store directory with ``index.kdi`` (see :func:`merge_index`).

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with SoftLabelWriter(d, k=2, vocab_size=3, meta={"fps": 25}) as w:
    ...     w.add("u1", torch.tensor([[0.0, 3.0, 1.0]]), nbest=[([1], -0.5)])
    >>> _ = merge_index(d)
    >>> store = SoftLabelStore(d)
    >>> store["u1"].indices.tolist(), len(store), "u1" in store
    ([[1, 2]], 1, True)
    >>> store.nbest("u1")
    [([1], -0.5)]
    >>> store.check_compatible({"fps": 25})
    """

    def __init__(self, store_dir):
        self.store_dir = store_dir
        self._state = None

    def __getstate__(self):
        return {"store_dir": self.store_dir, "_state": None}

    def _open(self):
        if self._state is None or self._state["pid"] != os.getpid():
            path = os.path.join(self.store_dir, INDEX_FILE)
            if not os.path.exists(path):
                raise StoreError(f"{path} missing: run merge_index({self.store_dir!r})")
            with open(path, "rb") as f:
                data = f.read()
            header, arrays = _unpack_block(data, path)
            meta = header["meta"]
            step = meta["quant_step"]
            table = _level_table(step, tuple(meta["quant_schedule"]))
            self._state = dict(
                arrays, pid=os.getpid(), header=header, maps={},
                dctx=zstandard.ZstdDecompressor(), step=step, k=meta["k"],
                bitmap_vocab=meta["vocab_size"] if meta["format"] >= 3 else 0,
                values=(-step * table).astype(np.float32),
                # plain-int rows: numpy scalar access costs ~1 us per field per read
                rows=list(zip(arrays["shard"].tolist(), arrays["offset"].tolist(),
                              arrays["length"].tolist(), arrays["crc"].tolist(),
                              arrays["frames"].tolist())),
            )
        return self._state

    @property
    def meta(self):
        """The store's metadata (``k``, ``vocab_size``, ``quant_step`` and the creator's)."""
        return self._open()["header"]["meta"]

    def check_compatible(self, expected):
        """Raises IncompatibleStoreError naming the first key whose value differs.

        Arguments
        ---------
        expected : dict
            Metadata the caller needs (e.g. tokenizer hash, frame shift).
        """
        _check(self.meta, expected, self.store_dir)

    def _row(self, utt_id):
        s = self._open()
        key = utt_id.encode() if isinstance(utt_id, str) else b""
        ids = s["ids"]
        row = int(np.searchsorted(ids, key))
        if not key or row == len(ids) or ids[row] != key:
            return None
        return row

    def __contains__(self, utt_id):
        return self._row(utt_id) is not None

    def __len__(self):
        return len(self._open()["ids"])

    def __iter__(self):
        return (i.decode() for i in self._open()["ids"].tolist())

    def _map(self, shard):
        s = self._state
        if shard not in s["maps"]:
            name = s["header"]["shards"][shard]
            path = os.path.join(self.store_dir, name)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != s["header"]["sizes"][shard]:
                    raise CorruptStoreError(
                        f"{path}: {size} bytes, index says {s['header']['sizes'][shard]} (truncated?)"
                    )
                s["maps"][shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return s["maps"][shard]

    def _payload(self, utt_id):
        s = self._open()
        row = self._row(utt_id)
        if row is None:
            raise KeyError(f"{utt_id} not in soft-label store {self.store_dir}")
        shard, off, length, crc, frames = s["rows"][row]
        maps = s["maps"]
        blob = (maps[shard] if shard in maps else self._map(shard))[off : off + length]
        if len(blob) != length or zlib.crc32(blob) != crc:
            name = s["header"]["shards"][shard]
            raise CorruptStoreError(f"{name}: record {utt_id} fails its checksum")
        try:
            return s["dctx"].decompress(blob), frames
        except zstandard.ZstdError as e:
            raise CorruptStoreError(f"{self.store_dir}: record {utt_id}: {e}") from e

    def _decoded(self, utt_id):
        buf, frames = self._payload(utt_id)
        s = self._state
        try:
            out = _decode(buf, s["step"], s["values"], s["bitmap_vocab"])
        except (ValueError, IndexError, struct.error) as e:
            raise CorruptStoreError(f"{self.store_dir}: record {utt_id}: {e}") from e
        if out[0].shape != (frames, s["k"]):
            raise CorruptStoreError(f"{self.store_dir}: record {utt_id}: bad shape")
        return buf, out

    def __getitem__(self, utt_id):
        """Returns SoftLabels(indices int64 [frames, k], log_probs float32 [frames, k])."""
        _, (indices, log_probs, _) = self._decoded(utt_id)
        return SoftLabels(torch.from_numpy(indices), torch.from_numpy(log_probs))

    def distribution(self, utt_id, temperature):
        """Returns (indices [frames, k], tempered renormalised probs [frames, k])."""
        indices, log_probs = self[utt_id]
        return indices, temper(log_probs, temperature)

    def nbest(self, utt_id):
        """The stored N-best list of an utterance: [(token IDs, score)], maybe empty."""
        buf, (_, _, (nhyp, off)) = self._decoded(utt_id)
        try:
            return _decode_nbest(buf, nhyp, off)
        except ValueError as e:
            raise CorruptStoreError(f"{self.store_dir}: record {utt_id}: {e}") from e

    def stats(self):
        """Utterances, frames, record bytes and bytes per frame of the store."""
        s = self._open()
        frames, nbytes = int(s["frames"].sum()), int(s["length"].sum())
        return {
            "utterances": len(s["ids"]), "frames": frames, "bytes": nbytes,
            "bytes_per_frame": nbytes / max(frames, 1),
        }
