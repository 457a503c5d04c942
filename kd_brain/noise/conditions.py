"""The three test conditions and the noisy dev set, written once (seeded) so that every model is scored
on the same audio.

* ``clean``: the test manifest's audio as is (the manifest points at the prepared WAVs).
* ``noisy_sim``: the training contamination procedure, but with the held-out noise pool
  (``split_noise_pool(...)["test"]``) and the room bank's test rooms.
* ``rerecorded``: an offline stand-in for replaying speech and media through loudspeakers in
  a real room and recording again: *real rooms* (measured RIRs, e.g. shared/data/rir, for
  the speech and every noise), *real media* that training never uses (the reserved noise
  sources, default talk ``fillets-en`` and music ``singularity``), and a *simulated playback
  chain*: every source goes through a loudspeaker model (zero-phase band limits and a mild
  tanh saturation) before its RIR, the mixture through a microphone model (band limits).
  Its manifest says ``playback=simulated``. Given ``recorded_csv`` (a manifest of real
  re-recordings, e.g. VOiCES, with the test manifest's columns), that manifest is checked and
  used instead, with ``playback=real``.
* ``dev_noisy`` (given ``dev_csv``): the dev speakers through the *training* procedure, its noise
  pool and its rooms, one fixed draw. It mirrors ``noisy_sim`` for decisions on dev, and shares
  none of the test conditions' held-out clips, reserved sources or measured rooms.

Each condition gets ``<out_dir>/<condition>.csv`` with the test columns (``ID, duration, wav,
spk_id, wrd``) plus what was mixed (``seed, n_noises, noise_ids, noise_offsets, snrs, room,
speech_rir, noise_rirs``; lists joined with ``;``). Audio goes to ``<out_dir>/<condition>/``
as 16-bit WAV, each file written atomically: an interrupted run resumes where it stopped,
and a finished condition with the same options is skipped.
"""

import json
import logging
import os
import shutil

import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio

from kd_brain.pipeline.atomic import write_json, write_wav
from kd_brain.noise.contamination import DEFAULT_RESERVED, Contaminator
from kd_brain.pipeline.seeds import seed_for
from kd_brain.data.prepare import options_hash, read_csv, write_csv
from kd_brain.noise.rooms import MeasuredRIRs

logger = logging.getLogger(__name__)

CONDITIONS = ("clean", "noisy_sim", "rerecorded")
DEV_NOISY = "dev_noisy"
TEST_FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]
MIX_FIELDS = ["seed", "n_noises", "noise_ids", "noise_offsets", "snrs", "room", "speech_rir", "noise_rirs"]
FIELDS = TEST_FIELDS + ["condition", "playback"] + MIX_FIELDS


class ConditionError(ValueError):
    """Bad input for writing test conditions; the message names the file or setting."""


class PlaybackChain:
    """A loudspeaker or microphone model: band limits, then an optional mild saturation.

    Band limits are 2nd-order Butterworth high- and low-pass filters run forward and
    backward (``torchaudio.functional.filtfilt``): zero phase, so nothing is delayed. The
    saturation ``tanh(drive * x / peak) * peak / tanh(drive)`` is level-independent and keeps
    the peak; ``drive=0`` means linear.

    Arguments
    ---------
    highpass_hz, lowpass_hz : float
        Band limits (``None``: no such limit).
    drive : float
        Saturation strength (1.0 is mild: ~1.7 dB more level at half the peak).
    sample_rate : int
        Signal rate.

    Example
    -------
    >>> chain = PlaybackChain(150.0, 7000.0, drive=1.0)
    >>> chain(torch.randn(16000)).shape
    torch.Size([16000])
    """

    def __init__(self, highpass_hz=150.0, lowpass_hz=7000.0, drive=1.0, sample_rate=16000):
        self.filters = []
        for hz, kind in ((highpass_hz, "highpass"), (lowpass_hz, "lowpass")):
            if hz is None:
                continue
            if not 0 < hz < sample_rate / 2:
                raise ConditionError(f"{kind}_hz={hz}: must be in (0, {sample_rate / 2})")
            b, a = scipy.signal.butter(2, hz, kind, fs=sample_rate)
            self.filters.append((torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)))
        if drive < 0:
            raise ConditionError(f"drive={drive}: must be >= 0")
        self.drive = drive

    def __call__(self, x):
        for a, b in self.filters:
            x = torchaudio.functional.filtfilt(x, a, b, clamp=False)
        if self.drive > 0:
            peak = x.abs().max().clamp_min(1e-8)
            x = torch.tanh(self.drive * x / peak) * (peak / np.tanh(self.drive))
        return x


def _resolve(path, manifest):
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), path)


def _mix_fields(plan):
    join = lambda v: ";".join(str(x) for x in v)  # noqa: E731
    return dict(seed=plan["seed"], n_noises=plan["n_noises"], noise_ids=join(plan["noise_ids"]),
                noise_offsets=join(plan["noise_offsets"]), snrs=join(plan["snrs"]), room=plan["room"],
                speech_rir=plan["speech_rir"], noise_rirs=join(plan["noise_rirs"]))


def _render_condition(name, rows, contaminator, out_dir, base_seed):
    """Writes one contaminated condition, resuming over the WAVs already written."""
    audio_dir = os.path.join(out_dir, name)
    os.makedirs(audio_dir, exist_ok=True)
    out = []
    for i, row in enumerate(rows, 1):
        dst = os.path.join(audio_dir, f"{row['ID']}.wav")
        seed = seed_for(base_seed, 0, row["ID"])
        if os.path.isfile(dst):  # written atomically by an earlier run: only redo the (cheap) draws
            plan = contaminator.plan(sf.info(dst).frames, seed)
        else:
            try:
                clean, sr = sf.read(row["wav"], dtype="float32")
            except Exception as e:
                raise ConditionError(f"utterance {row['ID']}: cannot read {row['wav']}: {e}") from e
            if sr != contaminator.noises.sample_rate or clean.ndim != 1:
                raise ConditionError(f"utterance {row['ID']}: {row['wav']} must be mono at "
                                     f"{contaminator.noises.sample_rate} Hz (got {sr} Hz, shape {clean.shape})")
            noisy, plan = contaminator.contaminate(torch.from_numpy(clean), seed)
            write_wav(dst, noisy.clamp(-1, 1).numpy(), sr)  # complete or absent: the check above trusts it
        out.append({**row, "wav": dst, "condition": name, "playback": "simulated", **_mix_fields(plan)})
        if i % 200 == 0 or i == len(rows):
            logger.info("%s: %d/%d utterances", name, i, len(rows))
    return out


def _source_rows(path):
    """A test or dev manifest's rows, test columns only, audio paths resolved."""
    rows = read_csv(path)
    missing = set(TEST_FIELDS) - set(rows[0] if rows else {})
    if missing:
        raise ConditionError(f"{path}: missing columns {sorted(missing)} (or no rows)")
    rows = [{k: r[k] for k in TEST_FIELDS} for r in rows]
    for r in rows:
        r["wav"] = _resolve(r["wav"], path)
    return rows


def _recorded_rows(recorded_csv, test_ids):
    """Rows of a manifest of real re-recordings, checked (readable 16-bit-able mono audio, known IDs)."""
    rows = read_csv(recorded_csv)
    for row in rows:
        row["wav"] = _resolve(row["wav"], recorded_csv)
        if row["ID"] not in test_ids:
            raise ConditionError(f"{recorded_csv}: utterance {row['ID']} is not in the test manifest")
        try:
            sf.info(row["wav"])
        except Exception as e:
            raise ConditionError(f"{recorded_csv}: utterance {row['ID']}: cannot read {row['wav']}: {e}") from e
        row.update(condition="rerecorded", playback="real")
    return rows


def write_conditions(
    test_csv,
    out_dir,
    noise_csv,
    room_bank,
    rir_csv,
    noise_root=None,
    rir_root=None,
    conditions=CONDITIONS,
    seed=1234,
    test_fraction=0.2,
    split_seed=0,
    reserved_sources=DEFAULT_RESERVED,
    n_noise_probs=(0.5, 0.3, 0.2),
    snr_range=(0.0, 20.0),
    reverb_speech=True,
    rir_rooms=None,
    speaker=dict(highpass_hz=150.0, lowpass_hz=7000.0, drive=1.0),
    microphone=dict(highpass_hz=60.0, lowpass_hz=7500.0, drive=0.0),
    recorded_csv=None,
    cache_dir=None,
    dev_csv=None,
):
    """Writes the test conditions (see the module docstring); returns ``{condition: csv path}``.

    ``test_fraction``, ``split_seed`` and ``reserved_sources`` must be the values training
    gives ``Contaminator.from_files``: they define the held-out noise pools.

    Arguments
    ---------
    test_csv : str
        Test manifest (``ID, duration, wav, spk_id, wrd``).
    out_dir : str
        Output folder.
    noise_csv, noise_root : str
        Noise manifest and the root of its relative paths (see ``NoisePool.from_csv``).
    room_bank : str
        Room bank file (``kd_brain.noise.rooms.simulate_room_bank``) or an RIR manifest with a ``split``
        column (``kd_brain.noise.rirs_noises.export_simulated_rirs``); its test rooms are used.
    rir_csv, rir_root : str
        Measured RIR manifest (``ID, duration, path, room``) and its root, for ``rerecorded``.
    conditions : sequence of str
        Which of ``clean``, ``noisy_sim``, ``rerecorded`` to write.
    seed : int
        Base seed; each condition and utterance derives its own (recorded in the manifest).
    n_noise_probs, snr_range, reverb_speech
        As in ``Contaminator`` (same defaults as training).
    rir_rooms : list of str or None
        ``room`` groups of ``rir_csv`` to use (None: all).
    speaker, microphone : dict
        ``PlaybackChain`` settings of the simulated loudspeaker and microphone.
    recorded_csv : str or None
        A manifest of real re-recordings to use for ``rerecorded`` instead of simulation.
    cache_dir : str or None
        Decoded-noise cache (see ``NoisePool``).
    dev_csv : str or None
        Dev manifest: also writes ``dev_noisy`` (training pool and rooms).

    Returns
    -------
    dict

    Example
    -------
    >>> # write_conditions("prep/test_clean.csv", "prep/conditions", "data/noise/noise.csv",
    >>> #                  "prep/rooms.pt", "data/rir/rir.csv")
    """
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ConditionError(f"conditions {sorted(unknown)}: must be among {CONDITIONS}")
    rows = _source_rows(test_csv)
    sources = {name: rows for name in conditions}
    if dev_csv is not None:
        conditions, sources[DEV_NOISY] = [*conditions, DEV_NOISY], _source_rows(dev_csv)
    mix = dict(n_noise_probs=list(n_noise_probs), snr_range=list(snr_range), reverb_speech=reverb_speech)
    split = dict(test_fraction=test_fraction, split_seed=split_seed, reserved_sources=list(reserved_sources),
                 noise_root=noise_root, cache_dir=cache_dir)
    options = dict(noise_csv=os.path.abspath(noise_csv), seed=seed, **mix, **split)
    cond_options = dict(
        clean={},
        dev_noisy=dict(room_bank=os.path.abspath(room_bank)),
        noisy_sim=dict(room_bank=os.path.abspath(room_bank)),
        rerecorded=dict(rir_csv=os.path.abspath(rir_csv), rir_root=rir_root, rir_rooms=rir_rooms,
                        speaker=speaker, microphone=microphone,
                        recorded_csv=recorded_csv and os.path.abspath(recorded_csv)),
    )
    paths = {}
    for name in conditions:
        source = dev_csv if name == DEV_NOISY else test_csv
        opts = {**options, **cond_options[name], "condition": name, "test_csv": os.path.abspath(source),
                "ids_hash": options_hash([r["ID"] for r in sources[name]])}
        paths[name] = csv_path = os.path.join(out_dir, f"{name}.csv")
        done_file = os.path.join(out_dir, f"{name}.done.json")
        if os.path.isfile(done_file) and os.path.isfile(csv_path):
            with open(done_file) as f:
                if json.load(f) == opts:
                    logger.info("Condition %s already written with the same options: skipped", name)
                    continue
        _start(out_dir, name, opts)
        cseed = seed_for(seed, 0, name)
        if name == "clean":
            out = [{**r, "condition": "clean", "playback": "none"} for r in rows]
        elif name == "rerecorded" and recorded_csv is not None:
            out = _recorded_rows(recorded_csv, {r["ID"] for r in rows})
        else:
            if name in ("noisy_sim", DEV_NOISY):  # held-out clips and rooms; dev: the training ones
                pool = "test" if name == "noisy_sim" else "train"
                contaminator = Contaminator.from_files(noise_csv, room_bank, pool=pool, seed=cseed, **mix, **split)
            else:
                rooms = MeasuredRIRs(rir_csv, rir_root, rooms=rir_rooms)
                contaminator = Contaminator.from_files(
                    noise_csv, rooms, pool="reserved", seed=cseed, source_transform=PlaybackChain(**speaker),
                    output_transform=PlaybackChain(**microphone), **mix, **split)
            out = _render_condition(name, sources[name], contaminator, out_dir, cseed)
        write_csv(csv_path, out, FIELDS)
        write_json(done_file, opts, indent=1)  # atomic: a half-written one would stop every rerun
    return paths


def _start(out_dir, name, opts):
    """Starts (or resumes) a condition: audio written under other options is removed."""
    audio_dir = os.path.join(out_dir, name)
    started = os.path.join(out_dir, f"{name}.started.json")
    if os.path.isfile(started):
        with open(started) as f:
            if json.load(f) != opts and os.path.isdir(audio_dir):
                logger.info("Condition %s: options changed, removing %s", name, audio_dir)
                shutil.rmtree(audio_dir)
    done = os.path.join(out_dir, f"{name}.done.json")
    if os.path.isfile(done):  # stale: written under other options
        os.remove(done)
    write_json(started, opts, indent=1)  # atomic: a half-written one would stop every rerun
