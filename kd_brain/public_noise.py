"""Exporters of public noise and room corpora (MUSAN, RIRS_NOISES) into the project's manifests.

Neither corpus can be fetched at run time: the exporters read an unpacked copy
(``recipes/KD-Noise/prepare_noise.py``) and write

* ``export_musan`` -> ``<out>/noise/musan.csv``: the noise manifest of :mod:`kd_brain.noise`
  (``ID, duration, path, kind, source, licence``) plus MUSAN's own annotations;
* ``export_real_rirs`` -> ``<out>/rir/real_rirs.csv`` and mono FLAC copies under
  ``<out>/rir/real/``: measured rooms for ``MeasuredRIRs`` (the rerecorded condition);
* ``export_simulated_rirs`` -> ``<out>/rir/simulated_rirs.csv``: a training room source with a
  seeded ``split`` column (``Contaminator.from_files(noise_csv, rooms=<that csv>)``).

Audio paths are written absolute (the corpus stays where it is; ``noise_root`` then does not
matter), except the FLAC copies, written relative to ``<out>`` like shared/data's ``rir/``.

Layouts, as read (not copied) in public code; corpora unavailable here, so unverified on the
real files:

* MUSAN (OpenSLR 17): ``musan/{music,speech,noise}/<subset>/<name>.wav``, 16 kHz, one
  ``ANNOTATIONS`` and ``LICENSE`` per subset folder. Music ANNOTATIONS lines are
  whitespace-separated ``<name> <genre>[,<genre>...] <Y|N: vocals> <artist or composer>``:
  Kaldi's ``egs/sre16/v1/local/make_musan.py`` unpacks ``split()[:4]`` as utt, genres, vocals,
  musician, and lhotse's ``recipes/musan.py`` reads the same 4 fields, genres split on ``,``;
  sample lines (a public dataset audit): ``music-fma-0097 pop,electronica Y
  Quiet_Music_for_Tiny_Robots``. Speech lines are ``<name> <m|f> <language>`` (same audit:
  ``speech-librivox-0169 m english``; Kaldi and lhotse do not read them). Noise subsets'
  ANNOTATIONS are not relied upon (kept as free text when a line exists). LICENSE files are
  not parsed (their format was not verified): ``licence`` points at the subset's LICENSE.
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

from kd_brain.data import write_csv
from kd_brain.rooms import RIRError, trim_rir

logger = logging.getLogger(__name__)

MUSAN_KINDS = {"music": "music", "speech": "talk", "noise": "noise"}
MUSAN_DEFAULT_CATEGORIES = ("music", "speech")  # noise/ is not media noise: opt in
# Sources only the rerecorded condition plays (cf. DEFAULT_RESERVED of the shared bed): one whole
# music and one whole talk subset, each its own archive and production chain, so rerecorded hears
# media training never met; fma (+ the other music subsets) and librivox stay for training. Sizes
# unverified here: prepare_noise.py prints each subset's hours, check the reserved share there.
MUSAN_RESERVED = ("jamendo", "us-gov")
NOISE_FIELDS = ["ID", "duration", "path", "kind", "source", "licence", "corpus", "category",
                "genre", "vocals", "artist", "gender", "language", "annotation"]
RIR_FIELDS = ["ID", "duration", "path", "room", "licence"]
REAL_FIELDS = RIR_FIELDS + ["channel", "rir_id", "source_file"]
SIM_FIELDS = RIR_FIELDS + ["split", "size", "room_dims", "mic", "absorption"]
SIM_SIZES = ("smallroom", "mediumroom", "largeroom")
RIRS_LICENCE = "OpenSLR 28 RIRS_NOISES: see its README/LICENSE (per source database)"


class PublicCorpusError(ValueError):
    """Bad public-corpus input; the message names the file (and line)."""


def _info(path, where=""):
    try:
        return sf.info(path)
    except Exception as e:  # soundfile raises several types for missing/corrupt files
        raise PublicCorpusError(f"{path}{where}: cannot read audio: {e}") from e


def _subroot(root, name):
    """``root`` itself, or ``root/name`` when given the folder holding the corpus."""
    inner = os.path.join(root, name)
    return os.path.abspath(inner if os.path.isdir(inner) else root)


def read_musan_annotations(path, category):
    """Reads one MUSAN subset's ``ANNOTATIONS`` into ``{name: {column: value}}``.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "ANNOTATIONS")
    >>> _ = open(p, "w").write("music-fma-0097 pop,electronica Y Quiet_Music\\n")
    >>> read_musan_annotations(p, "music")["music-fma-0097"]
    {'genre': 'pop;electronica', 'vocals': 'Y', 'artist': 'Quiet_Music'}
    """
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            name, *rest = line.split() or [None]
            if name is None:
                continue
            if category == "music" and (len(rest) < 3 or rest[1] not in ("Y", "N")):
                raise PublicCorpusError(f"{path}:{n}: expected '<name> <genre,...> <Y|N> <artist>', "
                                        f"got {line.strip()!r}")
            if category == "speech" and len(rest) < 2:
                raise PublicCorpusError(f"{path}:{n}: expected '<name> <m|f> <language>', got {line.strip()!r}")
            if name in out:
                raise PublicCorpusError(f"{path}:{n}: {name} annotated twice")
            if category == "music":  # genres ';'-joined like the project's other list fields
                out[name] = dict(genre=";".join(g for g in rest[0].split(",") if g), vocals=rest[1],
                                 artist=" ".join(rest[2:]))
            elif category == "speech":
                out[name] = dict(gender=rest[0].lower(), language=" ".join(rest[1:]).lower())
            else:
                out[name] = dict(annotation=" ".join(rest))
    return out


def export_musan(root, out_dir, categories=MUSAN_DEFAULT_CATEGORIES, reserved_sources=MUSAN_RESERVED,
                 use_vocals=True, sample_rate=16000):
    """Writes ``<out_dir>/noise/musan.csv``, one row per MUSAN file (layout: module docstring).

    ``music/`` gives kind ``music``, ``speech/`` kind ``talk``, ``noise/`` (only if listed in
    ``categories``) kind ``noise``; ``source`` is the subset (``fma``, ``librivox``, ...), which
    is what ``split_noise_pool`` splits on and ``reserved_sources`` names. Music and speech
    files need an ANNOTATIONS line; noise files may lack one.

    Arguments
    ---------
    root : str
        The ``musan`` folder (or the folder holding it).
    out_dir : str
        Output folder.
    categories : sequence of str
        Which of ``music``, ``speech``, ``noise`` to export.
    reserved_sources : sequence of str
        Checked to be exported sources: the value to give training's ``reserved_sources``.
    use_vocals : bool
        Keep music with vocals (False: instrumental music only, Kaldi's ``--use-vocals false``).
    sample_rate : int
        Required rate (``NoisePool`` refuses others).

    Returns
    -------
    dict : ``csv``, ``rows``, ``sources`` ({source: {kind, clips, hours}}), ``reserved_sources``.

    Example
    -------
    >>> import tempfile
    >>> export_musan(tempfile.mkdtemp(), tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    kd_brain.public_noise.PublicCorpusError: ... no music/ folder (is it the MUSAN root?)
    """
    root = _subroot(root, "musan")
    rows = []
    for category in categories:
        if category not in MUSAN_KINDS:
            raise PublicCorpusError(f"category {category!r}: must be among {sorted(MUSAN_KINDS)}")
        cat_dir = os.path.join(root, category)
        if not os.path.isdir(cat_dir):
            raise PublicCorpusError(f"{root}: no {category}/ folder (is it the MUSAN root?)")
        for subset in sorted(d for d in os.listdir(cat_dir) if os.path.isdir(os.path.join(cat_dir, d))):
            rows += _musan_subset(os.path.join(cat_dir, subset), category, subset, use_vocals, sample_rate)
    seen = {}
    for r in rows:
        if r["ID"] in seen:
            raise PublicCorpusError(f"{r['path']}: ID {r['ID']} also used by {seen[r['ID']]}")
        seen[r["ID"]] = r["path"]
    sources = {}
    for r in rows:
        s = sources.setdefault(r["source"], dict(kind=r["kind"], clips=0, hours=0.0))
        s["clips"] += 1
        s["hours"] += float(r["duration"]) / 3600
    unknown = sorted(set(reserved_sources) - set(sources))
    if unknown:
        raise PublicCorpusError(f"reserved_sources {unknown} not among the exported MUSAN subsets "
                                f"{sorted(sources)}")
    if not rows:
        raise PublicCorpusError(f"{root}: no .wav files under {list(categories)}")
    csv_path = os.path.join(out_dir, "noise", "musan.csv")
    write_csv(csv_path, rows, NOISE_FIELDS)
    logger.info("MUSAN: %d clips written to %s", len(rows), csv_path)
    return dict(csv=csv_path, rows=len(rows), sources=sources, reserved_sources=list(reserved_sources))


def _musan_subset(folder, category, subset, use_vocals, sample_rate):
    wavs = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".wav"))
    ann_path = os.path.join(folder, "ANNOTATIONS")
    if not os.path.isfile(ann_path):
        if category != "noise" and wavs:
            raise PublicCorpusError(f"{ann_path}: missing (MUSAN {category} subsets are annotated)")
        annotations = {}
    else:
        annotations = read_musan_annotations(ann_path, category)
    rel = f"{category}/{subset}/LICENSE"
    licence = (f"MUSAN (OpenSLR 17): see {rel}" if os.path.isfile(os.path.join(folder, "LICENSE"))
               else f"MUSAN (OpenSLR 17): no {rel} in this copy")
    rows = []
    for wav in wavs:
        name = os.path.splitext(os.path.basename(wav))[0]
        ann = annotations.get(name)
        if ann is None and category != "noise":
            raise PublicCorpusError(f"{ann_path}: no line for {name} ({wav})")
        if category == "music" and not use_vocals and ann["vocals"] == "Y":
            continue
        info = _info(wav)
        if info.samplerate != sample_rate:
            raise PublicCorpusError(f"{wav}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
        rows.append(dict(ID=name, duration=round(info.frames / info.samplerate, 3), path=wav,
                         kind=MUSAN_KINDS[category], source=subset, licence=licence, corpus="musan",
                         category=category, **(ann or {})))
    return rows


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
    kd_brain.public_noise.PublicCorpusError: ...rir_list: cannot read list: ...
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
