"""Exporters of MUSAN (OpenSLR 17) into the project's noise manifest; the rooms of
RIRS_NOISES are in :mod:`kd_brain.noise.rirs_noises`.

Neither corpus can be fetched at run time: the exporters read an unpacked copy
(``recipes/KD-Noise/prepare_noise.py``) and write

* ``export_musan`` -> ``<out>/noise/musan.csv``: the noise manifest of :mod:`kd_brain.noise.pool`
  (``ID, duration, path, kind, source, licence``) plus MUSAN's own annotations.

Audio paths are written absolute (the corpus stays where it is; ``noise_root`` then does not
matter).

Layout, as read (not copied) in public code; the corpus is unavailable here, so unverified on
the real files:

* MUSAN (OpenSLR 17): ``musan/{music,speech,noise}/<subset>/<name>.wav``, 16 kHz, one
  ``ANNOTATIONS`` and ``LICENSE`` per subset folder. Music ANNOTATIONS lines are
  whitespace-separated ``<name> <genre>[,<genre>...] <Y|N: vocals> <artist or composer>``:
  Kaldi's ``egs/sre16/v1/local/make_musan.py`` unpacks ``split()[:4]`` as utt, genres, vocals,
  musician, and lhotse's ``recipes/musan.py`` reads the same 4 fields, genres split on ``,``;
  sample lines (a public dataset audit): ``music-fma-0097 pop,electronica Y
  Quiet_Music_for_Tiny_Robots``. Speech lines are ``<name> <m|f> <language>`` (same audit:
  ``speech-librivox-0169 m english``; Kaldi and lhotse do not read them). Noise subsets'
  ANNOTATIONS are not relied upon (kept as free text when a line exists). LICENSE files are
  not parsed (their format is not verified here): ``licence`` points at the subset's LICENSE.
"""

import logging
import os

import soundfile as sf

from kd_brain.data.prepare import write_csv

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
    kd_brain.noise.musan.PublicCorpusError: ... no music/ folder (is it the MUSAN root?)
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
