"""Random-access reader of a soft-label store (layout and record format: :mod:`kd_brain.store`)."""

import mmap
import os
import struct
import zlib
from collections import namedtuple

import numpy as np
import torch
import zstandard

from kd_brain.kd.targets import temper
from kd_brain.store.codec import _decode, _decode_nbest, _decode_side, _level_table
from kd_brain.store.files import INDEX_FILE, CorruptStoreError, StoreError, _check, _unpack_block

SoftLabels = namedtuple("SoftLabels", ["indices", "log_probs"])


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
    >>> from kd_brain.store import SoftLabelWriter, merge_index
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
                n_side=len(meta.get("side_temperatures", [])),
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

    @property
    def target(self):
        """``topk`` or ``sampled`` (:class:`SoftLabelWriter`); stores without the key are top-k stores."""
        return self.meta.get("target", "topk")

    @property
    def side_temperatures(self):
        """The temperatures of the side array's columns; empty when the store has none."""
        return list(self.meta.get("side_temperatures", []))

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

    def side(self, utt_id):
        """The side array float32 [frames, len(side_temperatures)] (:mod:`kd_brain.kd.targets`).

        Example
        -------
        >>> import tempfile
        >>> from kd_brain.store import SoftLabelWriter, merge_index
        >>> d = tempfile.mkdtemp()
        >>> with SoftLabelWriter(d, k=1, vocab_size=3, meta={}, side_temperatures=[1.0, 2.0]) as w:
        ...     w.add("u1", torch.log(torch.tensor([[0.5, 0.25, 0.25]])))
        >>> _ = merge_index(d)
        >>> SoftLabelStore(d).side("u1").exp().round(decimals=2).tolist()  # tempered mass beyond the top-1
        [[0.5, 1.0]]
        """
        s = self._open()
        if not s["n_side"]:
            raise StoreError(f"{self.store_dir} has no side array (extracted with side_temperatures: [])")
        buf, frames = self._payload(utt_id)
        try:
            return torch.from_numpy(_decode_side(buf, frames, s["n_side"]))
        except ValueError as e:
            raise CorruptStoreError(f"{self.store_dir}: record {utt_id}: {e}") from e

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
