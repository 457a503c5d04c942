"""Files of a soft-label store: checksummed blocks, shards and their footers, metadata, the merged index.

Integrity: each record has a CRC32 (kept in the shard footer and the index),
the footer and the index carry their own CRC32, and the index records each
shard's size, so truncation and bit flips raise :class:`CorruptStoreError`
naming the file (and utterance) instead of returning wrong labels.
"""

import json
import os
import re
import struct
import zlib

import numpy as np

from kd_brain.pipeline.atomic import write_bytes

FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)  # format 2 (codebook as a uint16 list) is read, not appended to
META_FILE = "meta.json"
INDEX_FILE = "index.kdi"
SHARD_RE = re.compile(r"^shard-r(\d{4})-(\d{5})\.kds$")
SHARD_MAGIC = b"KDSLSHD1"
END_MAGIC = b"KDSLEND1"
BLOCK_MAGIC = b"KDSLBLK1"
TRAILER = struct.Struct("<QQI8s")  # footer offset, footer length, crc, magic


class StoreError(Exception):
    """Base class of soft-label store errors."""


class CorruptStoreError(StoreError):
    """A shard, record or index is truncated or fails its checksum."""


class IncompatibleStoreError(StoreError):
    """The store's metadata does not match what the caller expects."""


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
    write_bytes(path, data)  # all or nothing; a failed write (full disk) names the file


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
    >>> from kd_brain.store import SoftLabelWriter
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
