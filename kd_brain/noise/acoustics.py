"""Reverberation times of the rooms: Sabine for the simulated bank, Schroeder for measured RIRs.

The WER breakdowns (:mod:`kd_brain.results.breakdown`) bucket utterances by the RT60
of the room they were heard in: simulated rooms know theirs (the bank's
stored value, else Sabine from dimensions and absorption); measured rooms
get one estimated from the RIR's energy decay curve.
"""

import csv
import os

import numpy as np


def sabine_rt60(dims, absorption):
    """Sabine's RT60 (s) of a shoebox room: ``24 ln(10) V / (c S a)``, c = 343 m/s.

    The inverse of ``pyroomacoustics.inverse_sabine``, which set the bank's absorption.

    Example
    -------
    >>> round(sabine_rt60([6.379, 3.857, 2.740], 0.15177), 3)
    0.68
    """
    lx, ly, lz = dims
    volume, surface = lx * ly * lz, 2.0 * (lx * ly + lx * lz + ly * lz)
    return float(24.0 * np.log(10.0) * volume / (343.0 * surface * absorption))


def _above_noise(energy, sample_rate, window_s=0.01):
    """The squared RIR up to where its 10-ms envelope nears the noise floor, floor subtracted; and
    the decay's range in dB. The floor is the mean energy of the last tenth (measured RIRs end in
    noise, which would otherwise flatten the decay curve and inflate the RT60)."""
    w = max(1, int(window_s * sample_rate))
    env = energy[:len(energy) // w * w].reshape(-1, w).mean(axis=1)
    floor = energy[-max(w, len(energy) // 10):].mean()
    near = np.nonzero(env <= floor * 10 ** 0.5)[0]  # within 5 dB of the floor
    end = near[0] * w if len(near) else len(energy)
    decay_range = 10.0 * np.log10(env.max() / floor) if floor > 0 else np.inf
    return np.maximum(energy[:end] - floor, 0.0), decay_range


def schroeder_rt60(rir, sample_rate):
    """RT60 (s) of an impulse response: T30 (else T20) of its Schroeder energy decay curve.

    The decay curve is the backward-integrated energy from the direct path (the peak) on, in
    dB, noise floor compensated (truncated where the decay meets the floor, floor subtracted);
    a line fitted from -5 to -35 dB (-25 dB for T20) is extrapolated to -60 dB. As in ISO 3382
    the floor must lie 10 dB below the fit's end: 45 dB (T30) or 35 dB (T20); else None.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> rir = np.random.default_rng(0).standard_normal(16000) * 10 ** (-3 * t / 0.5)
    >>> round(schroeder_rt60(rir, 16000), 1)
    0.5
    """
    x = np.asarray(rir, dtype=np.float64)
    energy, decay_range = _above_noise(x[int(np.argmax(np.abs(x))):] ** 2, sample_rate)
    total = energy.sum()
    if total <= 0:
        return None
    edc = 10.0 * np.log10(np.maximum(np.cumsum(energy[::-1])[::-1] / total, 1e-30))
    start = int(np.argmax(edc <= -5.0))
    for end_db in (-35.0, -25.0):
        if decay_range >= -end_db + 10.0:
            end = int(np.argmax(edc <= end_db))
            if end - start >= 2:
                slope = np.polyfit(np.arange(start, end + 1) / sample_rate, edc[start:end + 1], 1)[0]
                return float(-60.0 / slope) if slope < 0 else None
    return None


def bank_rt60s(path):
    """``{room: RT60}`` of a simulated room bank (stored value, else Sabine); {} when unreadable."""
    from kd_brain.noise.rooms import RIRError, RoomBank

    try:
        rooms = RoomBank(path).rooms
    except (RIRError, FileNotFoundError):
        return {}
    return {rid: float(r["rt60"]) if r.get("rt60") is not None else sabine_rt60(r["dims"], r["absorption"])
            for rid, r in rooms.items()}


def measured_rt60s(rir_csv, rir_ids, sample_rate=16000):
    """``{RIR ID: schroeder_rt60}`` for ``rir_ids`` of a measured-RIR manifest; unreadable files are left out.

    Paths resolve against the manifest's parent's parent (the shared/data layout).
    """
    from kd_brain.noise.rooms import RIRError, read_audio

    if not os.path.isfile(rir_csv):
        return {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(rir_csv)))
    with open(rir_csv, newline="", encoding="utf-8") as f:
        paths = {r["ID"]: os.path.join(root, r["path"]) for r in csv.DictReader(f) if r["ID"] in rir_ids}
    out = {}
    for rid, path in paths.items():
        try:
            rt60 = schroeder_rt60(read_audio(path, sample_rate, resample=True), sample_rate)
        except RIRError:
            continue
        if rt60 is not None:
            out[rid] = rt60
    return out
