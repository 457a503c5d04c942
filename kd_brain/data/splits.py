"""Who is in which split: speaker splits, predefined role splits, exclusions, labelled subsets.

Pure bookkeeping over utterance tables (``{utt: {"wav", "wrd", "spk_id"}}``, as
``kd_brain.data.prepare.read_kaldi_dir`` returns them); no audio is read here.

* ``split_speakers``: the seeded speaker split of one training directory
  (``labelled_fraction`` / ``n_dev_speakers``).
* Predefined splits: each role (``labelled``, ``unlabelled``, ``dev``, ``test``
  and any further ``test_<name>``) is given as Kaldi directories, e.g.
  LibriSpeech's standard subsets; ``check_disjoint`` refuses a speaker in two
  training roles or in a training role and a test role.
* ``apply_exclusions``: drops every training utterance of an excluded speaker
  (the LibriSpeech speakers a re-recorded test set such as VOiCES replays),
  then checks that none of the excluded utterances is left.
* ``select_hours``: a labelled subset of whole speakers, seeded, of a given size.
"""

import csv
import os
import random

TRAINING_ROLES = ("labelled", "unlabelled", "dev")
REQUIRED_ROLES = ("labelled", "dev", "test")


class CorpusError(ValueError):
    """Bad input in a corpus; the message names the file and utterance."""


def split_speakers(speakers, labelled_fraction, n_dev_speakers, seed):
    """Seeded split of training speakers into labelled / unlabelled / dev.

    Example
    -------
    >>> s = split_speakers([f"s{i}" for i in range(10)], 0.5, 2, seed=1)
    >>> sorted(len(v) for v in s.values())
    [2, 4, 4]
    """
    speakers = sorted(speakers)
    if not 0.0 < labelled_fraction <= 1.0:
        raise CorpusError(f"labelled_fraction={labelled_fraction}: must be in (0, 1]")
    if n_dev_speakers >= len(speakers):
        raise CorpusError(f"n_dev_speakers={n_dev_speakers}: only {len(speakers)} training speakers")
    random.Random(seed).shuffle(speakers)
    dev, rest = speakers[:n_dev_speakers], speakers[n_dev_speakers:]
    n_lab = max(1, round(labelled_fraction * len(rest)))
    return {"dev": sorted(dev), "labelled": sorted(rest[:n_lab]), "unlabelled": sorted(rest[n_lab:])}


def normalise_splits(splits):
    """``{role: [subdir, ...]}`` with every role checked; a single subdir may be a string.

    Roles: ``labelled``, ``unlabelled`` (may be empty), ``dev``, ``test`` (the
    clean test set, ``test_clean.csv``) and further test sets ``test_<name>``
    (``test_<name>.csv``).

    Example
    -------
    >>> normalise_splits({"labelled": "a", "dev": ["b"], "test": ["c"], "test_other": ["d"]})["unlabelled"]
    []
    """
    out = {role: [subdirs] if isinstance(subdirs, str) else list(subdirs or []) for role, subdirs in splits.items()}
    for role in out:
        if role not in TRAINING_ROLES and not role.startswith("test"):
            raise CorpusError(f"splits: unknown role {role!r} (roles: labelled, unlabelled, dev, test, test_<name>)")
        if role.startswith("test") and role != "test" and (not role.startswith("test_") or role == "test_clean"):
            raise CorpusError(f"splits: role {role!r}: the clean test set is 'test', further ones test_<name>")
    for role in REQUIRED_ROLES:
        if not out.get(role):
            raise CorpusError(f"splits: role {role!r} needs at least one Kaldi directory")
    out.setdefault("unlabelled", [])
    seen = {}
    for role, subdirs in out.items():
        for d in subdirs:
            if d in seen:
                raise CorpusError(f"splits: {d} is given for both {seen[d]} and {role}")
            seen[d] = role
    return out


def check_disjoint(speakers_by_role, where):
    """Refuses a speaker in two training roles, or in a training role and a test role.

    Test roles may share speakers with each other (they are only scored).

    Example
    -------
    >>> check_disjoint({"labelled": {"a"}, "dev": {"b"}, "test": {"c"}, "test_other": {"c"}}, "corpus")
    >>> check_disjoint({"labelled": {"a"}, "test": {"a"}}, "corpus")
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: corpus: speakers in both labelled and test: ['a']
    """
    roles = list(speakers_by_role)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            if a not in TRAINING_ROLES and b not in TRAINING_ROLES:
                continue
            both = speakers_by_role[a] & speakers_by_role[b]
            if both:
                raise CorpusError(f"{where}: speakers in both {a} and {b}: {sorted(both)[:5]}")


def read_exclusions(path):
    """``(speakers, utterances)`` of an exclusion CSV (columns ``ID``, ``spk_id``).

    The rows are the utterances of another corpus' test set in this corpus'
    IDs (``kd_brain.data.voices.export_voices`` writes one for LibriSpeech).
    """
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: exclusion list not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"ID", "spk_id"} <= set(reader.fieldnames or []):
            raise CorpusError(f"{path}: needs columns ID and spk_id, has {reader.fieldnames}")
        rows = list(reader)
    for lineno, row in enumerate(rows, 2):
        if not row["ID"] or not row["spk_id"]:
            raise CorpusError(f"{path}:{lineno}: utterance {row['ID']!r}: empty ID or spk_id")
    return {r["spk_id"] for r in rows}, {r["ID"] for r in rows}


def apply_exclusions(utts_by_role, speakers, utterances, where, roles=TRAINING_ROLES):
    """Drops the excluded speakers' utterances from the training roles; returns how many went.

    Speaker-level: a test set's speakers must be unseen, so all their
    utterances go, not only the replayed ones. Then an utterance-level check:
    an excluded utterance ID still present (filed under another speaker label)
    stops preparation.

    Example
    -------
    >>> roles = {"labelled": {"83-1-0000": {"spk_id": "83"}, "19-1-0000": {"spk_id": "19"}}, "test": {}}
    >>> apply_exclusions(roles, {"83"}, {"83-1-0005"}, "corpus"), sorted(roles["labelled"])
    (1, ['19-1-0000'])
    """
    dropped = 0
    for role in roles:
        utts = utts_by_role.get(role, {})
        for utt in [u for u, v in utts.items() if v["spk_id"] in speakers]:
            del utts[utt]
            dropped += 1
        left = sorted(set(utts) & utterances)
        if left:
            raise CorpusError(f"{where}: utterance {left[0]} of the exclusion list is still in {role} "
                              f"(speaker {utts[left[0]]['spk_id']!r}, not an excluded speaker; {len(left)} such)")
    return dropped


def read_spk2gender(data_dir):
    """``{speaker: gender}`` from a Kaldi directory's optional ``spk2gender`` ({} when absent)."""
    path = os.path.join(data_dir, "spk2gender")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return dict(line.split(maxsplit=1) for line in f if line.strip())


def select_hours(seconds_by_speaker, hours, seed, spk2gender=None):
    """Whole speakers, seeded, added until their audio reaches ``hours``; returns them sorted.

    Speakers are shuffled with ``seed``; when genders are known the order
    alternates between them (so a 1 h subset of train-clean-100 is balanced
    as the subset itself is). The last speaker added may overshoot by at
    most one speaker's audio (~25 min in train-clean-100).

    Example
    -------
    >>> secs = {f"s{i}": 1800.0 for i in range(10)}
    >>> len(select_hours(secs, 2.0, seed=0))
    4
    >>> select_hours(secs, 2.0, seed=0) == select_hours(dict(reversed(list(secs.items()))), 2.0, seed=0)
    True
    """
    total = sum(seconds_by_speaker.values())
    if hours <= 0 or hours * 3600 > total + 1e-6:
        raise CorpusError(f"labelled_hours={hours}: must be in (0, {total / 3600:.2f}] (the labelled role's audio)")
    speakers = sorted(seconds_by_speaker)
    random.Random(seed).shuffle(speakers)
    if spk2gender:  # round-robin over the genders, each in its shuffled order
        by_gender = {}
        for s in speakers:
            by_gender.setdefault(spk2gender.get(s, "?"), []).append(s)
        queues = [by_gender[g] for g in sorted(by_gender)]
        speakers = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    chosen, got = [], 0.0
    for s in speakers:
        if got >= hours * 3600:
            break
        chosen.append(s)
        got += seconds_by_speaker[s]
    return sorted(chosen)
