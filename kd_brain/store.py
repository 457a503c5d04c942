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

Record encoding (one zstd frame per utterance), chosen because the indices
dominate the size and are nearly incompressible as raw uint16:

* indices are remapped to a per-utterance codebook (the tokens that occur in
  this utterance's top-k, ascending, stored as a bitmap over the vocabulary,
  or as a uint16 list where that is smaller: vocabularies of many thousands),
  so they fit a byte when the codebook has <= 256 entries. Larger codebooks
  use two bytes; the tokens are then grouped by frequency (the 256 most
  frequent get high byte 0, the next 256 high byte 1, ...; one group byte
  per token), so the high-byte plane is mostly zeros. Format 2 stored the
  whole codebook in frequency order as uint16, 1.8 B/frame on the benchmark
  spent on an order that zstd's entropy coder does not use (format 3 is
  2-4% smaller at k = 5 to 40);
* log-probs are quantized relative to the frame's top-1: the
  top-1 on a fixed grid, ``q1 = round(-logp_1 / step)`` (``step`` =
  ``quant_step``, default 0.1 nats), every other entry as a uint8 level of
  its distance ``d`` below ``step * q1`` on a grid whose spacing is
  ``step`` up to 4 nats, then doubles every 4 nats (0.2 up to 8, 0.4 up to
  12, 0.8 up to 16, 1.6 up to 20) up to 32 * step (3.2 nats); stored as the
  non-negative level differences along the k axis (the list is sorted and
  the quantizer monotone). Bound, per entry (:func:`quant_bound`):
  ``|logp_read - logp| <= s(d + step / 2) / 2`` with ``s`` that spacing and
  ``d`` the true distance below the top-1; so 0.05 nats for the top-1 and
  for entries within ~4 nats of it, and more only for entries whose
  tempered mass is small (at T = 2 an entry 8 nats down weighs <= e^-4 of
  the top-1). Distances beyond the 256th level (587 nats at step 0.1) are clipped.
  Mean KL(exact top-k || stored top-k) on the benchmark: 6e-5 (T = 1),
  2e-4 (T = 2) nats/frame; per frame it is at most
  ``(2 * max_bound / T)**2 / 8`` (Hoeffding's lemma);
* indices are stored rank-major ([k, F] byte planes), log-prob levels
  frame-major; all arrays are compressed together with zstd.

Integrity: each record has a CRC32 (kept in the shard footer and the index),
the footer and the index carry their own CRC32, and the index records each
shard's size, so truncation and bit flips raise :class:`CorruptStoreError`
naming the file (and utterance) instead of returning wrong labels.

Disk cost at k = 20 (both the CPU config, 30 units, and the large
LibriSpeech config, 512 units, emit 25 frames/s):

* computed, uncompressed: k * (2 B index + 2 B value) = 80 B/frame
  = 7.2 MB per hour of audio (x 7,200 h = 52 GB);
* measured, CPU config: the real stores of the main job and of the bed are
  23.5 and 22.9 B/frame = 2.1 MB per hour of audio (x 7,200 h = 15 GB);
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
import re
import struct
import zlib
from collections import namedtuple

import numpy as np
import torch
import zstandard

FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)  # format 2 (codebook as a uint16 list) is read, not appended to
QUANT_SCHEDULE = (4.0, 4.0, 32)  # fine (nats), octave (nats), max step multiple
META_FILE = "meta.json"
INDEX_FILE = "index.kdi"
SHARD_RE = re.compile(r"^shard-r(\d{4})-(\d{5})\.kds$")
SHARD_MAGIC = b"KDSLSHD1"
END_MAGIC = b"KDSLEND1"
BLOCK_MAGIC = b"KDSLBLK1"
TRAILER = struct.Struct("<QQI8s")  # footer offset, footer length, crc, magic
RECORD_HEAD = struct.Struct("<IIII")  # frames, k, codebook size, hypotheses
MAX_Q = 65535

SoftLabels = namedtuple("SoftLabels", ["indices", "log_probs"])


class StoreError(Exception):
    """Base class of soft-label store errors."""


class CorruptStoreError(StoreError):
    """A shard, record or index is truncated or fails its checksum."""


class IncompatibleStoreError(StoreError):
    """The store's metadata does not match what the caller expects."""


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


# ---------------------------------------------------------------- blocks
# A block is a checksummed container of a JSON header and numpy arrays; it
# is the shard footer and the whole index file.


def _pack_block(header, arrays):
    header = dict(header, arrays={})
    body, offset = [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        header["arrays"][name] = [arr.dtype.str, list(arr.shape), offset]
        body.append(arr.tobytes())
        offset += len(body[-1])
    head = json.dumps(header, sort_keys=True).encode()
    rest = struct.pack("<I", len(head)) + head + b"".join(body)
    return BLOCK_MAGIC + struct.pack("<I", zlib.crc32(rest)) + rest


def _unpack_block(buf, where):
    """Returns (header, arrays) of a block; arrays are views into ``buf``."""
    buf = memoryview(buf)
    if len(buf) < 16 or bytes(buf[:8]) != BLOCK_MAGIC:
        raise CorruptStoreError(f"{where}: bad block magic (truncated?)")
    (crc,) = struct.unpack_from("<I", buf, 8)
    if zlib.crc32(buf[12:]) != crc:
        raise CorruptStoreError(f"{where}: checksum mismatch")
    try:  # checksummed, so a failure here means a bug, still reported as such
        (n,) = struct.unpack_from("<I", buf, 12)
        header = json.loads(bytes(buf[16 : 16 + n]))
        base, arrays = 16 + n, {}
        for name, (dtype, shape, off) in header.pop("arrays").items():
            count = int(np.prod(shape, dtype=np.int64))
            arrays[name] = np.frombuffer(
                buf, dtype=dtype, count=count, offset=base + off
            ).reshape(shape)
    except (ValueError, TypeError, KeyError, struct.error) as e:
        raise CorruptStoreError(f"{where}: unreadable block ({e})") from e
    return header, arrays


def _atomic_write(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- records


def _level_table(step, schedule):
    """Quantization levels (in units of ``step``) of the distance below the top-1.

    The gap between levels is 1 up to ``fine`` nats, then doubles every
    ``octave`` nats, at most ``max_mult``; 256 levels (uint8 codes).
    """
    fine, octave, max_mult = schedule
    levels, d = [], 0
    while len(levels) < 256:
        levels.append(d)
        nats = d * step
        d += 1 if nats < fine else min(2 ** (int((nats - fine) // octave) + 1), max_mult)
    return np.array(levels, np.int64)


def quant_bound(distance, step=0.1, schedule=None):
    """Documented per-entry bound on ``|logp_read - logp|`` (see module docstring).

    Arguments
    ---------
    distance : numpy.ndarray or float
        The entry's distance below its frame's top-1 log-prob, in nats (>= 0).
    step : float
        The store's ``quant_step``.
    schedule : tuple, optional
        The store's ``quant_schedule`` (default: this version's).

    Returns
    -------
    numpy.ndarray
        Half the quantization step at that distance (plus the top-1 offset).

    Example
    -------
    >>> [round(float(x), 3) for x in quant_bound(np.array([0.0, 5.0, 30.0]))]
    [0.05, 0.1, 1.6]
    """
    fine, octave, max_mult = schedule or QUANT_SCHEDULE
    d = np.asarray(distance, np.float64) + step / 2  # the grid is anchored at the quantized top-1
    mult = np.where(d < fine, 1, np.minimum(2.0 ** (np.floor((d - fine) / octave) + 1), max_mult))
    return mult * step / 2


def _nearest_level_lut(table):
    """(below, mid) for :func:`_quantize`: ``below[n]`` indexes the last level <= n
    (n in whole steps), ``mid[j]`` is the midpoint of levels j and j + 1
    (infinite after the last)."""
    below = np.searchsorted(table, np.arange(table[-1] + 1), side="right") - 1
    mid = np.append((table[:-1] + table[1:]) / 2, np.inf)
    return below, mid


def _quantize(log_probs, step, table):
    """Top-1 codes [...] (uint16) and level differences [..., k] (uint8) of
    sorted top-k log-probs, for any leading shape (one utterance or a padded
    batch); see the module docstring. ``table`` is ``_nearest_level_lut``.
    """
    a = -log_probs.astype(np.float64) / step
    q1 = np.clip(np.rint(a[..., 0]), 0, MAX_Q)  # top-1 on the fine grid
    u = a - q1[..., None]  # distance below the quantized top-1, in steps
    # Nearest level: levels are whole steps, so it is the last one <= floor(u)
    # (a lookup) or the next; ties go down. (searchsorted was 3x slower.)
    below, mid = table
    j = below.take(np.clip(np.floor(u), 0, len(below) - 1).astype(np.intp))
    level = j + (u > mid.take(j))
    level[..., 0] = 0
    dlevel = np.empty(level.shape, np.uint8)  # >= 0: sorted, and the quantizer is monotone
    dlevel[..., 0] = 0
    np.subtract(level[..., 1:], level[..., :-1], out=dlevel[..., 1:], casting="unsafe")
    return q1.astype("<u2"), dlevel


def _bitmap_codebook(vocab_size, codebook_size):
    """Whether a record stores its codebook as a bitmap over the vocabulary
    (no larger than the uint16 list) or as the list; ``vocab_size`` 0 (format 2)
    means the list."""
    return 0 < (vocab_size + 7) // 8 <= 2 * codebook_size


def _pack(indices, q1, dlevel, nbest, vocab_size):
    """Record payload (before zstd) of one utterance from its quantized log-probs."""
    frames, k = indices.shape
    counts = np.bincount(indices.ravel(), minlength=vocab_size)
    used = counts > 0
    codebook = np.flatnonzero(used)  # the tokens of this utterance's top-k, ascending
    groups = b""
    if len(codebook) > 256:  # two-byte codes: the 256 most frequent tokens get high byte 0, and so on
        by_count = np.empty(len(codebook), np.int64)
        by_count[np.argsort(-counts[codebook], kind="stable")] = np.arange(len(codebook))
        group = (by_count // 256).astype(np.uint8)
        codebook = codebook[np.argsort(group, kind="stable")]
        groups = group.tobytes()
    rank = np.empty(vocab_size, np.int64)
    rank[codebook] = np.arange(len(codebook))
    width = 1 if len(codebook) <= 256 else 2
    local = np.ascontiguousarray(rank[indices].T, dtype=f"<u{width}")  # [k, F]
    if _bitmap_codebook(vocab_size, len(codebook)):
        codebook_bytes = np.packbits(used).tobytes() + groups
    else:  # a large vocabulary: the list (in code order) is smaller than the bitmap
        codebook_bytes = codebook.astype("<u2").tobytes()
    parts = [
        RECORD_HEAD.pack(frames, k, len(codebook), len(nbest)),
        codebook_bytes,
        local.view(np.uint8).reshape(k, frames, width).transpose(2, 0, 1).tobytes(),
        q1.view(np.uint8).reshape(frames, 2).T.tobytes(),
        dlevel.tobytes(),  # [F, k]: one flat cumsum decodes it
    ]
    if nbest:
        parts.append(np.array([len(t) for t, _ in nbest], "<i4").tobytes())
        parts.append(np.array([s for _, s in nbest], "<f8").tobytes())
        parts.append(np.concatenate([np.asarray(t, "<i4") for t, _ in nbest]).tobytes())
    return b"".join(parts)


def _decode(buf, step, values, vocab_size):
    """Returns (indices int64 [F, k], log_probs float32 [F, k], nbest blob).

    ``values`` is ``-step * levels`` (float32), the decoded distance of each
    level code. Indices are stored rank-major ([k, F], compresses better);
    the level differences frame-major, so one flat cumsum decodes them.
    ``vocab_size`` 0 reads a format-2 record (codebook as a uint16 list).
    The codebook is a bitmap or a list as :func:`_bitmap_codebook` says.
    """
    frames, k, ncb, nhyp = RECORD_HEAD.unpack_from(buf, 0)
    off = RECORD_HEAD.size
    if _bitmap_codebook(vocab_size, ncb):
        nbytes = (vocab_size + 7) // 8
        codebook = np.flatnonzero(np.unpackbits(np.frombuffer(buf, np.uint8, nbytes, off), count=vocab_size))
        if len(codebook) != ncb:
            raise ValueError(f"codebook bitmap has {len(codebook)} tokens, header says {ncb}")
        off += nbytes
        if ncb > 256:
            codebook = codebook[np.argsort(np.frombuffer(buf, np.uint8, ncb, off), kind="stable")]
            off += ncb
    else:
        codebook = np.frombuffer(buf, "<u2", ncb, off).astype(np.int64)
        off += 2 * ncb
    n = frames * k
    if ncb <= 256:
        local = np.frombuffer(buf, np.uint8, n, off).reshape(k, frames)
        off += n
    else:
        raw = np.frombuffer(buf, np.uint8, 2 * n, off).reshape(2, k, frames)
        local = raw[0] | (raw[1].astype(np.uint16) << 8)
        off += 2 * n
    q = np.frombuffer(buf, np.uint8, 2 * frames, off).reshape(2, frames)
    off += 2 * frames
    dlevel = np.frombuffer(buf, np.uint8, n, off)
    off += n
    indices = codebook.take(local.T)
    level = np.cumsum(dlevel, dtype=np.intp).reshape(frames, k)  # column 0 holds 0
    if frames:
        level -= level[:, :1]
    log_probs = values.take(level)
    top = q[0] | (q[1].astype(np.uint16) << 8)
    log_probs -= (step * top.astype(np.float32))[:, None]
    return indices, log_probs, (nhyp, off)


def _decode_nbest(buf, nhyp, off):
    lengths = np.frombuffer(buf, "<i4", nhyp, off)
    scores = np.frombuffer(buf, "<f8", nhyp, off + 4 * nhyp)
    tokens = np.frombuffer(buf, "<i4", int(lengths.sum()), off + 12 * nhyp)
    splits = np.split(tokens, np.cumsum(lengths)[:-1]) if nhyp else []
    return [(t.tolist(), float(s)) for t, s in zip(splits, scores)]


# ---------------------------------------------------------------- shards


def _read_footer(path):
    """Validates a finalized shard's framing; returns (header, arrays, size).

    Reads only the trailer and footer, so scanning a large store is cheap;
    records are checked against their CRC when read.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < len(SHARD_MAGIC) + TRAILER.size or f.read(8) != SHARD_MAGIC:
                raise CorruptStoreError(f"{path}: not a shard or truncated")
            f.seek(size - TRAILER.size)
            off, length, crc, magic = TRAILER.unpack(f.read(TRAILER.size))
            where = struct.pack("<QQ", off, length)
            if magic != END_MAGIC or zlib.crc32(where) != crc:
                raise CorruptStoreError(f"{path}: bad trailer (truncated or corrupt)")
            if off < len(SHARD_MAGIC) or off + length != size - TRAILER.size:
                raise CorruptStoreError(f"{path}: footer position does not match size")
            f.seek(off)
            footer = f.read(length)
    except OSError as e:
        raise CorruptStoreError(f"{path}: unreadable ({e})") from e
    header, arrays = _unpack_block(footer, path)
    return header, arrays, size


def _shards(store_dir, rank=None):
    """Finalized shard names, sorted (optionally only those of ``rank``)."""
    names = []
    for name in os.listdir(store_dir):
        m = SHARD_RE.match(name)
        if m and (rank is None or int(m.group(1)) == rank):
            names.append(name)
    return sorted(names)


def stored_ids(store_dir):
    """Utterance IDs in the finalized shards of a store (any rank).

    Arguments
    ---------
    store_dir : str
        Store directory; a missing directory holds no IDs.

    Returns
    -------
    set of str

    Example
    -------
    >>> import tempfile
    >>> stored_ids(tempfile.mkdtemp())
    set()
    """
    if not os.path.isdir(store_dir):
        return set()
    ids = set()
    for name in _shards(store_dir):
        _, arrays, _ = _read_footer(os.path.join(store_dir, name))
        ids.update(i.decode() for i in arrays["ids"].tolist())
    return ids


def _read_meta(store_dir):
    path = os.path.join(store_dir, META_FILE)
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as e:
        raise CorruptStoreError(f"{path}: unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise CorruptStoreError(f"{path}: not a format-{FORMAT_VERSION} store")
    return meta


def _check(meta, expected, where, exact=False):
    extra = sorted(set(meta) - set(expected)) if exact else []
    if extra:
        raise IncompatibleStoreError(f"{where}: has metadata {extra[0]!r} that was not given")
    for key, want in expected.items():
        if key not in meta:
            raise IncompatibleStoreError(f"{where}: no metadata key {key!r} (expected {want!r})")
        if meta[key] != want:
            raise IncompatibleStoreError(
                f"{where}: {key} mismatch: expected {want!r}, found {meta[key]!r}"
            )


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


def merge_index(store_dir):
    """Builds ``index.kdi`` over all finalized shards (run once, after all ranks).

    Validates every shard, refuses duplicate IDs and shards whose metadata
    differs, and rewrites the index only when its content changes.

    Arguments
    ---------
    store_dir : str
        Store directory.

    Returns
    -------
    int
        Number of utterances in the store.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> SoftLabelWriter(d, k=1, vocab_size=2, meta={}).close()
    >>> merge_index(d)
    0
    """
    meta = _read_meta(store_dir)
    names, sizes, cols = _shards(store_dir), [], {}
    for n, name in enumerate(names):
        path = os.path.join(store_dir, name)
        header, arrays, size = _read_footer(path)
        _check(header["meta"], meta, path, exact=True)
        sizes.append(size)
        for key, arr in dict(arrays, shard=np.full(len(arrays["ids"]), n, "<i4")).items():
            cols.setdefault(key, []).append(arr)
    if not names:
        cols = {"ids": [np.array([], "S1")], "shard": [np.array([], "<i4")]}
        cols.update({c: [np.array([], "<i8")] for c in ("offset", "length", "frames")})
        cols["crc"] = [np.array([], "<u4")]
    cols = {key: np.concatenate(arrs) for key, arrs in cols.items()}
    order = np.argsort(cols["ids"], kind="stable")
    cols = {key: arr[order] for key, arr in cols.items()}
    dup = np.nonzero(cols["ids"][1:] == cols["ids"][:-1])[0]
    if len(dup):
        uid = cols["ids"][dup[0]].decode()
        where = [names[s] for s in cols["shard"][dup[0] : dup[0] + 2]]
        raise StoreError(f"{store_dir}: utterance {uid} is stored twice ({where})")
    header = {"meta": meta, "shards": names, "sizes": sizes}
    data = _pack_block(header, cols)
    path = os.path.join(store_dir, INDEX_FILE)
    if not os.path.exists(path) or open(path, "rb").read() != data:
        _atomic_write(path, data)
    return len(cols["ids"])


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
