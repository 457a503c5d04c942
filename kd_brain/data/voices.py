"""VOiCES (Lab41 / SRI, CC BY 4.0): LibriSpeech replayed in real rooms, as the ``rerecorded`` test set.

Layout of ``VOiCES_devkit`` (and ``VOiCES_release``), as verified:

* ``distant-16k/speech/<train|test>/<room>/<distractor>/sp<spk>/`` holds the
  recordings, named ``Lab41-SRI-VOiCES-<room>-<distractor>-sp<spk:04d>-ch<chapter:06d>-sg<seg:04d>``
  ``-mc<mic:02d>-<mic type>-<mic location>-dg<degrees:03d>.wav``
  (distractor ``none|babb|musi|tele``; mic type ``stu|lav``; location ``clo|mid|far|beh|tbo|cec|ceo|wal``);
* ``source-16k/<train|test>/sp<spk>/Lab41-SRI-VOiCES-src-sp<spk>-ch<chapter>-sg<seg>.wav``,
  the LibriSpeech utterance that was played (DC removed, peak-normalised);
* ``references/<train|test>_index.csv``: one row per recording with columns
  ``index, chapter, degrees, distractor, filename, gender, mic, query_name, room,
  segment, source, speaker, transcript, noisy_length, noisy_sr, noisy_time,
  source_length, source_sr, source_time``; ``filename`` and ``source`` are paths
  relative to the devkit root; ``speaker``, ``chapter`` and ``segment`` are the
  LibriSpeech speaker, chapter and segment IDs.

Sources: the corpus README (github.com/IQTLabs/voices, ``Lab41-SRI-VOiCES_README.md``: file
naming, codes, mic table; it writes ``seg`` in the naming template where the files say ``sg``,
so both are accepted) and the devkit's index builder (github.com/IQTLabs/VOiCES_Toolkit,
``indexing_utils/README.md`` and ``build_indices.py``: the index columns, ``filename`` /
``source`` relative to the root, and the speaker / chapter / segment fields parsed as integers
from ``sp``, ``ch``, ``sg``). Hence the mapping to LibriSpeech IDs (``<spk>-<chapter>-<seg:04d>``,
no padding on speaker and chapter): ``sp0083-ch003054-sg0005`` is LibriSpeech ``83-3054-0005``.
Not verified (no copy of the corpus here): the case and punctuation of ``transcript``, so it is
mapped onto LibriSpeech's alphabet (upper case, apostrophes, single spaces).

``export_voices`` writes, for one VOiCES split:

* ``voices-<split>/``: a Kaldi directory of the *source* audio, one entry per recording
  (ID = the recording's ``query_name``, speaker = the LibriSpeech speaker ID): the clean
  test set, paired one to one with the recordings;
* ``voices-<split>_recorded.csv``: the recordings with the test manifest's columns
  (``ID, duration, wav, spk_id, wrd``) plus ``room, distractor, mic, mic_type, mic_position,
  degrees, librispeech_id, source``: ``write_conditions(recorded_csv=...)`` takes it as the
  real ``rerecorded`` condition when the clean test set is ``voices-<split>``;
* ``voices_librispeech.csv`` (``ID, spk_id``): every LibriSpeech utterance VOiCES replays in
  any split with an index, for ``prepare_corpus(exclude_csv=...)``, which takes those
  speakers out of every training role.
"""

import csv
import os
import re

import soundfile as sf

from kd_brain.data.prepare import SAMPLE_RATE, CorpusError, write_csv

INDEX_COLUMNS = ("filename", "source", "speaker", "chapter", "segment", "transcript", "room", "distractor", "mic",
                 "degrees")
RECORDED_FIELDS = ["ID", "duration", "wav", "spk_id", "wrd", "room", "distractor", "mic", "mic_type", "mic_position",
                   "degrees", "librispeech_id", "source"]
DISTRACTORS = ("none", "babb", "musi", "tele")
_NAME = re.compile(r"^Lab41-SRI-VOiCES-(?P<room>rm\d+)-(?P<distractor>none|babb|musi|tele)-sp(?P<speaker>\d+)"
                   r"-ch(?P<chapter>\d+)-se?g(?P<segment>\d+)-mc(?P<mic>\d+)-(?P<mic_type>[a-z]+)"
                   r"-(?P<mic_position>[a-z]+)-dg(?P<degrees>\d+)$")


def librispeech_id(speaker, chapter, segment):
    """The LibriSpeech utterance ID of a VOiCES speaker / chapter / segment.

    Example
    -------
    >>> librispeech_id("0083", "003054", "0005")
    '83-3054-0005'
    """
    return f"{int(speaker)}-{int(chapter)}-{int(segment):04d}"


def parse_recording_name(name):
    """The fields of a VOiCES recording's file name (with or without folder and ``.wav``).

    Example
    -------
    >>> f = parse_recording_name("Lab41-SRI-VOiCES-rm1-babb-sp0083-ch003054-sg0005-mc01-stu-clo-dg090.wav")
    >>> f["room"], f["distractor"], f["librispeech_id"], f["mic"], f["mic_position"], f["degrees"]
    ('rm1', 'babb', '83-3054-0005', '1', 'clo', '90')
    """
    stem = os.path.basename(name)
    stem = stem[:-4] if stem.endswith(".wav") else stem
    m = _NAME.match(stem)
    if m is None:
        raise CorpusError(f"{name}: not a VOiCES recording name (Lab41-SRI-VOiCES-<room>-<distractor>-sp..-ch..-sg.."
                          "-mc..-<type>-<location>-dg..)")
    f = m.groupdict()
    f["librispeech_id"] = librispeech_id(f["speaker"], f["chapter"], f["segment"])
    f["speaker"], f["mic"], f["degrees"] = str(int(f["speaker"])), str(int(f["mic"])), str(int(f["degrees"]))
    return f


def normalise_transcript(text):
    """Upper case, apostrophes kept, anything else outside A-Z a word break (LibriSpeech's alphabet).

    Example
    -------
    >>> normalise_transcript("  I had that curiosity, beside me!")
    'I HAD THAT CURIOSITY BESIDE ME'
    """
    return " ".join(re.sub(r"[^A-Z']+", " ", text.upper()).split())


def voices_root(root):
    """The devkit folder: ``root`` itself, or ``root/VOiCES_devkit`` when that exists."""
    inner = os.path.join(root, "VOiCES_devkit")
    return inner if os.path.isdir(inner) else str(root)


def read_index(index_csv, root):
    """The rows of a VOiCES index CSV, checked; one dict per recording (``RECORDED_FIELDS`` but duration).

    A missing column, a file name that does not parse, a name that disagrees
    with the row's speaker / chapter / segment, or an empty transcript stops
    with the file, line and utterance.
    """
    if not os.path.isfile(index_csv):
        raise CorpusError(f"{index_csv}: VOiCES index not found (references/<split>_index.csv)")
    with open(index_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"{index_csv}: missing columns {missing} (has {reader.fieldnames})")
        rows = []
        for lineno, r in enumerate(reader, 2):
            utt = r.get("query_name") or os.path.basename(r["filename"] or "")[:-4] or f"row {lineno}"
            where = f"{index_csv}:{lineno}: utterance {utt}"
            try:
                name = parse_recording_name(r["filename"])
                if name["librispeech_id"] != librispeech_id(r["speaker"], r["chapter"], r["segment"]):
                    raise CorpusError(f"file name says {name['librispeech_id']}, columns speaker / chapter / "
                                      f"segment say {r['speaker']} / {r['chapter']} / {r['segment']}")
            except (CorpusError, ValueError, TypeError) as e:
                raise CorpusError(f"{where}: {e}") from e
            wrd = normalise_transcript(r["transcript"] or "")
            if not wrd:
                raise CorpusError(f"{where}: empty transcript")
            if not r["source"]:
                raise CorpusError(f"{where}: no source file")
            rows.append(dict(
                ID=os.path.basename(r["filename"])[:-4], wav=os.path.join(root, r["filename"]),
                source=os.path.join(root, r["source"]), spk_id=name["speaker"], wrd=wrd,
                librispeech_id=name["librispeech_id"], gender=(r.get("gender") or "").lower(),
                **{k: name[k] for k in ("room", "distractor", "mic", "mic_type", "mic_position", "degrees")}))
    return rows


def _duration(path, where):
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for missing or corrupt files
        raise CorpusError(f"{where}: cannot read {path}: {e}") from e
    if info.samplerate != SAMPLE_RATE:
        raise CorpusError(f"{where}: {path} has sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz")
    return round(info.frames / info.samplerate, 4)


def export_voices(root, out_dir, split="test", rooms=None, distractors=None, mics=None):
    """Writes the clean Kaldi directory, the recorded manifest and the exclusion list (module docstring).

    Arguments
    ---------
    root : str
        ``VOiCES_devkit`` (or the folder holding it).
    out_dir : str
        Where ``voices-<split>/``, ``voices-<split>_recorded.csv`` and ``voices_librispeech.csv`` go
        (e.g. the LibriSpeech export's folder, so one ``corpus_dir`` holds both).
    split : str
        ``test`` or ``train`` (the VOiCES split scored).
    rooms, distractors, mics : list or None
        Keep only these rooms (``rm1``), distractors (``none``) and mic IDs (``1``); None: all.

    Returns
    -------
    dict : ``kaldi_dir``, ``recorded_csv``, ``exclude_csv``, ``recordings``, ``speakers``.

    Example
    -------
    >>> import tempfile
    >>> export_voices(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: .../references/test_index.csv: VOiCES index not found ...
    """
    root = os.path.abspath(voices_root(root))
    index = os.path.join(root, "references", f"{split}_index.csv")
    keep = dict(room=rooms, distractor=distractors, mic=mics)
    rows = [r for r in read_index(index, root)
            if all(v is None or r[k] in {str(x) for x in v} for k, v in keep.items())]
    if not rows:
        raise CorpusError(f"{index}: no recording left after the filters {keep}")
    for r in rows:
        where = f"{index}: utterance {r['ID']}"
        r["duration"] = _duration(r["wav"], where)
        _duration(r["source"], f"{where} (source)")
    # every LibriSpeech utterance VOiCES replays, in any split that has an index
    replayed = {}
    for other in sorted(os.listdir(os.path.join(root, "references"))):
        if other.endswith("_index.csv"):
            other_rows = rows if other == f"{split}_index.csv" else read_index(
                os.path.join(root, "references", other), root)
            replayed.update((r["librispeech_id"], r["spk_id"]) for r in other_rows)

    kaldi_dir = os.path.join(out_dir, f"voices-{split}")
    os.makedirs(kaldi_dir, exist_ok=True)
    for name, col in (("wav.scp", "source"), ("utt2spk", "spk_id"), ("text", "wrd")):
        with open(os.path.join(kaldi_dir, name), "w", encoding="utf-8") as f:
            f.writelines(f"{r['ID']} {r[col]}\n" for r in rows)
    genders = {r["spk_id"]: r["gender"] for r in rows if r["gender"] in ("f", "m")}
    with open(os.path.join(kaldi_dir, "spk2gender"), "w", encoding="utf-8") as f:
        f.writelines(f"{s} {genders[s]}\n" for s in sorted(genders, key=int))
    recorded = os.path.join(out_dir, f"voices-{split}_recorded.csv")
    write_csv(recorded, rows, RECORDED_FIELDS)
    exclude = os.path.join(out_dir, "voices_librispeech.csv")
    write_csv(exclude, [dict(ID=u, spk_id=s) for u, s in sorted(replayed.items())], ["ID", "spk_id"])
    return dict(kaldi_dir=kaldi_dir, recorded_csv=recorded, exclude_csv=exclude, recordings=len(rows),
                speakers=len({r["spk_id"] for r in rows}))
