"""Exporters from public corpus layouts to Kaldi data directories.

Preparation (``kd_brain.data.prepare``) reads Kaldi data directories only; each
public corpus gets a small exporter here (VOiCES: ``kd_brain.data.voices``), tested
on a tiny replica of its exact layout (the corpora themselves cannot be
downloaded on CI).

LibriSpeech (openslr.org/12) unpacks to ``LibriSpeech/`` with ``SPEAKERS.TXT``,
``CHAPTERS.TXT`` (``;`` comment headers, ``|``-separated columns) and one folder
per subset: ``<subset>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac`` plus one
``<spk>-<chapter>.trans.txt`` per chapter (``<utt> <TRANSCRIPT>`` lines).
``export_librispeech`` writes one Kaldi directory per subset; ``STANDARD_SPLITS``
assigns them to the roles of ``prepare_corpus(splits=...)``.
"""

import glob
import os

from kd_brain.data.prepare import CorpusError

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
           "test-clean", "test-other")
# The standard semi-supervised use of LibriSpeech: 100 h labelled, 860 h unlabelled, both dev
# sets for model selection, test-clean as the clean test set and test-other as a further one.
STANDARD_SPLITS = {
    "labelled": ["train-clean-100"],
    "unlabelled": ["train-clean-360", "train-other-500"],
    "dev": ["dev-clean", "dev-other"],
    "test": ["test-clean"],
    "test_other": ["test-other"],
}


def librispeech_root(root):
    """The ``LibriSpeech`` folder: ``root`` itself, or ``root/LibriSpeech`` when that exists."""
    inner = os.path.join(root, "LibriSpeech")
    return inner if os.path.isdir(inner) else str(root)


def read_librispeech_speakers(root):
    """``{speaker: {"gender", "subset", "minutes", "name"}}`` from ``SPEAKERS.TXT`` ({} when absent).

    Names may themselves hold ``|`` (one reader is ``|CBW|Simon``), so a line
    is split into at most five columns.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> header = ";ID |SEX| SUBSET |MINUTES| NAME\\n"
    >>> _ = (d / "SPEAKERS.TXT").write_text(header + "60 | M | train-clean-100 | 20.18 | |CBW|Simon\\n")
    >>> read_librispeech_speakers(d)["60"]["gender"], read_librispeech_speakers(d)["60"]["name"]
    ('M', '|CBW|Simon')
    """
    path = os.path.join(librispeech_root(root), "SPEAKERS.TXT")
    if not os.path.isfile(path):
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            cols = [c.strip() for c in line.rstrip("\n").split("|", 4)]
            if len(cols) != 5 or cols[1] not in ("F", "M") or not cols[0].isdigit():
                raise CorpusError(f"{path}:{lineno}: expected 'ID | SEX (F/M) | SUBSET | MINUTES | NAME', "
                                  f"got {line.strip()!r}")
            out[cols[0]] = dict(gender=cols[1], subset=cols[2], minutes=cols[3], name=cols[4])
    return out


def _chapter_rows(folder, spk, chapter):
    """(utt, flac, spk, text) of one chapter folder, every FLAC matched to one transcript line."""
    trans = os.path.join(folder, f"{spk}-{chapter}.trans.txt")
    flacs = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(folder, "*.flac"))}
    if not os.path.isfile(trans):
        if flacs:
            raise CorpusError(f"{trans}: missing (the chapter has {len(flacs)} FLAC files, "
                              f"e.g. utterance {min(flacs)})")
        return []
    rows = []
    with open(trans, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not utt.startswith(f"{spk}-{chapter}-"):
                raise CorpusError(f"{trans}:{lineno}: utterance {utt}: not of speaker {spk}, chapter {chapter}")
            flac = os.path.abspath(os.path.join(folder, utt + ".flac"))
            if not os.path.isfile(flac):
                raise CorpusError(f"{trans}:{lineno}: utterance {utt}: {flac} does not exist")
            rows.append((utt, flac, spk, text.strip()))
    untranscribed = sorted(flacs - {r[0] for r in rows})
    if untranscribed:
        raise CorpusError(f"{trans}: no transcript line for utterance {untranscribed[0]} "
                          f"({os.path.join(folder, untranscribed[0] + '.flac')}; {len(untranscribed)} such)")
    return rows


def librispeech_to_kaldi(root, subsets, out_dir):
    """Writes ``wav.scp``, ``text``, ``utt2spk`` (and ``spk2gender``) for LibriSpeech ``subsets``.

    Audio paths are written absolute, so the FLAC files stay where they are.
    Every FLAC must have exactly one transcript line and every line its FLAC;
    otherwise a CorpusError names the file and the utterance.

    Arguments
    ---------
    root : str
        The ``LibriSpeech`` folder (or the folder holding it).
    subsets : list of str
        e.g. ``["train-clean-100", "train-clean-360"]``.
    out_dir : str
        The Kaldi data directory to write.

    Returns
    -------
    int : the number of utterances.

    Example
    -------
    >>> import tempfile
    >>> librispeech_to_kaldi(tempfile.mkdtemp(), [], tempfile.mkdtemp())
    0
    """
    root = librispeech_root(root)
    speakers = read_librispeech_speakers(root)
    rows = []
    for subset in subsets:
        if not os.path.isdir(os.path.join(root, subset)):
            raise CorpusError(f"{os.path.join(root, subset)}: LibriSpeech subset not found")
        for folder in sorted(glob.glob(os.path.join(root, subset, "*", "*"))):
            if os.path.isdir(folder):
                spk, chapter = folder.split(os.sep)[-2:]
                rows += _chapter_rows(folder, spk, chapter)
    rows.sort()
    os.makedirs(out_dir, exist_ok=True)
    for name, col in (("wav.scp", 1), ("utt2spk", 2), ("text", 3)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.writelines(f"{r[0]} {r[col]}\n" for r in rows)
    spks = sorted({r[2] for r in rows if r[2] in speakers}, key=int)
    if spks:  # Kaldi's optional speaker -> f/m table; prepare_corpus balances labelled_hours with it
        with open(os.path.join(out_dir, "spk2gender"), "w", encoding="utf-8") as f:
            f.writelines(f"{s} {speakers[s]['gender'].lower()}\n" for s in spks)
    return len(rows)


def export_librispeech(root, out_dir, subsets=SUBSETS):
    """One Kaldi directory per LibriSpeech subset, ``<out_dir>/<subset>``; returns ``{subset: utterances}``.

    ``prepare_corpus(out_dir, ..., splits=STANDARD_SPLITS)`` then reads them by role.

    Example
    -------
    >>> import tempfile
    >>> export_librispeech(tempfile.mkdtemp(), tempfile.mkdtemp(), subsets=[])
    {}
    """
    return {s: librispeech_to_kaldi(root, [s], os.path.join(out_dir, s)) for s in subsets}
