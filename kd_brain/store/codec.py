"""Record codec of the soft-label store: one utterance's top-k as bytes and back.

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
  frame-major; all arrays are compressed together with zstd;
* the side array (only in stores whose meta lists ``side_temperatures``;
  see :mod:`kd_brain.kd.targets`) ends the record, after the N-best section:
  per frame and temperature a log-mass ``x`` (<= log V < 16 nats) as the
  uint16 code ``round((16 - x) * 128)`` (so within 1/256 nats; -inf, no
  tail at K = V, is code 65535; below -496 nats clipped), coded as
  differences along the frames (zigzag, mod 2^16: exact) in [n_T, F] byte
  planes, high bytes first. 5.3 B/frame for three tail masses on the main
  job's teacher, 2.7 for three ``log Z_T`` (float16 took 6.2 and 5.6: its
  low bytes are noise, and ``log Z_1`` rounds to +-1e-7, not 0). Its length
  follows from the header (2 * n_T * F bytes), so records without one, and
  readers that do not know it, are unchanged.
"""

import struct

import numpy as np
import torch

QUANT_SCHEDULE = (4.0, 4.0, 32)  # fine (nats), octave (nats), max step multiple
RECORD_HEAD = struct.Struct("<IIII")  # frames, k, codebook size, hypotheses
MAX_Q = 65535


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
    # (a lookup) or the next; ties go down. (A lookup: searchsorted is 3x slower.)
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


def _check_side(utt_id, side, frames, n_side):
    """The side array of one utterance as float32 [frames, n_side], or a ValueError naming it."""
    if side is None:
        raise ValueError(f"{utt_id}: the store has side_temperatures ({n_side}): pass side [frames, {n_side}]")
    side = torch.as_tensor(side).detach().float().cpu().numpy()
    if side.shape != (frames, n_side):
        raise ValueError(f"{utt_id}: side array {list(side.shape)}, expected [{frames}, {n_side}]")
    if np.isnan(side).any() or (side > SIDE_TOP).any():  # a log-mass is at most log V <= 11.1 nats
        raise ValueError(f"{utt_id}: side array has NaN or values above {SIDE_TOP} nats; refused")
    return side


SIDE_TOP, SIDE_RES, SIDE_NONE = 16.0, 128.0, 65535  # side codes: round((SIDE_TOP - x) * SIDE_RES); -inf


def _pack_side(side):
    """Record tail of a side array [F, n_T] (see the module docstring); empty for n_T = 0."""
    x = side.T.astype(np.float64)
    q = np.where(np.isneginf(x), SIDE_NONE, np.clip(np.rint((SIDE_TOP - x) * SIDE_RES), 0, SIDE_NONE - 1))
    q = q.astype(np.int64)
    d = (np.diff(q, axis=1, prepend=0) + 32768) % 65536 - 32768  # as int16: the wrap is undone on decoding
    z = np.where(d >= 0, 2 * d, -2 * d - 1).astype("<u2")  # zigzag: small steps, small codes
    return np.ascontiguousarray(z).view(np.uint8).reshape(*z.shape, 2)[..., ::-1].transpose(2, 0, 1).tobytes()


def _decode_side(buf, frames, n_side):
    """float32 [F, n_T] from the end of a record payload.

    Example
    -------
    >>> side = np.array([[0.0, -1.5], [-np.inf, 2.25], [-3.1, 2.25]], np.float32)
    >>> _decode_side(bytes(RECORD_HEAD.size) + _pack_side(side), 3, 2).tolist()
    [[0.0, -1.5], [-inf, 2.25], [-3.1015625, 2.25]]
    """
    n = 2 * frames * n_side
    if len(buf) < RECORD_HEAD.size + n:
        raise ValueError(f"record of {len(buf)} bytes has no room for its {n}-byte side array")
    planes = np.frombuffer(buf, np.uint8, n, len(buf) - n).reshape(2, n_side, frames).astype(np.int64)
    z = planes[0] << 8 | planes[1]
    q = np.cumsum(np.where(z % 2 == 0, z // 2, -(z + 1) // 2), axis=1) % 65536
    x = np.where(q == SIDE_NONE, -np.inf, SIDE_TOP - q / SIDE_RES)
    return x.T.astype(np.float32)
