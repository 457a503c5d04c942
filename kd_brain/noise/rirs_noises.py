"""Exporters of RIRS_NOISES (OpenSLR 28) rooms into the project's room manifests.

Like :mod:`kd_brain.noise.musan` (MUSAN), they read an unpacked copy
(``recipes/KD-Noise/prepare_noise.py``) and write

* ``export_real_rirs`` -> ``<out>/rir/real_rirs.csv`` and mono FLAC copies under
  ``<out>/rir/real/``: measured rooms for ``MeasuredRIRs`` (the rerecorded condition);
* ``export_simulated_rirs`` -> ``<out>/rir/simulated_rirs.csv``: a training room source with a
  seeded ``split`` column (``Contaminator.from_files(noise_csv, rooms=<that csv>)``).

The FLAC copies are written relative to ``<out>`` like shared/data's ``rir/``; the simulated
rooms' paths absolute. Layout, as read (not copied) in public code; the corpus is unavailable
here, so unverified on the real files:

* RIRS_NOISES (OpenSLR 28): list lines are ``--rir-id <id> --room-id <room> [--<option>
  <value> ...] <location>`` (the format in the help of Kaldi's
  ``steps/data/reverberate_data_dir.py``); Kaldi's ``aspire_prep_rir_noise_list.py`` writes
  such a list for the real files (RVB2014_*, RWCP_*, air_*; room ``<db>_<pattern>``; noise
  files left out), its ``prep_sim_rirs.sh`` the simulated ones (``--rir-id
  <prefix>RoomNNN-MMMMM --room-id <prefix>RoomNNN .../RoomNNN/RoomNNN-MMMMM.wav``, one mic per
  room, and ``room_info`` lines ``RoomNNN <x> <y> <z> <mic x> <mic y> <mic z> <absorption>``).
  Locations start with ``RIRS_NOISES/`` (relative to the folder holding it). The isotropic
  noises (``noise_list``) and ``pointsource_noises/`` are not exported: they are not media
  noise, the project's kinds being music and talk.
"""

import logging
import os
import random

import numpy as np
import soundfile as sf
import torch
import torchaudio

from kd_brain.data.prepare import write_csv
from kd_brain.noise.musan import PublicCorpusError, _info, _subroot
from kd_brain.noise.rooms import RIRError, trim_rir

logger = logging.getLogger(__name__)

RIR_FIELDS = ["ID", "duration", "path", "room", "licence"]
REAL_FIELDS = RIR_FIELDS + ["channel", "rir_id", "source_file"]
SIM_FIELDS = RIR_FIELDS + ["split", "size", "room_dims", "mic", "absorption"]
SIM_SIZES = ("smallroom", "mediumroom", "largeroom")
RIRS_LICENCE = "OpenSLR 28 RIRS_NOISES: see its README/LICENSE (per source database)"


def read_kaldi_list(path, required=("rir-id", "room-id")):
    """Reads a Kaldi ``rir_list`` / ``noise_list``: ``[(line number, {option: value}, location)]``.

    Only plain file locations are accepted (Kaldi also allows a command ending in ``|``).

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "rir_list")
    >>> _ = open(p, "w").write("--rir-id 00001 --room-id air_meeting RIRS_NOISES/a.wav\\n")
    >>> read_kaldi_list(p)
    [(1, {'rir-id': '00001', 'room-id': 'air_meeting'}, 'RIRS_NOISES/a.wav')]
    """
    entries = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise PublicCorpusError(f"{path}: cannot read list: {e}") from e
    with f:
        for n, line in enumerate(f, 1):
            tokens, opts, rest = line.split(), {}, []
            while tokens:
                tok = tokens.pop(0)
                if tok.startswith("--") and tokens and not tokens[0].startswith("--"):
                    opts[tok[2:]] = tokens.pop(0)
                else:
                    rest.append(tok)
            if not opts and not rest:
                continue
            missing = [k for k in required if k not in opts]
            if missing or len(rest) != 1 or rest[0].startswith("--"):
                raise PublicCorpusError(
                    f"{path}:{n}: expected '{' '.join(f'--{k} <{k}>' for k in required)} [--option value ...] "
                    f"<file>' (one plain file location), got {line.strip()!r}")
            entries.append((n, opts, rest[0]))
    return entries


def _locate(root, location):
    """A list location (``RIRS_NOISES/...``, relative to the folder holding it) under ``root``."""
    if os.path.isabs(location):
        return location
    parts = location.split("/")
    return os.path.join(root, *(parts[1:] if parts[0] == "RIRS_NOISES" else parts))


def export_real_rirs(root, out_dir, sample_rate=16000, max_onset_s=0.25, licence=RIRS_LICENCE):
    """Writes ``real_rirs_isotropic_noises``' RIRs as measured rooms, one mono FLAC per channel.

    ``MeasuredRIRs`` and ``acoustics.measured_rt60s`` read a file as mono (a channel mix,
    which would blur the channels' different delays), so each channel is written to its own
    file, ``<out_dir>/rir/real/<file stem>_ch<c>.flac`` (24-bit, peak 0.99, resampled to
    ``sample_rate``; ID without ``_ch<c>`` for mono files). That keeps shared/data's ``rir/``
    format and every reader unchanged; the cost is small (an RIR channel is ~0.3-2 s: tens
    of kB as FLAC; the returned ``bytes`` says). The room is the list's ``--room-id``.
    Channels ``trim_rir`` would refuse (silent, peak later than ``max_onset_s``) are left out
    and listed in ``skipped``.

    Returns
    -------
    dict : ``csv``, ``rows``, ``rooms``, ``bytes``, ``skipped``.

    Example
    -------
    >>> import tempfile
    >>> export_real_rirs(tempfile.mkdtemp(), tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    kd_brain.noise.musan.PublicCorpusError: ...rir_list: cannot read list: ...
    """
    root = _subroot(root, "RIRS_NOISES")
    list_path = os.path.join(root, "real_rirs_isotropic_noises", "rir_list")
    entries = read_kaldi_list(list_path)
    os.makedirs(os.path.join(out_dir, "rir", "real"), exist_ok=True)
    rows, skipped, nbytes, sources = [], [], 0, {}
    for n, opts, location in entries:
        src, where = _locate(root, location), f" ({list_path}:{n})"
        if src in sources:
            raise PublicCorpusError(f"{list_path}:{n}: {location} already listed on line {sources[src]}")
        sources[src] = n
        try:
            audio, sr = sf.read(src, dtype="float32", always_2d=True)
        except Exception as e:
            raise PublicCorpusError(f"{src}{where}: cannot read audio: {e}") from e
        if sr != sample_rate:
            audio = torchaudio.functional.resample(torch.from_numpy(audio.T.copy()), sr, sample_rate).numpy().T
        stem = os.path.splitext(os.path.basename(src))[0]
        for c in range(audio.shape[1]):
            rir_id, x = (f"{stem}_ch{c}" if audio.shape[1] > 1 else stem), audio[:, c]
            try:
                trim_rir(x, f"{src} channel {c}", sample_rate, max_onset_s)
            except RIRError as e:
                skipped.append(str(e))
                continue
            rel = f"rir/real/{rir_id}.flac"
            dst = os.path.join(out_dir, rel)
            sf.write(dst, x * (0.99 / np.abs(x).max()), sample_rate, format="FLAC", subtype="PCM_24")
            nbytes += os.path.getsize(dst)
            rows.append(dict(ID=rir_id, duration=round(len(x) / sample_rate, 4), path=rel, room=opts["room-id"],
                             licence=licence, channel=c, rir_id=opts["rir-id"],
                             source_file=os.path.relpath(src, os.path.dirname(root))))
    if not rows:
        raise PublicCorpusError(f"{list_path}: no usable RIR ({len(skipped)} channels refused)")
    if skipped:
        logger.warning("real RIRs: %d channels left out, e.g. %s", len(skipped), skipped[0])
    csv_path = os.path.join(out_dir, "rir", "real_rirs.csv")
    write_csv(csv_path, rows, REAL_FIELDS)
    return dict(csv=csv_path, rows=len(rows), rooms=len({r["room"] for r in rows}), bytes=nbytes, skipped=skipped)


def read_room_info(path):
    """Reads a simulated size's ``room_info``: ``{RoomNNN: {room_dims, mic, absorption}}``."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 8 or not all(v.replace(".", "", 1).isdigit() for v in parts[1:]):
                raise PublicCorpusError(f"{path}:{n}: expected 'RoomNNN x y z mic_x mic_y mic_z absorption', "
                                        f"got {line.strip()!r}")
            out[parts[0]] = dict(room_dims=";".join(parts[1:4]), mic=";".join(parts[4:7]), absorption=parts[7])
    return out


def export_simulated_rirs(root, out_dir, sizes=SIM_SIZES, rirs_per_room=10, test_fraction=0.2, seed=0,
                          sample_rate=16000, licence=RIRS_LICENCE):
    """Writes ``simulated_rirs`` as a room source with train / test rooms (``split`` column).

    Each simulated room has one microphone and many source positions, like a room of
    ``simulate_room_bank``; ``MeasuredRIRs(csv, split=...)`` draws a room, then distinct RIRs
    of it. Test rooms are held out as ``simulate_room_bank`` does (a seeded permutation of the
    rooms, its first ``test_fraction`` share; here per room size, seeded by the size's name, so
    noisy_sim has every size, and at least one room each side of a size with >= 2 rooms).
    ``rirs_per_room`` keeps a seeded subset of each room's RIRs: the room source holds its RIRs
    in memory (float32, ~64 kB per 1-s RIR: 6,000 RIRs (600 rooms x 10) ~0.4 GB per process;
    all of them, tens of thousands, several GB).

    Arguments
    ---------
    root : str
        The ``RIRS_NOISES`` folder (or the folder holding it).
    out_dir : str
        Output folder (``<out_dir>/rir/simulated_rirs.csv``; audio paths absolute).
    sizes : sequence of str
        Room-size folders to read.
    rirs_per_room : int or None
        RIRs kept per room (None: all).
    test_fraction : float
        Share of each size's rooms held out as ``test``.
    seed : int
        Seeds the held-out rooms and the RIR subsets.

    Returns
    -------
    dict : ``csv``, ``rows``, ``train_rooms``, ``test_rooms``.
    """
    if not 0 <= test_fraction < 1:
        raise PublicCorpusError(f"test_fraction={test_fraction}: must be in [0, 1)")
    root = _subroot(root, "RIRS_NOISES")
    per_size = {}
    for size in sizes:
        folder = os.path.join(root, "simulated_rirs", size)
        info_path = os.path.join(folder, "room_info")
        info = read_room_info(info_path) if os.path.isfile(info_path) else {}
        list_path = os.path.join(folder, "rir_list")
        per_size[size] = [(f"{list_path}:{n}", o, _locate(root, loc), info) for n, o, loc in read_kaldi_list(list_path)]
    # Room / RIR IDs carry a size prefix in RIRS_NOISES (small-Room001); prefix them if two sizes share one.
    first, owner = {}, {}
    for size, entries in per_size.items():
        for where, o, _, _ in entries:
            if first.setdefault((size, o["rir-id"]), where) != where:
                raise PublicCorpusError(f"{where}: --rir-id {o['rir-id']} already on {first[(size, o['rir-id'])]}")
            for key in (o["room-id"], o["rir-id"]):
                owner.setdefault(key, set()).add(size)
    prefix = any(len(sizes_of) > 1 for sizes_of in owner.values())
    rows, split_rooms = [], {"train": set(), "test": set()}
    for size, entries in per_size.items():
        rooms = {}
        for e in entries:
            rooms.setdefault(e[1]["room-id"], []).append(e)
        names = sorted(rooms)
        n_test = min(len(names) - 1, max(1, round(test_fraction * len(names)))) if test_fraction > 0 and names else 0
        test = set(random.Random(f"{seed}|{size}").sample(names, n_test))
        for room in names:
            picks = sorted(rooms[room], key=lambda e: e[1]["rir-id"])
            if rirs_per_room is not None and len(picks) > rirs_per_room:
                picks = sorted(random.Random(f"{seed}|{size}|{room}").sample(picks, rirs_per_room),
                               key=lambda e: e[1]["rir-id"])
            split = "test" if room in test else "train"
            room_id = f"{size}-{room}" if prefix else room
            split_rooms[split].add(room_id)
            for where, opts, path, info in picks:
                meta = _info(path, f" ({where})")
                if meta.channels != 1 or meta.samplerate != sample_rate:
                    raise PublicCorpusError(f"{path} ({where}): {meta.channels} channels at {meta.samplerate} Hz, "
                                            f"expected a mono RIR at {sample_rate} Hz")
                folder = os.path.basename(os.path.dirname(path))  # RoomNNN, room_info's key
                rows.append(dict(ID=f"{size}-{opts['rir-id']}" if prefix else opts["rir-id"],
                                 duration=round(meta.frames / meta.samplerate, 4), path=path, room=room_id,
                                 licence=licence, split=split, size=size, **info.get(folder, {})))
    if not rows:
        raise PublicCorpusError(f"{root}/simulated_rirs: no RIRs in {list(sizes)}")
    csv_path = os.path.join(out_dir, "rir", "simulated_rirs.csv")
    write_csv(csv_path, rows, SIM_FIELDS)
    return dict(csv=csv_path, rows=len(rows), train_rooms=len(split_rooms["train"]),
                test_rooms=len(split_rooms["test"]))
