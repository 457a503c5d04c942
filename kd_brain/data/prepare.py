"""Corpus preparation: Kaldi data directories -> SpeechBrain CSV manifests.

A corpus is one or more Kaldi data directories (``wav.scp``, ``text``,
``utt2spk``; audio paths relative to the corpus root). Preparation

1. validates every utterance (audio present, readable and complete, 16 kHz,
   finite, not silent, not clipped; non-empty transcript: ``kd_brain.data.validate``)
   and stops with the utterance ID and file, or counts and logs a skip when
   ``on_bad="skip"`` (faults of the Kaldi tables themselves always stop);
2. converts the compressed audio once to 16-bit WAV in the output folder
   (Ogg/Opus decodes at a few hundred x real time; WAV reads are ~free, and
   training reads each file once per epoch);
3. assigns the utterances to ``labelled``, ``unlabelled``, ``dev`` and
   ``test_clean``: either a seeded speaker split of one training directory
   (``labelled_fraction``, ``n_dev_speakers``; the corpus's test directory
   becomes ``test_clean``), or predefined splits, Kaldi directories per role
   (``splits``, e.g. LibriSpeech's standard subsets; further test roles
   ``test_<name>`` give ``test_<name>.csv``). Either way an exclusion list
   (``exclude_csv``: the speakers a re-recorded test set replays) is taken out
   of training, and ``labelled_hours`` keeps a seeded subset of whole labelled
   speakers, the others joining the unlabelled pool (``kd_brain.data.splits``).

The unlabelled manifest has no ``wrd`` column at all, so no training code can
read its transcripts by accident; they go to ``unlabelled_transcripts.csv``,
which only evaluation of the unlabelled pool may read.
"""

import csv
import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import soundfile as sf

from kd_brain.data import validate
from kd_brain.pipeline.atomic import write_json, write_text
# CorpusError and split_speakers live in kd_brain.data.splits (no audio there); re-exported here
from kd_brain.data.splits import (TRAINING_ROLES, CorpusError, apply_exclusions, check_disjoint,  # noqa: F401
                             normalise_splits, read_exclusions, read_spk2gender, select_hours, split_speakers)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
LABELLED_FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]
UNLABELLED_FIELDS = ["ID", "duration", "wav", "spk_id"]
SPLITS = ("labelled", "unlabelled", "dev", "test_clean")


def process_pool(num_workers, **kwargs):
    """Worker processes started by forkserver, not fork.

    A child forked from a process that has run torch's OpenMP threads can
    crash in libgomp: a segfault in the room-bank workers of the prepare
    stages, intermittent (a rerun passes).
    """
    return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("forkserver"), **kwargs)


def read_kaldi_dir(data_dir):
    """Reads a Kaldi data directory into ``{utt_id: {"wav", "wrd", "spk_id"}}``.

    ``wav`` is the path as written in ``wav.scp`` (relative to the corpus
    root, or absolute). Only simple ``utt path`` lines are supported: piped
    commands are refused with the line that holds one. Any fault of the
    tables (encoding, IDs, duplicates, a missing entry) is a CorpusError
    naming the file, line and utterance (``kd_brain.data.validate.kaldi_table``).

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "wav.scp").write_text("u1 audio/u1.wav\\n")
    >>> _ = (d / "text").write_text("u1 HELLO WORLD\\n")
    >>> _ = (d / "utt2spk").write_text("u1 s1\\n")
    >>> read_kaldi_dir(d)["u1"]["wrd"]
    'HELLO WORLD'
    """
    tables = {}
    for name, kind in (("wav.scp", "wav"), ("text", "text"), ("utt2spk", "spk")):
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise CorpusError(f"{path}: missing (a Kaldi data directory needs wav.scp, text, utt2spk)")
        tables[name] = validate.kaldi_table(path, kind)  # rules: kd_brain.data.validate
    utts = tables["wav.scp"]
    for name in ("text", "utt2spk"):
        missing = sorted(set(utts) - set(tables[name]))
        if missing:
            raise CorpusError(f"{os.path.join(data_dir, name)}: no entry for utterance {missing[0]} ({len(missing)} missing)")
    return {
        u: {"wav": utts[u], "wrd": tables["text"][u], "spk_id": tables["utt2spk"][u]}
        for u in sorted(utts)
    }


def check_and_convert(utt_id, src, dst, wrd=None):
    """Validates one utterance and writes it as 16-bit WAV at ``dst``.

    Returns the duration in seconds. Raises CorpusError naming the utterance
    and file for: a missing, unreadable or truncated file, a sample rate other
    than 16 kHz, empty, non-finite, silent or clipped audio, or (when ``wrd``
    is given) an empty transcript; several channels are downmixed (rules and
    thresholds: ``kd_brain.data.validate``). Writing goes through a temporary file,
    so an interrupted conversion never leaves a truncated WAV behind.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "a.flac"), np.random.RandomState(0).randn(1600) * 0.1, 16000)
    >>> check_and_convert("u1", os.path.join(d, "a.flac"), os.path.join(d, "a.wav"), "HI")
    0.1
    """
    validate.check_transcript(utt_id, wrd)
    audio = validate.read_checked(utt_id, src, dtype="int16", clipping=True, sample_rate=SAMPLE_RATE)
    if dst != src:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + ".part.wav"
        sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp, dst)
    return round(len(audio) / SAMPLE_RATE, 4)


def check_header(utt_id, src, wrd=None):
    """Like ``check_and_convert`` but reads only the header (for corpora kept as they are).

    Sample values (NaN, silence) are checked when training reads the file.
    """
    validate.check_transcript(utt_id, wrd)
    return round(validate.check_audio_header(utt_id, src, SAMPLE_RATE) / SAMPLE_RATE, 4)


def _convert_job(args):
    utt, src, dst, wrd = args
    try:
        if dst == src:
            return utt, check_header(utt, src, wrd), None
        if os.path.isfile(dst):  # resumed conversion: finished files were written atomically
            return utt, round(sf.info(dst).frames / SAMPLE_RATE, 4), None
        return utt, check_and_convert(utt, src, dst, wrd), None
    except CorpusError as e:
        return utt, None, str(e)


def write_csv(path, rows, fields):
    """Writes rows (dicts) to a CSV atomically: complete or absent, and a failed write names the file."""
    from kd_brain.pipeline.atomic import atomic_open

    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path):
    """Reads a manifest into a list of dicts (keeps file order).

    Refuses, naming file and line, what ``kd_brain.data.validate.csv_rows`` does:
    non-UTF-8 text, NUL characters, repeated header names, rows whose field
    count differs from the header's.
    """
    return [row for _, row in validate.csv_rows(path)[1]]


def read_transcripts(labelled_csv, user):
    """Rows of a manifest with transcripts, and a hash of them; refuses one without ``wrd``.

    The unlabelled pool's manifest has no ``wrd`` column, so whatever is built
    from this (``user``: tokenizer, language model) never sees its transcripts.
    """
    rows = read_csv(labelled_csv)
    if not rows or "wrd" not in rows[0]:
        raise CorpusError(f"{labelled_csv}: no 'wrd' column; the {user} trains on labelled transcripts only")
    return rows, hashlib.sha1("\n".join(r["wrd"] for r in rows).encode()).hexdigest()


def built_with(info_path, options):
    """True when ``info_path`` (JSON written after a build) records exactly ``options``."""
    if not os.path.isfile(info_path):
        return False
    with open(info_path) as f:
        return json.load(f) == options


def options_hash(options):
    """A short stable hash of a JSON-able dict of options."""
    return hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def manifest_name(role):
    """The manifest of a role: ``test`` is ``test_clean``, every other role keeps its name."""
    return "test_clean" if role == "test" else role


def _read_speaker_split(corpus_dir, train_subdir, test_subdir, labelled_fraction, n_dev_speakers, seed,
                        exclusions):
    """Roles of the speaker-fraction split: one training directory split by speaker, one test directory."""
    train = read_kaldi_dir(os.path.join(corpus_dir, train_subdir))
    test = read_kaldi_dir(os.path.join(corpus_dir, test_subdir))
    if set(train) & set(test):
        raise CorpusError(f"{corpus_dir}: utterance IDs repeat between {train_subdir} and {test_subdir}")
    excluded = apply_exclusions({"train": train}, *exclusions, corpus_dir, roles=("train",)) if exclusions else 0
    overlap = {v["spk_id"] for v in train.values()} & {v["spk_id"] for v in test.values()}
    if overlap:
        raise CorpusError(f"{corpus_dir}: speakers in both {train_subdir} and {test_subdir}: {sorted(overlap)[:5]}")
    groups = split_speakers({v["spk_id"] for v in train.values()}, labelled_fraction, n_dev_speakers, seed)
    spk2split = {s: name for name, spks in groups.items() for s in spks}
    roles = {role: {} for role in (*TRAINING_ROLES, "test")}
    for utt, u in train.items():
        roles[spk2split[u["spk_id"]]][utt] = u
    roles["test"] = test
    audio_dir = {utt: manifest_name(role) for role, utts in roles.items() for utt in utts}
    return roles, audio_dir, read_spk2gender(os.path.join(corpus_dir, train_subdir)), excluded


def _read_predefined(corpus_dir, splits, exclusions):
    """Roles of predefined splits: each role is the union of its Kaldi directories."""
    roles, audio_dir, where, spk2gender = {}, {}, {}, {}
    for role, subdirs in splits.items():
        roles[role] = {}
        for sub in subdirs:
            utts = read_kaldi_dir(os.path.join(corpus_dir, sub))
            for utt, u in utts.items():
                if utt in where:
                    raise CorpusError(f"{corpus_dir}: utterance {utt} is in both {where[utt]} and {sub}")
                where[utt] = sub
                roles[role][utt] = u
                audio_dir[utt] = sub  # converted audio by source directory: stable whatever the roles
            if role == "labelled":
                spk2gender.update(read_spk2gender(os.path.join(corpus_dir, sub)))
    excluded = apply_exclusions(roles, *exclusions, corpus_dir) if exclusions else 0
    check_disjoint({r: {u["spk_id"] for u in utts.values()} for r, utts in roles.items()}, corpus_dir)
    return roles, audio_dir, spk2gender, excluded


def prepare_corpus(
    corpus_dir,
    out_dir,
    train_subdir="train",
    test_subdir="test",
    labelled_fraction=0.5,
    n_dev_speakers=5,
    seed=1234,
    on_bad="error",
    num_workers=2,
    convert_audio=True,
    splits=None,
    labelled_hours=None,
    exclude_csv=None,
):
    """Prepares manifests for the semi-supervised split (see module docstring).

    Skipped when ``out_dir`` holds a finished preparation with the same
    options (SpeechBrain's ``skip_prep`` pattern); redone when they change.
    Returns a dict with the manifest paths (``labelled``, ``unlabelled``,
    ``dev``, ``test_clean``, ``unlabelled_transcripts`` and one per further
    test role), the skip count and the number of excluded utterances.

    Arguments
    ---------
    corpus_dir : str
        Corpus root; the Kaldi data directories named below are in it.
    out_dir : str
        Where manifests and converted audio go.
    train_subdir, test_subdir : str
        The speaker-fraction split (``splits=None``): the training directory
        split by speaker, and the clean test directory.
    labelled_fraction : float
        Fraction of the (non-dev) training speakers whose transcripts are used.
    n_dev_speakers : int
        Training speakers held out for model selection.
    seed : int
        Seed of the speaker split and of the ``labelled_hours`` subset.
    on_bad : "error" or "skip"
        Stop at the first bad utterance, or log it, count it and leave it out.
    num_workers : int
        Processes for checking and converting audio.
    convert_audio : bool
        Write 16-bit WAV copies (worth it for Ogg/Opus, read every epoch);
        False keeps the corpus files (e.g. LibriSpeech FLAC) and checks headers only.
    splits : dict or None
        Predefined splits instead of the speaker-fraction split: ``{role:
        [subdir, ...]}`` for roles ``labelled``, ``unlabelled``, ``dev``,
        ``test`` and further ``test_<name>`` (``kd_brain.data.splits.normalise_splits``).
    labelled_hours : float or None
        Keep only this much labelled audio: whole speakers, seeded
        (``kd_brain.data.splits.select_hours``); the rest join the unlabelled pool.
    exclude_csv : str or None
        Utterances (``ID, spk_id``) whose speakers are taken out of every
        training role (e.g. the LibriSpeech speakers VOiCES replays).

    Example
    -------
    >>> from kd_brain.data.splits import normalise_splits
    >>> sorted(normalise_splits({"labelled": ["train-clean-100"], "dev": ["dev-clean"], "test": ["test-clean"]}))
    ['dev', 'labelled', 'test', 'unlabelled']
    """
    if on_bad not in ("error", "skip"):
        raise CorpusError(f"on_bad={on_bad!r}: must be 'error' or 'skip'")
    if splits is None:  # exactly the options of earlier preparations, so they are not redone
        options = dict(
            corpus_dir=os.path.abspath(corpus_dir), train_subdir=train_subdir, test_subdir=test_subdir,
            labelled_fraction=labelled_fraction, n_dev_speakers=n_dev_speakers, seed=seed, on_bad=on_bad,
            convert_audio=convert_audio,
        )
        test_roles = ["test"]
    else:
        splits = normalise_splits(splits)
        options = dict(corpus_dir=os.path.abspath(corpus_dir), splits=splits, seed=seed, on_bad=on_bad,
                       convert_audio=convert_audio)
        test_roles = [r for r in splits if r.startswith("test")]
    exclusions = None
    if labelled_hours is not None:
        options["labelled_hours"] = labelled_hours
    if exclude_csv is not None:
        exclusions = read_exclusions(exclude_csv)
        options.update(exclude_csv=os.path.abspath(exclude_csv), exclude_hash=options_hash(sorted(exclusions[1])))
    names = [*TRAINING_ROLES, *(manifest_name(r) for r in test_roles)]
    done_file = os.path.join(out_dir, "prepare_done.json")
    paths = {s: os.path.join(out_dir, f"{s}.csv") for s in names}
    paths["unlabelled_transcripts"] = os.path.join(out_dir, "unlabelled_transcripts.csv")
    if os.path.isfile(done_file):
        with open(done_file) as f:
            done = json.load(f)
        if done.get("options") == options and all(os.path.isfile(p) for p in paths.values()):
            logger.info("Preparation in %s already done with the same options: skipped", out_dir)
            return {**paths, "skipped": done["skipped"], "excluded": done.get("excluded", 0), "prepared": False}
        logger.info("Preparation options changed: redoing %s", out_dir)
        os.remove(done_file)

    if splits is None:
        roles, audio_dir, spk2gender, excluded = _read_speaker_split(
            corpus_dir, train_subdir, test_subdir, labelled_fraction, n_dev_speakers, seed, exclusions)
    else:
        roles, audio_dir, spk2gender, excluded = _read_predefined(corpus_dir, splits, exclusions)

    jobs, split_of, everything = [], {}, {}
    for role, utts in roles.items():
        for utt, u in utts.items():
            split_of[utt], everything[utt] = manifest_name(role), u
            src = u["wav"] if os.path.isabs(u["wav"]) else os.path.join(corpus_dir, u["wav"])
            dst = os.path.join(out_dir, "audio", audio_dir[utt], f"{utt}.wav") if convert_audio else src
            jobs.append((utt, src, dst, u["wrd"]))

    rows = {s: [] for s in names}
    skipped = []
    with process_pool(max(1, num_workers)) as pool:
        for i, (utt, dur, err) in enumerate(pool.map(_convert_job, jobs, chunksize=32), 1):
            if err is not None:
                if on_bad == "error":
                    raise CorpusError(err + " (set on_bad=skip to leave bad utterances out)")
                logger.warning("skipped: %s", err)
                skipped.append(err)
                continue
            u = everything[utt]
            dst = jobs[i - 1][2]
            rows[split_of[utt]].append(dict(ID=utt, duration=dur, wav=dst, spk_id=u["spk_id"], wrd=u["wrd"]))
            if i % 500 == 0 or i == len(jobs):
                logger.info("prepare: %d/%d utterances checked and converted", i, len(jobs))

    if labelled_hours is not None:
        seconds = {}
        for r in rows["labelled"]:
            seconds[r["spk_id"]] = seconds.get(r["spk_id"], 0.0) + r["duration"]
        keep = set(select_hours(seconds, labelled_hours, seed, spk2gender))
        rows["unlabelled"] += [r for r in rows["labelled"] if r["spk_id"] not in keep]
        rows["labelled"] = [r for r in rows["labelled"] if r["spk_id"] in keep]

    for split in names:
        fields = UNLABELLED_FIELDS if split == "unlabelled" else LABELLED_FIELDS
        write_csv(paths[split], rows[split], fields)
    write_csv(paths["unlabelled_transcripts"], rows["unlabelled"], ["ID", "wrd"])
    if skipped:
        write_text(os.path.join(out_dir, "skipped.txt"), "\n".join(skipped) + "\n")
    speakers = {s: sorted({r["spk_id"] for r in rows[s]}) for s in TRAINING_ROLES}
    # written last and whole: its presence is what marks the preparation done
    write_json(done_file, {"options": options, "skipped": len(skipped), "excluded": excluded, "speakers": speakers,
                           "counts": {s: len(r) for s, r in rows.items()}}, indent=1)
    logger.info("prepare: %s; %d skipped, %d excluded", {s: len(r) for s, r in rows.items()}, len(skipped), excluded)
    return {**paths, "skipped": len(skipped), "excluded": excluded, "prepared": True}
