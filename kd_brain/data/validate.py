"""Input validation: Kaldi data directories, CSV manifests and audio files.

Everything a corpus or a manifest brings in is checked here, so that bad
input stops with a ``CorpusError`` naming the file, the line (tables) and the
utterance, never with an exception from deep inside ``csv``, ``soundfile`` or
torch, and never with a silently wrong example. The rules:

Tables (Kaldi ``wav.scp`` / ``text`` / ``utt2spk``, CSV manifests)
    * UTF-8 (a byte-order mark is allowed); a line that is not is named with
      its column and utterance. No NUL characters, no line breaks inside a
      CSV field, no unterminated quotes.
    * Utterance IDs: non-empty, no whitespace, no ``/`` or ``\\``, not ``.``
      or ``..`` (converted audio is written to ``<ID>.wav``); unique, the
      error names both lines.
    * CSV: a header with unique column names holding the required columns
      (``ID, wav``; ``duration`` too for training sets); every row with as
      many fields as the header; ``duration`` a finite number > 0; ``wav``
      non-empty; ``wrd``, where the column exists, non-empty (a manifest with
      transcripts has one for every row: the unlabelled pool has no ``wrd``
      column at all).
    * Kaldi: ``wav.scp`` lines are ``utt path`` (no piped commands);
      ``utt2spk`` lines ``utt speaker``. A ``text`` line with no transcript
      is an empty transcript, a fault of that utterance (``check_transcript``).
      Table errors are fatal whatever ``on_bad``: the directory is broken,
      not one recording.

Audio (``read_checked``, ``check_audio_header``)
    * Missing file -> "does not exist"; anything libsndfile cannot decode
      (random bytes, text, a cut FLAC) -> "cannot read audio file". A
      truncated WAV (``data`` chunk longer than the file) or Ogg stream (the
      last page incomplete or without its end-of-stream flag) is refused the
      same way: libsndfile would silently return the part before the cut,
      so the transcript would not match the audio.
    * Sample rate other than 16 kHz -> error (conversion belongs elsewhere).
    * No samples -> error; NaN or infinite samples -> error; every sample
      the same after downmixing (digital silence, all zero or a constant
      offset; also channels in opposite phase) -> error ("silent").
    * Float files (``FLOAT``/``DOUBLE`` subtypes) converted to 16 bits are
      scaled here (x 32767, rounded, clipped): libsndfile's own int16 read of
      them is unscaled and turns every sample in (-1, 1) into 0.
    * Clipped: an error when at least ``CLIP_SHARE`` (1 %) of the samples sit
      at ``|x| >= CLIP_LEVEL`` (0.999) of full scale. Checked when a corpus is
      prepared, not at training time (a noisy test condition may clip a few
      peaks by design).
    * Several channels are downmixed (their mean), not refused.

Faults of one utterance (audio, empty transcript) are skipped and counted by
``prepare_corpus(on_bad="skip")``; at training or evaluation time
(``kd_brain.data.dataio.read_audio``) they are errors naming the utterance.
"""

import csv
import io
import math
import os

import numpy as np
import soundfile as sf

from kd_brain.data.splits import CorpusError

SAMPLE_RATE = 16000
CLIP_LEVEL = 0.999
CLIP_SHARE = 0.01


def utterance_error(utt_id, message):
    """A CorpusError ``utterance <ID>: message`` (just ``message`` when the ID is unknown)."""
    return CorpusError(message if utt_id is None else f"utterance {utt_id}: {message}")


def _decode(path):
    """The text of ``path`` (UTF-8, BOM allowed) and whether it decoded cleanly.

    Bytes that are not UTF-8 become lone surrogates (``surrogateescape``), so
    the caller can name the line and field that holds them.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="surrogateescape"), False


def _bad_text(value):
    """Why a field cannot be used as text, or None: non-UTF-8 bytes, a NUL or a line break."""
    if "\x00" in value:
        return "holds a NUL character"
    if "\n" in value or "\r" in value:
        return "holds a line break"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"is not valid UTF-8 ({value.encode('utf-8', 'surrogateescape')[:60]!r})"
    return None


def _bad_id(utt):
    if not utt or any(c.isspace() for c in utt):
        return f"utterance ID {utt!r} is empty or holds whitespace"
    if "/" in utt or "\\" in utt or utt in (".", ".."):
        return f"utterance ID {utt!r} cannot name a file"
    return None


def kaldi_table(path, kind):
    """One Kaldi table as ``{utt: value}``; ``kind`` is ``wav``, ``text`` or ``spk``.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "utt2spk")
    >>> _ = open(p, "w").write("u1 s1\\nu1 s2\\n")
    >>> kaldi_table(p, "spk")
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: ...utt2spk:2: utterance u1 appears twice (first on line 1)
    """
    table, first = {}, {}
    for lineno, line in enumerate(io.StringIO(_decode(path)[0], newline=None), 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        utt, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        where = f"{path}:{lineno}: utterance {utt!r}" if _bad_text(utt) else f"{path}:{lineno}: utterance {utt}"
        problem = _bad_text(line)
        problem = f"the line {problem}" if problem else _bad_id(utt)
        if problem is None and kind == "wav" and (not value or value.endswith("|") or " " in value):
            problem = f"only 'utt path' lines are supported, got {value!r}"
        if problem is None and kind == "spk" and (not value or len(value.split()) > 1):
            problem = f"needs exactly one speaker, got {value!r}"
        if problem is None and utt in table:
            problem = f"appears twice (first on line {first[utt]})"
        if problem:
            raise CorpusError(f"{where}{'' if problem.startswith('appears') else ':'} {problem}")
        table[utt], first[utt] = value, lineno
    return table


def check_transcript(utt_id, wrd):
    """Refuses an empty (or whitespace-only) transcript; ``None`` means unlabelled and passes."""
    if wrd is not None and not wrd.strip():
        raise utterance_error(utt_id, "empty transcript")


def csv_rows(path):
    """The header and rows (``(line, dict)``) of a CSV file, after the structural checks.

    Checks UTF-8, NUL characters and line breaks in fields, quoting (an
    unterminated quote is an error, not a field that swallows the rows
    after it), a header with unique names, and that every row has as many
    fields as the header. Blank lines are skipped.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(p, "w").write("ID,wav\\na,a.wav\\nb\\n")
    >>> csv_rows(p)
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: ...m.csv:3: utterance b: 1 fields, the header has 2 (ID, wav)
    """
    text = _decode(path)[0]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows, done = None, [], 0
    try:
        header = next(reader, None)
        if not header:
            raise CorpusError(f"{path}:1: no header line")
        done = reader.line_num
        for col in header:
            if _bad_text(col):
                raise CorpusError(f"{path}:1: header field {col!r} {_bad_text(col)}")
        if len(set(header)) < len(header):
            raise CorpusError(f"{path}:1: repeated column names in the header {header}")
        id_col = header.index("ID") if "ID" in header else None
        for fields in reader:
            if not fields:
                continue
            utt = fields[id_col] if id_col is not None and id_col < len(fields) else None
            where = f"{reader.line_num}" + ("" if utt is None else f": utterance {utt if not _bad_text(utt) else repr(utt)}")
            if len(fields) != len(header):
                raise CorpusError(f"{path}:{where}: {len(fields)} fields, the header has {len(header)} ({', '.join(header)})")
            for col, value in zip(header, fields):
                if _bad_text(value):
                    raise CorpusError(f"{path}:{where}: column {col} {_bad_text(value)}")
            rows.append((reader.line_num, dict(zip(header, fields))))
            done = reader.line_num
    except csv.Error as e:  # e.g. an unterminated quote: name the row where it starts
        lines = io.StringIO(text, newline="").readlines()
        start = lines[done] if done < len(lines) else ""
        utt = f": utterance {start.split(',')[0]}" if done and header and header[0] == "ID" else ""
        raise CorpusError(f"{path}:{done + 1}{utt}: not a readable CSV: {e}") from e
    return header, rows


def read_manifest(path, required=("ID", "wav")):
    """A manifest as ``{ID: row without ID}``, ``duration`` as float; every rule of the module docstring.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(p, "w").write("ID,duration,wav,wrd\\na,1.5,a.wav,HI\\nb,2.0,b.wav,\\n")
    >>> read_manifest(p)
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: ...m.csv:3: utterance b: column wrd: empty transcript
    >>> _ = open(p, "w").write("ID,duration,wav\\na,1.5,a.wav\\n")
    >>> read_manifest(p)["a"]
    {'duration': 1.5, 'wav': 'a.wav'}
    """
    header, rows = csv_rows(path)
    for col in required:
        if col not in header:
            raise CorpusError(f"{path}:1: no column {col!r} (header: {','.join(header)})")
    data, first = {}, {}
    for line, row in rows:
        utt = row.pop("ID")
        where = f"{path}:{line}: utterance {utt}"
        problem = _bad_id(utt)
        if problem:
            raise CorpusError(f"{path}:{line}: column ID: {problem}")
        if utt in data:
            raise CorpusError(f"{where}: column ID: appears twice (first on line {first[utt]})")
        if "duration" in row:
            value = row["duration"]
            try:
                row["duration"] = float(value)
            except ValueError:
                row["duration"] = math.nan
            if not math.isfinite(row["duration"]) or row["duration"] <= 0:
                raise CorpusError(f"{where}: column duration: {value!r} is not a duration in seconds")
        if "wav" in row and not row["wav"].strip():
            raise CorpusError(f"{where}: column wav: no audio path")
        if "wrd" in row and not row["wrd"].strip():
            raise CorpusError(f"{where}: column wrd: empty transcript")
        data[utt], first[utt] = row, line
    return data


def container_problem(path):
    """Why a WAV or Ogg file is cut short, or None (other formats: None).

    libsndfile opens a truncated WAV or Ogg stream and returns the audio
    before the cut without an error; this looks at the container instead: a
    WAV ``data`` chunk longer than the bytes left, or an Ogg stream whose last
    page is incomplete or lacks the end-of-stream flag.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            offset = 12
            while offset + 8 <= size:
                f.seek(offset)
                chunk = f.read(8)
                length = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"data":
                    if length not in (0, 0xFFFFFFFF) and offset + 8 + length > size:
                        return f"truncated WAV: the data chunk needs {length} bytes, {size - offset - 8} are left"
                    return None
                offset += 8 + length + (length & 1)
            return None
        if head[:4] != b"OggS":
            return None
        f.seek(max(0, size - 65536 - 282))  # the largest Ogg page, header included, fits in this tail
        tail = f.read()
    end = len(tail)
    at = tail.rfind(b"OggS")
    while at >= 0:
        nseg = tail[at + 26] if at + 27 <= end else 0
        segments = tail[at + 27:at + 27 + nseg]
        if at + 27 <= end and tail[at + 4] == 0 and len(segments) == nseg and at + 27 + nseg + sum(segments) == end:
            return None if tail[at + 5] & 4 else "truncated Ogg stream: the last page has no end-of-stream flag"
        at = tail.rfind(b"OggS", 0, at)
    return "truncated Ogg stream: the last page is incomplete"


def sample_problem(audio, full_scale, clipping=True):
    """Why decoded samples (frames x channels) are unusable, or None; see the module docstring."""
    if audio.size == 0:
        return "contains no samples"
    if audio.dtype.kind == "f" and not np.isfinite(audio).all():
        return "has NaN or infinite samples"
    if clipping:  # both signs compared, not np.abs: abs(-32768) overflows in int16
        level = CLIP_LEVEL * full_scale
        share = np.count_nonzero((audio >= level) | (audio <= -level)) / audio.size
        if share >= CLIP_SHARE:
            return f"is clipped: {share:.1%} of the samples at full scale (the limit is {CLIP_SHARE:.0%})"
    return None


def read_checked(utt_id, path, dtype="float32", clipping=True, sample_rate=SAMPLE_RATE):
    """Reads one utterance's audio as mono samples, refusing bad files (module docstring).

    ``dtype`` is ``float32`` or ``int16`` (as libsndfile converts); several
    channels are averaged. Raises CorpusError naming the utterance and file.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.zeros(1600), 16000)
    >>> read_checked("u1", p)
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: utterance u1: ...a.wav is silent (every sample has the same value)
    >>> sf.write(p, np.random.RandomState(0).randn(1600, 2) * 0.1, 16000)  # stereo: downmixed
    >>> read_checked("u1", p).shape
    (1600,)
    """
    if not os.path.isfile(path):
        raise utterance_error(utt_id, f"audio file {path} does not exist")
    try:
        problem = container_problem(path)
        if problem:
            raise ValueError(problem)
        with sf.SoundFile(path) as f:
            if f.samplerate != sample_rate:
                raise utterance_error(utt_id, f"{path} has sample rate {f.samplerate} Hz, expected {sample_rate} Hz")
            frames, is_float = f.frames, f.subtype in ("FLOAT", "DOUBLE")
            # libsndfile reads float files as int16 unscaled (every sample in (-1, 1) becomes 0): convert here
            audio = f.read(dtype="float32" if is_float else dtype, always_2d=True)
        if 0 < len(audio) < frames:
            raise ValueError(f"truncated: {len(audio)} of {frames} frames decode")
    except CorpusError:
        raise
    except Exception as e:  # soundfile raises several types for corrupt files
        raise utterance_error(utt_id, f"cannot read audio file {path}: {e}") from e
    problem = sample_problem(audio, 32767 if audio.dtype == np.int16 else 1.0, clipping)
    if problem:
        raise utterance_error(utt_id, f"{path} {problem}")
    if dtype == "int16" and audio.dtype != np.int16:
        audio = np.clip(np.rint(audio.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    if audio.shape[1] > 1:
        audio = audio.mean(axis=1).astype(audio.dtype)
    else:
        audio = audio[:, 0]
    if audio.max() == audio.min():
        raise utterance_error(utt_id, f"{path} is silent (every sample has the same value)")
    return audio


def check_audio_header(utt_id, path, sample_rate=SAMPLE_RATE):
    """The header-only check (corpora kept as they are): existence, container, rate, length; returns frames.

    Sample values (NaN, silence, clipping) are then checked when the file is
    read for training or evaluation (``kd_brain.data.dataio.read_audio``).
    """
    if not os.path.isfile(path):
        raise utterance_error(utt_id, f"audio file {path} does not exist")
    try:
        problem = container_problem(path)
        if problem:
            raise ValueError(problem)
        info = sf.info(path)
    except Exception as e:
        raise utterance_error(utt_id, f"cannot read audio file {path}: {e}") from e
    if info.samplerate != sample_rate:
        raise utterance_error(utt_id, f"{path} has sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
    if info.frames == 0:
        raise utterance_error(utt_id, f"{path} contains no samples")
    return info.frames
