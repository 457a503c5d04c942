"""Media-noise clips: the noise manifest, its train / test / reserved split, and the clip pool.

The contaminator (:mod:`kd_brain.noise.contamination`) draws its noises from a
``NoisePool``; the split keeps the clips and sources of the test conditions
out of training.
"""

import csv
import hashlib
import logging
import os
import random

import numpy as np

from kd_brain.noise.rooms import read_audio

logger = logging.getLogger(__name__)

POOLS = ("train", "test", "reserved")
DEFAULT_RESERVED = ("fillets-en", "singularity")  # noise sources only the rerecorded condition uses


class NoiseError(ValueError):
    """Bad noise input; the message names the file or setting."""


def read_noise_manifest(csv_path):
    """Reads a noise manifest (``ID, duration, path, kind, source``) into a list of dicts."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"ID", "path", "kind", "source"} - set(rows[0] if rows else {})
    if missing:
        raise NoiseError(f"{csv_path}: missing columns {sorted(missing)} (or no rows)")
    return rows


def split_noise_pool(rows, test_fraction=0.2, seed=0, reserved_sources=DEFAULT_RESERVED):
    """Splits noise clips into ``train`` / ``test`` / ``reserved`` pools (lists of IDs).

    Clips of ``reserved_sources`` form the reserved pool (never used by training nor by
    noisy_sim). Every other source is split on its own, seeded, so both pools hold every
    source; a source with >= 2 clips gives the test pool at least one.

    Example
    -------
    >>> rows = [dict(ID=f"m{i}", source="a") for i in range(10)] + [dict(ID="r", source="b")]
    >>> p = split_noise_pool(rows, 0.2, 0, reserved_sources=["b"])
    >>> len(p["train"]), len(p["test"]), p["reserved"]
    (8, 2, ['r'])
    """
    if not 0 <= test_fraction < 1:
        raise NoiseError(f"test_fraction={test_fraction}: must be in [0, 1)")
    pools = {p: [] for p in POOLS}
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r["ID"])
    unknown = set(reserved_sources) - set(by_source)
    if unknown:
        raise NoiseError(f"reserved_sources {sorted(unknown)} not in the noise manifest "
                         f"(sources: {sorted(by_source)})")
    for source, ids in sorted(by_source.items()):
        ids = sorted(ids)
        if source in reserved_sources:
            pools["reserved"] += ids
            continue
        random.Random(f"{seed}|{source}").shuffle(ids)
        n_test = min(len(ids) - 1, max(1, round(test_fraction * len(ids)))) if test_fraction > 0 else 0
        pools["test"] += sorted(ids[:n_test])
        pools["train"] += sorted(ids[n_test:])
    return pools


class NoisePool:
    """Noise clips held in memory as int16 (peak-normalised), with random-segment access.

    Decoding the shared Ogg set (~2.5 h) takes ~30 s; with ``cache_dir`` each clip is decoded
    once to an int16 ``.npy`` there and memory-mapped afterwards (instant loads, pages shared
    between dataloader workers).

    Arguments
    ---------
    rows : list of dict
        Manifest rows (``ID``, ``path``; other columns kept as metadata).
    root : str
        Directory that relative ``path`` entries are resolved against.
    sample_rate : int
        Expected sample rate.
    min_duration_s : float
        Shorter clips are refused (a few-ms clip looped is a buzz, not media noise).
    resample : bool
        Resample clips at another rate with torchaudio instead of refusing them.
    cache_dir : str or None
        Where decoded clips are cached (None: decode into memory).

    Example
    -------
    >>> import tempfile, os, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "n.wav"), np.random.randn(4000) * 0.1, 16000)
    >>> pool = NoisePool([dict(ID="n", path="n.wav")], root=d)
    >>> pool.segment(0, 3000, 2000).shape  # loops past the end
    (2000,)
    """

    def __init__(self, rows, root, sample_rate=16000, min_duration_s=0.1, resample=False, cache_dir=None):
        if not rows:
            raise NoiseError("empty noise pool (check the pool split settings)")
        self.rows, self.sample_rate = rows, sample_rate
        self.ids = [r["ID"] for r in rows]
        self.index = {i: k for k, i in enumerate(self.ids)}
        self.audio, self.power = [], []
        for r in rows:
            path = r["path"] if os.path.isabs(r["path"]) else os.path.join(root, r["path"])
            clip = self._load(path, resample, cache_dir)
            if len(clip) < min_duration_s * sample_rate:
                raise NoiseError(f"{path}: noise is {len(clip) / sample_rate * 1000:.1f} ms long, "
                                 f"shorter than min_duration_s={min_duration_s}")
            power = float(np.mean(np.square(clip, dtype=np.float64)))
            if power == 0:
                raise NoiseError(f"{path}: noise is silent")
            self.audio.append(clip)
            self.power.append(power)

    def _load(self, path, resample, cache_dir):
        if cache_dir is None:
            return self._to_int16(read_audio(path, self.sample_rate, resample, NoiseError))
        try:
            st = os.stat(path)
        except OSError as e:
            raise NoiseError(f"{path}: cannot read noise: {e}") from e
        key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}"
                           .encode()).hexdigest()[:12]
        cached = os.path.join(cache_dir, f"{os.path.basename(path)}.{key}.npy")
        if not os.path.isfile(cached):
            os.makedirs(cache_dir, exist_ok=True)
            tmp = cached + ".tmp.npy"
            np.save(tmp, self._to_int16(read_audio(path, self.sample_rate, resample, NoiseError)))
            os.replace(tmp, cached)
        return np.load(cached, mmap_mode="r")

    @staticmethod
    def _to_int16(audio):
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        scale = 32767.0 / peak if peak > 0 else 0.0
        return np.round(audio * scale).astype(np.int16)

    @classmethod
    def from_csv(cls, csv_path, root=None, ids=None, **kwargs):
        """Loads the clips of a manifest (only ``ids`` if given); ``root`` defaults to the
        manifest's parent's parent (shared/data layout: ``noise/noise.csv``, paths ``noise/...``)."""
        rows = read_noise_manifest(csv_path)
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["ID"] in wanted]
        root = root if root is not None else os.path.dirname(os.path.dirname(os.path.abspath(csv_path)))
        return cls(rows, root, **kwargs)

    def __len__(self):
        return len(self.ids)

    def segment(self, k, offset, length):
        """``length`` samples of clip ``k`` from ``offset``, looping; float32 numpy."""
        clip = self.audio[k]
        if offset + length <= len(clip):
            seg = clip[offset:offset + length]
        else:
            seg = np.take(clip, np.arange(offset, offset + length) % len(clip))
        return seg.astype(np.float32) / 32768.0
