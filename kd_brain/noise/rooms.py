"""Room impulse responses for contamination: a bank of simulated rooms and measured RIR sets.

Simulating a room with pyroomacoustics costs 20-250 ms (image-source order 17-50, 5 sources),
i.e. more than the whole 8 ms budget of contaminating a 4-s utterance at 500x real time.
So rooms are simulated once, at preparation time, into a *room bank*: N shoebox rooms, each
with one microphone and M source positions (one RIR per position), saved as one ``.pt`` file.
Per example the contaminator draws a room and distinct positions for the speech and each
noise. The bank is split, seeded, into ``train`` and ``test`` rooms.

Both room sources here (``RoomBank`` and ``MeasuredRIRs``) share one interface:
``sample(rng, n_sources) -> RoomDraw`` and ``rir(rir_id) -> (tensor, peak)``. Every RIR is
stored trimmed to start ``GUARD`` samples before its peak (the direct path), with the peak
index kept, so the speech's direct-path delay can be compensated exactly.
"""

import csv
import logging
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

from kd_brain.data.prepare import process_pool

logger = logging.getLogger(__name__)

GUARD = 40  # samples kept before the peak: pyroomacoustics' fractional-delay filter is 81 taps
BANK_VERSION = 1


class RIRError(ValueError):
    """Bad room impulse response input; the message names the file or setting."""


@dataclass
class RoomDraw:
    """The RIRs drawn for one example: ``rir_ids[0]`` is the speech's, then one per noise."""

    room: str
    rir_ids: list


def trim_rir(rir, name, sample_rate, max_onset_s=0.25, max_len_s=None):
    """Trims an RIR to start just before its peak; returns ``(float32 tensor, peak index)``.

    Measured RIRs carry some leading silence (up to ~140 ms in shared/data/rir); anything
    before ``peak - GUARD`` is dropped. An RIR whose peak lies later than ``max_onset_s``
    is refused: it is more likely a wrong file than a long pre-delay.

    Arguments
    ---------
    rir : array-like
        1-D impulse response.
    name : str
        File or ID named in errors.
    sample_rate : int
        Its sample rate.
    max_onset_s : float
        Latest accepted peak position, seconds from the start of the file.
    max_len_s : float or None
        Length kept after the peak (None: everything).

    Returns
    -------
    (torch.Tensor, int)

    Example
    -------
    >>> r, p = trim_rir(np.r_[np.zeros(100), 1.0, 0.5, 0.25], "x", 16000)
    >>> p, len(r)
    (40, 43)
    """
    rir = np.asarray(rir, dtype=np.float32)
    if rir.ndim != 1 or rir.size == 0 or not np.isfinite(rir).all():
        raise RIRError(f"{name}: RIR must be a non-empty, finite 1-D signal")
    peak = int(np.argmax(np.abs(rir)))
    if rir[peak] == 0:
        raise RIRError(f"{name}: RIR is all zeros")
    if peak > max_onset_s * sample_rate:
        raise RIRError(
            f"{name}: RIR peak at {peak / sample_rate:.3f} s, not near the start of the file "
            f"(max_onset_s={max_onset_s}); trim its leading silence or raise max_onset_s"
        )
    start = max(0, peak - GUARD)
    end = len(rir) if max_len_s is None else min(len(rir), peak + int(max_len_s * sample_rate) + 1)
    rir = rir[start:end] / np.abs(rir[peak])  # peak-normalised: absolute level is set by the SNR
    return torch.from_numpy(np.ascontiguousarray(rir)), peak - start


def _simulate_one(args):
    """Simulates one shoebox room (worker function; seeded per room, independent of workers)."""
    import pyroomacoustics as pra

    idx, o = args
    rng = np.random.default_rng([o["seed"], idx])
    dims = rng.uniform(o["dims_low"], o["dims_high"])
    rt60 = float(rng.uniform(*o["rt60_range"]))
    try:
        absorption, order = pra.inverse_sabine(rt60, dims)
    except ValueError as e:  # Sabine cannot reach a short RT60 in a large room
        raise RIRError(f"room {idx}: rt60 {rt60:.2f} s unreachable in a {dims.round(1).tolist()} m room "
                       f"({e}); raise rt60_range's low end or lower dims_high") from e
    order = min(order, o["max_order"])
    room = pra.ShoeBox(dims, fs=o["sample_rate"], materials=pra.Material(absorption),
                       max_order=order, air_absorption=False)
    margin = np.array([o["wall_margin"]] * 3)
    mic = rng.uniform(margin, dims - margin)
    room.add_microphone(mic)
    sources = []
    while len(sources) < o["sources_per_room"]:  # rejection: keep sources away from the mic
        pos = rng.uniform(margin, dims - margin)
        if np.linalg.norm(pos - mic) >= o["min_mic_distance"]:
            sources.append(pos)
            room.add_source(pos)
    room.compute_rir()
    rirs, peaks = zip(*(trim_rir(room.rir[0][k], f"room {idx} source {k}", o["sample_rate"],
                                 max_len_s=rt60) for k in range(len(sources))))
    return dict(dims=dims.tolist(), rt60=rt60, absorption=float(absorption), max_order=int(order),
                mic=mic.tolist(), sources=[s.tolist() for s in sources], rirs=list(rirs), peaks=list(peaks))


def simulate_room_bank(
    path,
    n_rooms=200,
    n_test_rooms=40,
    sources_per_room=5,
    rt60_range=(0.2, 0.8),
    dims_low=(3.0, 3.0, 2.4),
    dims_high=(8.0, 7.0, 3.5),
    max_order=25,
    wall_margin=0.4,
    min_mic_distance=0.5,
    sample_rate=16000,
    seed=0,
    num_workers=1,
):
    """Simulates a bank of shoebox rooms and saves it to ``path`` (``.pt``).

    Absorption comes from the drawn RT60 by inverse Sabine; the image-source order is capped
    at ``max_order`` for speed (at 25 the measured RT60 matches the drawn one within ~10 %
    for these room sizes; the uncapped order overshoots it). RIRs are cut at RT60 after the
    direct path. Skipped when ``path`` holds a bank with the same options.

    Arguments
    ---------
    path : str
        Output file.
    n_rooms, n_test_rooms : int
        Rooms in the bank, and how many of them (chosen at random) are held out as ``test``.
    sources_per_room : int
        Source positions (RIRs) per room; must be >= 1 + the most noises per example.
    rt60_range : (float, float)
        Uniform range of the target RT60 (s).
    dims_low, dims_high : 3 floats
        Uniform range of the room dimensions (m).
    max_order : int
        Cap on the image-source order.
    wall_margin, min_mic_distance : float
        Metres between positions and walls, and between each source and the microphone.
    seed : int
        Rooms are reproducible for a seed, whatever ``num_workers``.

    Returns
    -------
    RoomBank

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "rooms.pt")
    >>> bank = simulate_room_bank(p, n_rooms=3, n_test_rooms=1, sources_per_room=2, max_order=3)
    >>> len(bank.room_ids("train")), len(bank.room_ids("test"))
    (2, 1)
    """
    options = dict(n_rooms=n_rooms, n_test_rooms=n_test_rooms, sources_per_room=sources_per_room,
                   rt60_range=list(rt60_range), dims_low=list(dims_low), dims_high=list(dims_high),
                   max_order=max_order, wall_margin=wall_margin, min_mic_distance=min_mic_distance,
                   sample_rate=sample_rate, seed=seed)
    if os.path.isfile(path):
        try:
            bank = RoomBank(path)
            if bank.options == options:
                logger.info("Room bank %s exists with the same options: skipped", path)
                return bank
        except RIRError:
            pass
        logger.info("Room bank %s: options changed, re-simulating", path)
    if not 0 <= n_test_rooms < n_rooms:
        raise RIRError(f"n_test_rooms={n_test_rooms}: must be in [0, n_rooms={n_rooms})")
    jobs = [(i, options) for i in range(n_rooms)]
    if num_workers > 1:
        with process_pool(num_workers) as pool:
            rooms = list(pool.map(_simulate_one, jobs, chunksize=8))
    else:
        rooms = [_simulate_one(j) for j in jobs]
    test = set(np.random.default_rng(seed).permutation(n_rooms)[:n_test_rooms].tolist())
    for i, r in enumerate(rooms):
        r.update(id=f"sim{i:04d}", split="test" if i in test else "train")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(dict(version=BANK_VERSION, options=options, rooms=rooms), path + ".tmp")
    os.replace(path + ".tmp", path)
    logger.info("Room bank: %d rooms (%d test) written to %s", n_rooms, n_test_rooms, path)
    return RoomBank(path)


class RoomBank:
    """A bank of simulated rooms (see ``simulate_room_bank``), restricted to one split.

    RIR IDs are ``<room>/<source index>``.

    Arguments
    ---------
    path : str
        The ``.pt`` file written by ``simulate_room_bank``.
    split : "train", "test" or None
        Rooms that ``sample`` draws from (None: all).

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "rooms.pt")
    >>> _ = simulate_room_bank(p, n_rooms=2, n_test_rooms=1, sources_per_room=3, max_order=3)
    >>> bank = RoomBank(p, split="train")
    >>> draw = bank.sample(np.random.default_rng(0), 3)
    >>> len(draw.rir_ids), bank.rir(draw.rir_ids[0])[0].dim()
    (3, 1)
    """

    def __init__(self, path, split=None):
        try:
            data = torch.load(path, weights_only=True)
        except Exception as e:
            raise RIRError(f"{path}: cannot read room bank: {e}") from e
        if not isinstance(data, dict) or data.get("version") != BANK_VERSION:
            raise RIRError(f"{path}: not a room bank of version {BANK_VERSION}; re-simulate it")
        if split not in (None, "train", "test"):
            raise RIRError(f"split={split!r}: must be 'train', 'test' or None")
        self.path, self.split, self.options = path, split, data["options"]
        self.sample_rate = self.options["sample_rate"]
        self.rooms = {r["id"]: r for r in data["rooms"]}
        self._ids = [i for i, r in self.rooms.items() if split is None or r["split"] == split]
        if not self._ids:
            raise RIRError(f"{path}: no rooms in split {split!r}")

    def room_ids(self, split=None):
        """IDs of the rooms in ``split`` (None: this bank's own split)."""
        if split is None:
            return list(self._ids)
        return [i for i, r in self.rooms.items() if r["split"] == split]

    def sample(self, rng, n_sources):
        """Draws a room of this split and ``n_sources`` distinct source positions in it."""
        room = self._ids[rng.integers(len(self._ids))]
        m = len(self.rooms[room]["rirs"])
        if n_sources > m:
            raise RIRError(f"{self.path}: {n_sources} sources asked, rooms have {m} positions "
                           "(raise sources_per_room)")
        return RoomDraw(room, [f"{room}/{k}" for k in rng.choice(m, n_sources, replace=False)])

    def rir(self, rir_id):
        """Returns ``(rir tensor, peak index)`` for an ID ``<room>/<k>``."""
        room, k = rir_id.rsplit("/", 1)
        r = self.rooms[room]
        return r["rirs"][int(k)], r["peaks"][int(k)]


def read_audio(path, sample_rate, resample=False, error=RIRError):
    """Reads a file as mono float32 at ``sample_rate``; errors name the file.

    With ``resample=True`` other rates are converted with torchaudio's resampler; otherwise
    a rate mismatch is an error.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.ones(80) * 0.5, 8000)
    >>> read_audio(p, 16000, resample=True).shape
    (160,)
    """
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing/corrupt files
        raise error(f"{path}: cannot read audio: {e}") from e
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        if not resample:
            raise error(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (or allow resampling)")
        audio = torchaudio.functional.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
    return audio


class MeasuredRIRs:
    """Measured RIRs from a manifest (``ID, duration, path, room``), e.g. shared/data/rir.

    ``sample`` draws one ``room`` group (with probability proportional to its number of RIRs,
    so a group of one file is rare), then distinct RIRs of that group for the speech and each
    noise (with replacement when the group has fewer RIRs than sources): the measurements of
    one group stand for different source positions in one real building.

    Arguments
    ---------
    csv_path : str
        The manifest; relative ``path`` entries are resolved against ``root``.
    root : str or None
        Defaults to the manifest's parent's parent (shared/data layout: ``rir/rir.csv`` with
        paths ``rir/...``).
    sample_rate : int
        Expected rate (see ``resample``).
    rooms : list of str or None
        Room groups to use (None: all).
    max_onset_s : float
        Latest accepted RIR peak position (see ``trim_rir``).
    max_len_s : float or None
        Length kept after the peak (None: the whole measured tail).
    resample : bool
        Resample RIRs at another rate with torchaudio instead of refusing them.
    split : "train", "test" or None
        Keep only rows of this ``split`` column value (a manifest whose rooms are held out
        like the room bank's, e.g. ``kd_brain.noise.rirs_noises.export_simulated_rirs``); None: all.

    Example
    -------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "r.wav"), np.r_[1.0, 0.3, 0.1], 16000)
    >>> _ = open(os.path.join(d, "rir.csv"), "w").write("ID,duration,path,room\\nr1,0.1,r.wav,hall\\n")
    >>> MeasuredRIRs(os.path.join(d, "rir.csv"), root=d).sample(np.random.default_rng(0), 2).rir_ids
    ['r1', 'r1']
    """

    def __init__(self, csv_path, root=None, sample_rate=16000, rooms=None, max_onset_s=0.25,
                 max_len_s=None, resample=False, split=None):
        root = root if root is not None else os.path.dirname(os.path.dirname(os.path.abspath(csv_path)))
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if split is not None:
            if split not in ("train", "test"):
                raise RIRError(f"split={split!r}: must be 'train', 'test' or None")
            if rows and "split" not in rows[0]:  # a training room source must say which rooms are held out
                raise RIRError(f"{csv_path}: no split column, so no held-out rooms (split={split!r} asked)")
            rows = [r for r in rows if r["split"] == split]
        self.sample_rate, self.rirs, self.groups = sample_rate, {}, {}
        for row in rows:
            if rooms is not None and row["room"] not in rooms:
                continue
            path = row["path"] if os.path.isabs(row["path"]) else os.path.join(root, row["path"])
            audio = read_audio(path, sample_rate, resample)
            self.rirs[row["ID"]] = trim_rir(audio, path, sample_rate, max_onset_s, max_len_s)
            self.groups.setdefault(row["room"], []).append(row["ID"])
        if not self.rirs:
            raise RIRError(f"{csv_path}: no RIRs (rooms={rooms}, split={split})")
        self._rooms = sorted(self.groups)

    def sample(self, rng, n_sources):
        """Draws a room group (weighted by its number of RIRs), then RIRs of it for ``n_sources``."""
        sizes = np.array([len(self.groups[r]) for r in self._rooms], dtype=np.float64)
        room = self._rooms[rng.choice(len(self._rooms), p=sizes / sizes.sum())]
        ids = self.groups[room]
        pick = rng.choice(len(ids), n_sources, replace=n_sources > len(ids))
        return RoomDraw(room, [ids[k] for k in pick])

    def rir(self, rir_id):
        """Returns ``(rir tensor, peak index)``."""
        return self.rirs[rir_id]
