"""Fuzzed input: generated bad corpora, manifests and audio.

Every fault must end in a CorpusError whose message names the utterance and
the file (the line too, for tables), or, with ``prepare_corpus(on_bad="skip")``,
in a counted skip that leaves the good utterances with their own labels; never
a crash inside csv / soundfile / torch and never a silently wrong example. The
cases are combinatorial (fault x where it occurs x mode x seed variant); each
group below builds its case list at import time, checks every case, and
``test_case_count`` adds them up. The rules are those of ``kd_brain.data.validate``.
"""

import csv
import io
import itertools
import math

import numpy as np
import pytest
import soundfile as sf

from kd_brain.data import validate
from kd_brain.data.prepare import CorpusError, check_and_convert, check_header, prepare_corpus, read_csv, read_kaldi_dir
from kd_brain.data.dataio import make_dataset, make_student_dataset, read_audio

SR = 16000
SEEDS = range(8)
ROLES = ("labelled", "unlabelled", "dev", "test")
MANIFEST = {"labelled": "labelled", "unlabelled": "unlabelled", "dev": "dev", "test": "test_clean"}
SPLITS = {role: [role] for role in ROLES}

# ---------------------------------------------------------------------------------------------- audio bank


def _signal(rng, channels=1, amp=None):
    """0.1-0.3 s of noise that never reaches full scale (|x| <= 0.9)."""
    n = int(rng.integers(1600, 4800))
    x = rng.standard_normal((n, channels)) * (amp if amp is not None else rng.uniform(0.05, 0.3))
    x = np.clip(x, -0.9, 0.9)
    return x[:, 0] if channels == 1 else x


def _cut(data, lo, hi, rng):
    return data[:int(rng.integers(lo, hi))]


def _flac_audio_start(data):
    """Offset of the first FLAC frame (after the metadata blocks)."""
    off = 4
    while True:
        last, length = data[off] & 0x80, int.from_bytes(data[off + 1:off + 4], "big")
        off += 4 + length
        if last:
            return off


def _encoded(stem, rng, fmt, subtype, ext):
    path = stem + ext
    sf.write(path, _signal(rng), SR, format=fmt, subtype=subtype)
    with open(path, "rb") as f:
        return path, f.read()


def _write_good(kind, stem, rng):
    if kind == "wav":
        path = stem + ".wav"
        sf.write(path, _signal(rng), SR, subtype="PCM_16")
    elif kind == "flac":
        path = stem + ".flac"
        sf.write(path, _signal(rng), SR)
    elif kind in ("opus", "vorbis"):
        path = stem + ".ogg"
        sf.write(path, _signal(rng), SR, format="OGG", subtype=kind.upper())
    elif kind == "float":
        path = stem + ".wav"
        sf.write(path, _signal(rng).astype(np.float32), SR, subtype="FLOAT")
    elif kind == "stereo":  # downmixed, not refused
        path = stem + ".wav"
        sf.write(path, _signal(rng, channels=2), SR, subtype="PCM_16")
    elif kind == "quiet":
        path = stem + ".flac"
        sf.write(path, _signal(rng, amp=1e-3), SR)
    elif kind == "few_clipped":  # 0.5 % of the samples at full scale: under the 1 % limit
        path, x = stem + ".wav", _signal(rng)
        idx = rng.choice(len(x), int(0.005 * len(x)), replace=False)
        x[idx] = rng.choice([-1.0, 1.0], len(idx))
        sf.write(path, x, SR, subtype="PCM_16")
    return path


RATES = [8000, 8000, 11025, 22050, 44100, 48000, 8000, 32000]
CLIP_SHARES = [0.011, 0.02, 0.05, 0.1, 0.3, 0.6, 1.0, 0.015]


def _write_fault(kind, stem, rng, seed):
    """Writes one faulty file; returns (path, fragment the error must contain)."""
    ext = [".wav", ".flac", ".ogg"][seed % 3]
    cannot = "cannot read audio file"
    if kind == "missing":
        return stem + ext, "does not exist"
    if kind == "zero_bytes":
        open(stem + ext, "wb").close()
        return stem + ext, cannot
    if kind == "no_samples":  # libsndfile cannot open a FLAC file without frames at all
        path = stem + [".wav", ".flac"][seed % 2]
        sf.write(path, np.zeros(0), SR)
        return path, "contains no samples" if path.endswith(".wav") else cannot
    if kind == "silent":
        path = stem + [".wav", ".flac", ".wav"][seed % 3]
        sf.write(path, np.zeros(int(rng.integers(1600, 4800))), SR, subtype=["PCM_16", "PCM_16", "FLOAT"][seed % 3])
        return path, "is silent"
    if kind == "cancel":  # channels in opposite phase: the downmix is digital silence
        x = np.rint(_signal(rng) * 32767).astype(np.int16)
        sf.write(stem + ".wav", np.stack([x, -x], 1), SR, subtype="PCM_16")
        return stem + ".wav", "is silent"
    if kind in ("nan", "inf"):
        x = _signal(rng).astype(np.float32)
        idx = rng.choice(len(x), int(rng.integers(1, 6)), replace=False)
        x[idx] = np.nan if kind == "nan" else rng.choice([-np.inf, np.inf], len(idx))
        sf.write(stem + ".wav", x, SR, subtype="FLOAT")
        return stem + ".wav", "NaN or infinite"
    if kind == "clipped":
        x = _signal(rng)
        k = min(len(x), math.ceil(CLIP_SHARES[seed] * len(x)) + 1)
        x[rng.choice(len(x), k, replace=False)] = rng.choice([-1.0, 1.0], k)
        path = stem + [".wav", ".flac"][seed % 2]
        sf.write(path, x, SR, subtype="PCM_16")
        return path, "is clipped"
    if kind == "rate":
        path = stem + [".wav", ".flac"][seed % 2]
        sf.write(path, _signal(rng), RATES[seed])
        return path, f"has sample rate {RATES[seed]} Hz, expected 16000 Hz"
    if kind in ("trunc_opus", "trunc_vorbis"):
        path, data = _encoded(stem, rng, "OGG", kind[6:].upper(), ".ogg")
        data = _cut(data, len(data) // 5, len(data) - 1, rng)
    elif kind == "trunc_wav":
        path, data = _encoded(stem, rng, "WAV", "PCM_16", ".wav")
        data = _cut(data, 60, len(data) - 1, rng)
    elif kind == "trunc_flac":  # cut inside the audio frames, so the header still opens
        path, data = _encoded(stem, rng, "FLAC", "PCM_16", ".flac")
        start = _flac_audio_start(data)
        data = _cut(data, start + (len(data) - start) // 10, start + 9 * (len(data) - start) // 10, rng)
    elif kind == "random":
        path, data = stem + ext, rng.bytes(int(rng.integers(1, 4000)))
    elif kind == "text":
        path, data = stem + ".wav", b"this is not audio\n" * int(rng.integers(1, 50))
    elif kind == "ogg_garbage":
        path, data = stem + ".ogg", b"OggS" + rng.bytes(int(rng.integers(1, 4000)))
    elif kind == "riff_garbage":
        path, data = stem + ".wav", b"RIFF" + rng.bytes(4) + b"WAVE" + rng.bytes(int(rng.integers(1, 4000)))
    with open(path, "wb") as f:
        f.write(data)
    return path, cannot


GOOD = ("wav", "flac", "opus", "vorbis", "float", "stereo", "quiet", "few_clipped")
FAULTS = ("missing", "zero_bytes", "no_samples", "silent", "cancel", "nan", "inf", "clipped", "rate", "trunc_opus",
          "trunc_vorbis", "trunc_wav", "trunc_flac", "random", "text", "ogg_garbage", "riff_garbage")
TEXT_FAULTS = {"empty_text": "", "blank_text": " \t "}
# What the header-only check (convert_audio=False) cannot see: it leaves them to load time
# (read_audio), except clipping, which only preparation with conversion checks.
HEADER_MISSES = {"silent", "cancel", "nan", "inf", "clipped", "trunc_flac"}
LOAD_MISSES = {"clipped"}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """{(kind, seed): (path, fragment)}: every good and faulty kind for every seed."""
    root = tmp_path_factory.mktemp("bank")
    out = {}
    for i, (kind, seed) in enumerate(itertools.product(GOOD + FAULTS, SEEDS)):
        rng = np.random.default_rng([seed, i])
        stem = str(root / f"{kind}_{seed}")
        out[kind, seed] = (_write_good(kind, stem, rng), None) if kind in GOOD else _write_fault(kind, stem, rng, seed)
    return out


def _uid(kind, seed, where=""):
    """Utterance IDs vary too: some carry non-ASCII letters."""
    return f"{where}{kind}-{seed}" + ("-é" if seed % 3 == 2 else "")


def _mono_int16(path):
    """What conversion must write: libsndfile's int16 samples, or floats x 32767 for a float file."""
    if sf.info(path).subtype in ("FLOAT", "DOUBLE"):
        x = np.clip(np.rint(sf.read(path, dtype="float64", always_2d=True)[0] * 32767), -32768, 32767)
        x = x.astype(np.int16)
    else:
        x, _ = sf.read(path, dtype="int16", always_2d=True)
    return x.mean(axis=1).astype(np.int16) if x.shape[1] > 1 else x[:, 0]


def _outcome(fn):
    """('ok', value), ('error', message) for a CorpusError, or ('crash', description)."""
    try:
        return "ok", fn()
    except CorpusError as e:
        return "error", str(e)
    except Exception as e:  # a crash deep in a library: always a failure
        return "crash", f"{type(e).__name__}: {e}"


def _expect_error(failures, case, outcome, *parts):
    kind, msg = outcome
    if kind != "error":
        failures.append(f"{case}: expected a CorpusError naming {parts}, got {kind}: {msg}")
    elif not all(p in msg for p in parts):
        failures.append(f"{case}: message {msg!r} lacks one of {parts}")


def _expect_ok(failures, case, outcome):
    if outcome[0] != "ok":
        failures.append(f"{case}: expected acceptance, got {outcome[0]}: {outcome[1]}")
        return False
    return True


def _report(failures, checked, cases):
    assert checked == len(cases), (checked, len(cases))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])


# ---------------------------------------------------------------- A: the readers, one file at a time

READERS = ("convert", "header", "load")
A_CASES = ([(k, s, r) for k in GOOD + FAULTS for s in SEEDS for r in READERS]
           + [(k, s, r) for k in TEXT_FAULTS for s in SEEDS for r in ("convert", "header")])


def test_audio_readers(bank, tmp_path):
    failures, checked = [], 0
    for kind, seed, reader in A_CASES:
        checked += 1
        case = f"A {kind} seed {seed} {reader}"
        src, fragment = bank["wav" if kind in TEXT_FAULTS else kind, seed]
        utt, wrd = _uid(kind, seed), TEXT_FAULTS.get(kind, "HELLO THERE")
        dst = str(tmp_path / f"{reader}_{kind}_{seed}.wav")
        call = {"convert": lambda: check_and_convert(utt, src, dst, wrd),
                "header": lambda: check_header(utt, src, wrd),
                "load": lambda: read_audio(src, utt)}[reader]
        outcome = _outcome(call)
        if kind in TEXT_FAULTS:
            _expect_error(failures, case, outcome, f"utterance {utt}: empty transcript")
        elif kind in FAULTS and not (reader == "header" and kind in HEADER_MISSES
                                     or reader == "load" and kind in LOAD_MISSES):
            _expect_error(failures, case, outcome, f"utterance {utt}:", src, fragment)
        elif _expect_ok(failures, case, outcome):
            frames = sf.info(src).frames
            value = outcome[1]
            if reader == "load":
                ok = tuple(value.shape) == (frames,) and str(value.dtype) == "torch.float32"
            elif reader == "header":
                ok = value == round(frames / SR, 4)
            else:
                ok = value == round(frames / SR, 4) and np.array_equal(_mono_int16(dst), _mono_int16(src)) \
                    and sf.info(dst).channels == 1 and sf.info(dst).samplerate == SR
            if not ok:
                failures.append(f"{case}: accepted but the result is wrong ({value!r})")
    _report(failures, checked, A_CASES)


# --------------------------------------------------------- B: prepare_corpus(on_bad="skip"), one big corpus


def _write_tables(d, rows, raw=None):
    """A Kaldi directory from rows (utt, wav, spk, text); ``raw`` {file name: bytes} replaces a table."""
    d.mkdir(parents=True, exist_ok=True)
    tables = {"wav.scp": [f"{u} {w}" for u, w, _, _ in rows], "text": [f"{u} {t}" for u, _, _, t in rows],
              "utt2spk": [f"{u} {s}" for u, _, s, _ in rows]}
    for name, lines in tables.items():
        data = (raw or {}).get(name, "".join(line + "\n" for line in lines).encode("utf-8"))
        if data is not None:
            (d / name).write_bytes(data)


def _transcript(utt):
    """A transcript unique to the utterance, so a label reaching the wrong one shows."""
    return " ".join(f"W{ord(c) % 97}" for c in utt)


def _role_seeds(r):
    return (2 * r, 2 * r + 1)  # every role uses its own files of the bank


B_CASES = [(k, role, s, conv) for conv in (True, False) for r, role in enumerate(ROLES)
           for k in GOOD + FAULTS + tuple(TEXT_FAULTS) for s in _role_seeds(r)]


def _big_corpus(root, bank):
    expected = {}  # utt -> (role, kind, src, fragment, transcript)
    rows = {role: [] for role in ROLES}
    for r, role in enumerate(ROLES):
        for kind in GOOD + FAULTS + tuple(TEXT_FAULTS):
            for seed in _role_seeds(r):
                utt = _uid(kind, seed, role[:3] + "_")
                src, fragment = bank["wav" if kind in TEXT_FAULTS else kind, seed]
                text = TEXT_FAULTS.get(kind, _transcript(utt))
                rows[role].append((utt, src, f"{role}_spk{seed % 2}", text))
                expected[utt] = (role, kind, src, fragment, text)
    for role in ROLES:
        _write_tables(root / role, rows[role])
    return expected


@pytest.mark.parametrize("convert", [True, False], ids=["convert", "header_only"])
def test_prepare_skip(bank, tmp_path, convert):
    expected = _big_corpus(tmp_path / "corpus", bank)
    out = tmp_path / "out"
    result = prepare_corpus(tmp_path / "corpus", out, splits=SPLITS, on_bad="skip", num_workers=2,
                            convert_audio=convert)
    skipped_lines = (out / "skipped.txt").read_text().splitlines()
    manifests = {role: {r["ID"]: r for r in read_csv(result[MANIFEST[role]])} for role in ROLES}
    hidden = {r["ID"]: r["wrd"] for r in read_csv(result["unlabelled_transcripts"])}
    failures, checked, n_bad = [], 0, 0
    cases = [c for c in B_CASES if c[3] == convert]
    for kind, role, seed, _ in cases:
        checked += 1
        utt = _uid(kind, seed, role[:3] + "_")
        _, _, src, fragment, text = expected[utt]
        case = f"B {kind} {role} seed {seed} convert={convert}"
        present = [r for r, m in manifests.items() if utt in m]
        lines = [line for line in skipped_lines if f"utterance {utt}:" in line]
        bad = kind in TEXT_FAULTS or kind in FAULTS and (convert or kind not in HEADER_MISSES)
        if bad:
            n_bad += 1
            want = ("empty transcript",) if kind in TEXT_FAULTS else (src, fragment)
            if present or len(lines) != 1 or not all(p in lines[0] for p in want):
                failures.append(f"{case}: in {present}, skip lines {lines}, wanted {want}")
            continue
        if present != [role]:
            failures.append(f"{case}: in manifests {present}, expected {role}")
            continue
        row = manifests[role][utt]
        label = hidden.get(utt) if role == "unlabelled" else row.get("wrd")
        if role == "unlabelled" and "wrd" in row:
            failures.append(f"{case}: the unlabelled manifest has a wrd column")
        if label != text or row["spk_id"] != f"{role}_spk{seed % 2}":
            failures.append(f"{case}: label {label!r}, expected {text!r}")
        if abs(float(row["duration"]) - sf.info(src).frames / SR) > 1e-4:
            failures.append(f"{case}: duration {row['duration']}")
        if convert and not np.array_equal(_mono_int16(row["wav"]), _mono_int16(src)):
            failures.append(f"{case}: converted audio is not the utterance's own")
        if not convert and row["wav"] != src:
            failures.append(f"{case}: wav {row['wav']} is not the corpus file")
    assert result["skipped"] == n_bad == len(skipped_lines), (result["skipped"], n_bad, len(skipped_lines))
    _report(failures, checked, cases)
    if not convert:  # what the header check let through is refused when training reads it
        _load_after_header_only(result, expected)


def _load_after_header_only(result, expected):
    tok = _Tok()
    failures, n = [], 0
    for role in ROLES:
        path = result[MANIFEST[role]]
        ds = make_student_dataset([path], tok) if role == "unlabelled" else make_dataset(path)
        for i, utt in enumerate(ds.data_ids):
            _, kind, src, fragment, _ = expected[utt]
            outcome = _outcome(lambda: ds[i])
            if kind in FAULTS and kind not in LOAD_MISSES:
                n += 1
                _expect_error(failures, f"B-load {utt}", outcome, f"utterance {utt}:", src, fragment)
            else:
                _expect_ok(failures, f"B-load {utt}", outcome)
    assert n == 4 * 2 * len(HEADER_MISSES - LOAD_MISSES), n
    assert not failures, "\n".join(failures[:40])


# ------------------------------------------------------- C: prepare_corpus(on_bad="error"), one fault a run

C_CASES = ([(k, True) for k in FAULTS + tuple(TEXT_FAULTS)]
           + [(k, False) for k in FAULTS + tuple(TEXT_FAULTS) if k not in HEADER_MISSES])


def test_prepare_error(bank, tmp_path):
    failures, checked = [], 0
    for n, (kind, convert) in enumerate(C_CASES):
        checked += 1
        seed, role = n % 8, ROLES[n % 4]
        root = tmp_path / f"c{n}"
        rows = {r: [(f"{r[:3]}_good{n}", bank["wav", (seed + 1) % 8][0], f"{r}_spk", "HI")] for r in ROLES}
        utt = _uid(kind, seed, "bad_")
        src, fragment = bank["wav" if kind in TEXT_FAULTS else kind, seed]
        rows[role].append((utt, src, f"{role}_spk", TEXT_FAULTS.get(kind, "HELLO")))
        for r in ROLES:
            _write_tables(root / r, rows[r])
        outcome = _outcome(lambda: prepare_corpus(root, root / "out", splits=SPLITS, num_workers=1,
                                                  convert_audio=convert))
        want = ("empty transcript",) if kind in TEXT_FAULTS else (src, fragment)
        _expect_error(failures, f"C {kind} {role} convert={convert}", outcome, f"utterance {utt}:", *want,
                      "on_bad=skip")
        if (root / "out" / "prepare_done.json").exists():
            failures.append(f"C {kind}: a failed preparation was marked done")
    _report(failures, checked, C_CASES)


# ------------------------------------------------------------------------- D: broken Kaldi tables

TABLE_FAULTS = ("wav_no_path", "wav_pipe", "wav_space", "spk_none", "spk_two", "dup_wav", "dup_text", "dup_spk",
                "utf8_wav", "utf8_text", "utf8_spk", "nul_text", "noentry_text", "noentry_spk", "slash_id",
                "dotdot_id", "missing_table")
D_CASES = [(k, role, mode, s) for k in TABLE_FAULTS for role in ROLES for mode in ("error", "skip") for s in range(3)]
TABLE_OF = {"wav": "wav.scp", "text": "text", "spk": "utt2spk"}


def _table_fault(kind, rows, rng):
    """Mutates one directory's tables; returns (raw tables, utt, table file, line or None, fragment)."""
    lines = {"wav.scp": [f"{u} {w}" for u, w, _, _ in rows], "text": [f"{u} {t}" for u, _, _, t in rows],
             "utt2spk": [f"{u} {s}" for u, _, s, _ in rows]}
    i = int(rng.integers(len(rows)))
    utt = rows[i][0]
    name = TABLE_OF.get(kind.split("_")[-1], "wav.scp")
    line, fragment = i + 1, None
    if kind == "wav_no_path":
        lines[name][i], fragment = utt, "only 'utt path' lines"
    elif kind == "wav_pipe":
        lines[name][i], fragment = f"{utt} sox {rows[i][1]} -t wav - |", "only 'utt path' lines"
    elif kind == "wav_space":
        lines[name][i], fragment = f"{utt} my audio/{utt}.wav", "only 'utt path' lines"
    elif kind == "spk_none":
        name, fragment = "utt2spk", "exactly one speaker"
        lines[name][i] = utt
    elif kind == "spk_two":
        name, fragment = "utt2spk", "exactly one speaker"
        lines[name][i] = f"{utt} spk_a spk_b"
    elif kind.startswith("dup_"):
        j = int(rng.integers(len(rows) + 1))
        lines[name].insert(j, lines[name][i])
        first, line = (i + 1, j + 1) if j > i else (j + 1, i + 2)  # the later copy is the one refused
        fragment = f"appears twice (first on line {first})"
    elif kind.startswith("utf8_"):
        lines[name][i] = lines[name][i] + "@BAD@"
        fragment = "not valid UTF-8"
    elif kind == "nul_text":
        name, fragment = "text", "NUL"
        lines[name][i] += "@NUL@"
    elif kind.startswith("noentry_"):
        del lines[name][i]
        line, fragment = None, f"no entry for utterance {utt}"
    elif kind in ("slash_id", "dotdot_id"):
        utt = f"a/{utt}" if kind == "slash_id" else ".."
        for n in lines:
            lines[n][i] = utt + lines[n][i][len(rows[i][0]):]
        fragment = "cannot name a file"
    elif kind == "missing_table":
        name = ["text", "utt2spk", "wav.scp"][int(rng.integers(3))]
        return {name: None}, None, name, None, "missing"
    bad_bytes = [b"\xe9", b"\xff\xfe", b"\xc3\x28", b"\x80abc"][int(rng.integers(4))]
    raw = {n: "".join(x + "\n" for x in ls).encode("utf-8").replace(b"@BAD@", bad_bytes).replace(b"@NUL@", b"\x00")
           for n, ls in lines.items()}
    return raw, utt, name, line, fragment


def test_kaldi_table_faults(bank, tmp_path):
    failures, checked = [], 0
    for n, (kind, role, mode, seed) in enumerate(D_CASES):
        checked += 1
        rng = np.random.default_rng([n, seed])
        root = tmp_path / f"d{n}"
        for r in ROLES:
            rows = [(_uid(f"{r[:3]}{k}", seed), bank["wav", k][0], f"{r}_s{k % 2}", f"HELLO {k}")
                    for k in range(int(rng.integers(2, 6)))]
            raw = None
            if r == role:
                raw, utt, name, line, fragment = _table_fault(kind, rows, rng)
            _write_tables(root / r, rows, raw)
        outcome = _outcome(lambda: prepare_corpus(root, root / "out", splits=SPLITS, on_bad=mode, num_workers=1))
        parts = [str(root / role / name) + (f":{line}:" if line else ""), fragment]
        if utt is not None:
            parts.append(utt)
        _expect_error(failures, f"D {kind} {role} {mode} seed {seed}", outcome, *parts)
    _report(failures, checked, D_CASES)


GOOD_TABLES = ("bom", "crlf", "tabs", "blank_lines", "trailing_space", "extra_entries")
D_GOOD_CASES = [(k, s) for k in GOOD_TABLES for s in range(4)]


def test_kaldi_tables_accepted(bank, tmp_path):
    """Harmless variations must be read with exact labels (no BOM in an ID, no CR in a transcript)."""
    failures, checked = [], 0
    for n, (kind, seed) in enumerate(D_GOOD_CASES):
        checked += 1
        rows = [(_uid(f"g{k}", seed), bank["wav", k][0], f"s{k}", f"HELLO {k} THERE") for k in range(3)]
        tables = {"wav.scp": [f"{u} {w}" for u, w, _, _ in rows], "text": [f"{u} {t}" for u, _, _, t in rows],
                  "utt2spk": [f"{u} {s}" for u, _, s, _ in rows]}
        sep, end, start = " ", "\n", ""
        if kind == "bom":
            start = "\ufeff"
        elif kind == "crlf":
            end = "\r\n"
        elif kind == "tabs":
            sep = "\t"
        if kind == "extra_entries":
            tables["text"].append("stray HELLO")
            tables["utt2spk"].append("stray s9")
        raw = {}
        for name, lines in tables.items():
            lines = [line.replace(" ", sep, 1) + ("  \t" if kind == "trailing_space" else "") for line in lines]
            if kind == "blank_lines":
                lines = [x for line in lines for x in ("", line, "   ")]
            raw[name] = (start + "".join(line + end for line in lines)).encode("utf-8")
        _write_tables(tmp_path / f"g{n}", rows, raw)
        outcome = _outcome(lambda: read_kaldi_dir(tmp_path / f"g{n}"))
        if _expect_ok(failures, f"D-good {kind} {seed}", outcome):
            want = {u: {"wav": w, "wrd": t, "spk_id": s} for u, w, s, t in rows}
            if outcome[1] != want:
                failures.append(f"D-good {kind} {seed}: read {outcome[1]}, expected {want}")
    _report(failures, checked, D_GOOD_CASES)


# ------------------------------------------------------------------- E: broken CSV manifests


class _Tok:
    def encode(self, text):
        return [1 + ord(c) % 7 for c in text]


LAB_FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]
UNL_FIELDS = ["ID", "duration", "wav", "spk_id"]
CSV_READERS = ("labelled", "unlabelled", "test", "student")
CSV_FAULTS = ("no_id_col", "no_wav_col", "no_duration_col", "dup_header", "empty_file", "short_row", "long_row",
              "dup_id", "cross_dup", "utf8_wav", "utf8_spk", "utf8_wrd", "nul_wav", "newline", "unterminated_quote",
              "empty_wrd", "blank_wrd", "bad_duration", "empty_wav", "space_id", "slash_id")
NEEDS_WRD = {"utf8_wrd", "empty_wrd", "blank_wrd"}
E_CASES = [(k, r, s) for k in CSV_FAULTS for r in CSV_READERS for s in range(3)
           if not (k in NEEDS_WRD and r == "unlabelled") and not (k == "cross_dup" and r != "student")]
BAD_DURATIONS = ["abc", "nan", "-1", "0", "inf", "", "1e999", "0x10"]


def _csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _manifest_rows(bank, prefix, n, labelled, seed):
    rows = []
    for k in range(n):
        utt = _uid(f"{prefix}{k}", seed)
        path = bank[GOOD[k % len(GOOD)], k % 8][0]
        row = [utt, str(round(sf.info(path).frames / SR, 4)), path, f"spk{k % 3}"]
        rows.append(row + [_transcript(utt)] if labelled else row)
    return rows


def _csv_fault(kind, path, rows, fields, rng, seed):
    """Writes a manifest with one fault; returns the parts its error must name."""
    header = list(fields)
    i = int(rng.integers(len(rows)))
    utt, line = rows[i][0], i + 2
    col = {"wav": 2, "spk": 3, "wrd": 4}
    parts = None
    if kind == "no_id_col" or kind == "no_wav_col" or kind == "no_duration_col":
        c = {"no_id_col": 0, "no_wav_col": 2, "no_duration_col": 1}[kind]
        name = header.pop(c)
        rows = [r[:c] + r[c + 1:] for r in rows]
        parts = [f"{path}:1:", f"no column '{name}'"]
    elif kind == "dup_header":
        header.append(header[int(rng.integers(len(header)))])
        rows = [r + ["x"] for r in rows]
        parts = [f"{path}:1:", "repeated column names"]
    elif kind == "empty_file":
        with open(path, "wb") as f:
            f.write(b"" if seed % 2 else b"\n\n")
        return [f"{path}:1:", "no header line"]
    elif kind == "short_row":
        rows[i] = rows[i][:-1 - int(rng.integers(len(header) - 1))]
        parts = [f"{path}:{line}:", f"utterance {utt}:", f"the header has {len(header)}"]
    elif kind == "long_row":
        rows[i] = rows[i] + ["EXTRA"] * int(rng.integers(1, 3))
        parts = [f"{path}:{line}:", f"utterance {utt}:", f"the header has {len(header)}"]
    elif kind == "dup_id":
        j = int(rng.integers(len(rows)))
        if j == i:
            j = (i + 1) % len(rows)
        rows[j] = [utt] + rows[j][1:]
        first, second = sorted((i, j))
        parts = [f"{path}:{second + 2}:", f"utterance {utt}:", f"appears twice (first on line {first + 2})"]
    elif kind in ("utf8_wav", "utf8_spk", "utf8_wrd", "nul_wav"):
        c = col[kind.split("_")[1]]
        rows[i][c] = rows[i][c] + ("@NUL@" if kind == "nul_wav" else "@BAD@")
        parts = [f"{path}:{line}:", f"utterance {utt}:", f"column {header[c]}",
                 "NUL" if kind == "nul_wav" else "not valid UTF-8"]
    elif kind == "newline":
        c = 4 if len(header) > 4 else 3
        rows[i][c] = rows[i][c] + "\nSECOND LINE"
        parts = [f"utterance {utt}:", f"column {header[c]}", "line break"]
    elif kind == "unterminated_quote":
        i, utt = len(rows) - 1, rows[-1][0]
        body = _csv_text([header] + rows[:-1]) + ",".join(rows[-1][:-1]) + ',"' + rows[-1][-1] + "\n"
        with open(path, "wb") as f:
            f.write(body.encode("utf-8"))
        return [f"{path}:{len(rows) + 1}:", f"utterance {utt}:", "not a readable CSV"]
    elif kind in ("empty_wrd", "blank_wrd"):
        rows[i][4] = "" if kind == "empty_wrd" else "  \t "
        parts = [f"{path}:{line}:", f"utterance {utt}:", "column wrd: empty transcript"]
    elif kind == "bad_duration":
        rows[i][1] = BAD_DURATIONS[(seed + i) % len(BAD_DURATIONS)]
        parts = [f"{path}:{line}:", f"utterance {utt}:", "column duration"]
    elif kind == "empty_wav":
        rows[i][2] = ""
        parts = [f"{path}:{line}:", f"utterance {utt}:", "column wav: no audio path"]
    elif kind in ("space_id", "slash_id"):
        utt = rows[i][0] = (utt[:2] + " " + utt[2:]) if kind == "space_id" else f"../{utt}"
        parts = [f"{path}:{line}:", "column ID", utt]
    text = _csv_text([header] + rows)
    if seed == 2:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    bad = [b"\xe9", b"\xff", b"\xed\xa0\x80", b"\xc0\xaf"][seed % 4]
    with open(path, "wb") as f:
        f.write(data.replace(b"@BAD@", bad).replace(b"@NUL@", b"\x00"))
    return parts


def _build(reader, lab, unl):
    if reader == "student":
        return make_student_dataset([lab, unl], _Tok())
    return make_dataset(lab if reader != "unlabelled" else unl, sort_key="duration" if reader == "test" else None)


def test_manifest_faults(bank, tmp_path):
    failures, checked = [], 0
    for n, (kind, reader, seed) in enumerate(E_CASES):
        checked += 1
        rng = np.random.default_rng([n, seed, 7])
        lab, unl = str(tmp_path / f"e{n}_lab.csv"), str(tmp_path / f"e{n}_unl.csv")
        lab_rows = _manifest_rows(bank, "l", int(rng.integers(3, 7)), True, seed)
        unl_rows = _manifest_rows(bank, "u", int(rng.integers(3, 7)), False, seed)
        in_unl = reader == "unlabelled" or reader == "student" and seed % 2 and kind not in NEEDS_WRD
        target, rows, fields = (unl, unl_rows, UNL_FIELDS) if in_unl else (lab, lab_rows, LAB_FIELDS)
        other, other_rows, other_fields = (lab, lab_rows, LAB_FIELDS) if in_unl else (unl, unl_rows, UNL_FIELDS)
        if kind == "cross_dup":
            utt = other_rows[int(rng.integers(len(other_rows)))][0]
            rows[int(rng.integers(len(rows)))][0] = utt
            parts = [utt, "also in another training manifest"]
            with open(target, "w", encoding="utf-8") as f:
                f.write(_csv_text([fields] + rows))
        else:
            parts = _csv_fault(kind, target, rows, fields, rng, seed)
        with open(other, "w", encoding="utf-8") as f:
            f.write(_csv_text([other_fields] + other_rows))
        case = f"E {kind} {reader} seed {seed}"
        outcome = _outcome(lambda: _build(reader, lab, unl))
        if kind == "no_duration_col" and reader != "student":  # duration is optional outside training sets
            if _expect_ok(failures, case, outcome):
                _check_items(failures, case, outcome[1], {r[0]: r for r in rows}, reader != "unlabelled")
            continue
        if kind == "cross_dup":
            parts.append(unl)  # found when the second manifest is read
        _expect_error(failures, case, outcome, *parts)
    _report(failures, checked, E_CASES)


def _check_items(failures, case, ds, rows, labelled):
    """Every item loads, with its own transcript (``rows``: ID -> manifest row, wrd last)."""
    for i, utt in enumerate(ds.data_ids):
        outcome = _outcome(lambda: ds[i])
        if not _expect_ok(failures, f"{case} item {utt}", outcome):
            continue
        item = outcome[1]
        if item["id"] != utt or item["sig"].shape[0] != sf.info(rows[utt][2]).frames:
            failures.append(f"{case}: item {utt} has the wrong audio")
        if labelled and item.get("wrd") != rows[utt][-1]:
            failures.append(f"{case}: item {utt} has transcript {item.get('wrd')!r}, expected {rows[utt][-1]!r}")


GOOD_CSV = ("bom", "crlf", "quoted_comma", "odd_path", "unicode_wrd", "blank_lines", "dollar_path")
E_GOOD_CASES = [(k, r, s) for k in GOOD_CSV for r in CSV_READERS for s in range(2)]


def test_manifests_accepted(bank, tmp_path):
    """Harmless variations: the items load with their own audio and exact transcripts."""
    odd = {}
    for name in ("a b, c.wav", "x$data_root.wav"):
        odd[name] = str(tmp_path / name)
        sf.write(odd[name], _signal(np.random.default_rng(len(name))), SR, subtype="PCM_16")
    failures, checked = [], 0
    for n, (kind, reader, seed) in enumerate(E_GOOD_CASES):
        checked += 1
        lab_rows = _manifest_rows(bank, "l", 4, True, seed)
        unl_rows = _manifest_rows(bank, "u", 3, False, seed)
        for rows in (lab_rows, unl_rows):
            if kind == "quoted_comma" and len(rows[0]) == 5:
                rows[1][4] = "HELLO, WORLD \"QUOTED\""
            elif kind == "unicode_wrd" and len(rows[0]) == 5:
                rows[2][4] = "ÇA VA 日本 naïve"
            elif kind in ("odd_path", "dollar_path"):
                path = odd["a b, c.wav" if kind == "odd_path" else "x$data_root.wav"]
                rows[0][2], rows[0][1] = path, str(round(sf.info(path).frames / SR, 4))
        paths = {}
        for name, rows, fields in (("lab", lab_rows, LAB_FIELDS), ("unl", unl_rows, UNL_FIELDS)):
            text = _csv_text([fields] + rows)
            if kind == "bom":
                text = "\ufeff" + text
            elif kind == "crlf":
                text = text.replace("\n", "\r\n")
            elif kind == "blank_lines":
                text = text.replace("\n", "\n\n")
            paths[name] = str(tmp_path / f"g{n}_{name}.csv")
            with open(paths[name], "w", encoding="utf-8", newline="") as f:
                f.write(text)
        outcome = _outcome(lambda: _build(reader, paths["lab"], paths["unl"]))
        case = f"E-good {kind} {reader} seed {seed}"
        if _expect_ok(failures, case, outcome):
            rows = {r[0]: r for r in (unl_rows if reader == "unlabelled" else lab_rows)}
            if reader == "student":
                rows.update({r[0]: r + [""] for r in unl_rows})
            if sorted(outcome[1].data_ids) != sorted(rows):
                failures.append(f"{case}: IDs {outcome[1].data_ids}")
            else:
                _check_items(failures, case, outcome[1], rows, reader != "unlabelled")
    _report(failures, checked, E_GOOD_CASES)


# ----------------------------------------------- F: valid manifests pointing at bad audio (load time)

F_CASES = [(k, r, s) for k in FAULTS for i, r in enumerate(CSV_READERS) for s in (2 * i, 2 * i + 1)]


def test_load_time_audio_faults(bank, tmp_path):
    """Training and evaluation read audio lazily: a bad file stops with the utterance and file named."""
    failures, checked = [], 0
    expect = {}
    by_reader = {r: {"lab": [], "unl": []} for r in CSV_READERS}
    for kind, reader, seed in F_CASES:
        utt = _uid(kind, seed, f"{reader[:3]}_")
        src, fragment = bank[kind, seed]
        side = "unl" if reader == "unlabelled" or reader == "student" and seed % 2 else "lab"
        row = [utt, "0.2", src, "spk"] + ([] if side == "unl" else [_transcript(utt)])
        by_reader[reader][side].append(row)
        expect[utt] = (kind, reader, seed, src, fragment)
    for reader in CSV_READERS:
        for side in ("lab", "unl"):
            by_reader[reader][side] += _manifest_rows(bank, f"{reader[:3]}{side}", 3, side == "lab", 0)
        lab, unl = str(tmp_path / f"{reader}_lab.csv"), str(tmp_path / f"{reader}_unl.csv")
        with open(lab, "w", encoding="utf-8") as f:
            f.write(_csv_text([LAB_FIELDS] + by_reader[reader]["lab"]))
        with open(unl, "w", encoding="utf-8") as f:
            f.write(_csv_text([UNL_FIELDS] + by_reader[reader]["unl"]))
        ds = _build(reader, lab, unl)
        rows = {r[0]: r for side in ("lab", "unl") for r in by_reader[reader][side]}
        for i, utt in enumerate(ds.data_ids):
            outcome = _outcome(lambda: ds[i])
            if utt not in expect:
                if _expect_ok(failures, f"F good {utt}", outcome) and "wrd" in outcome[1] \
                        and outcome[1]["wrd"] != (rows[utt][4] if len(rows[utt]) > 4 else ""):
                    failures.append(f"F good {utt}: transcript {outcome[1]['wrd']!r}")
                continue
            kind, _, seed, src, fragment = expect[utt]
            checked += 1
            case = f"F {kind} {reader} seed {seed}"
            if kind in LOAD_MISSES:
                _expect_ok(failures, case, outcome)
            else:
                _expect_error(failures, case, outcome, f"utterance {utt}:", src, fragment)
    _report(failures, checked, F_CASES)


# --------------------------------------------------------------------------------------- the count


def test_case_count():
    groups = {"A readers": A_CASES, "B prepare skip": B_CASES, "C prepare error": C_CASES,
              "D kaldi tables": D_CASES, "D accepted tables": D_GOOD_CASES, "E manifests": E_CASES,
              "E accepted manifests": E_GOOD_CASES, "F load time": F_CASES}
    counts = {name: len(cases) for name, cases in groups.items()}
    total = sum(counts.values())
    print(f"fuzz cases: {total} {counts}")
    assert total >= 1000, counts
    assert validate.CLIP_SHARE == 0.01 and validate.CLIP_LEVEL == 0.999  # the thresholds the cases are built on
