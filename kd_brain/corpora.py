"""Exporters from public corpus layouts to Kaldi data directories.

Preparation (``kd_brain.data``) reads Kaldi data directories only; each
public corpus gets a small exporter here, tested on a tiny replica of its
exact layout (the corpora themselves cannot be downloaded on CI).
"""

import glob
import os

from kd_brain.data import CorpusError


def librispeech_to_kaldi(root, subsets, out_dir):
    """Writes ``wav.scp``, ``text``, ``utt2spk`` for LibriSpeech ``subsets``.

    LibriSpeech layout: ``<root>/<subset>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac``
    with one ``<spk>-<chapter>.trans.txt`` per chapter. Audio paths are written
    absolute, so the FLAC files stay where they are.

    Arguments
    ---------
    root : str
        The ``LibriSpeech`` folder.
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
    rows = []
    for subset in subsets:
        if not os.path.isdir(os.path.join(root, subset)):
            raise CorpusError(f"{os.path.join(root, subset)}: LibriSpeech subset not found")
        for trans in sorted(glob.glob(os.path.join(root, subset, "*", "*", "*.trans.txt"))):
            folder = os.path.dirname(trans)
            with open(trans, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    utt, _, text = line.strip().partition(" ")
                    flac = os.path.abspath(os.path.join(folder, utt + ".flac"))
                    if not os.path.isfile(flac):
                        raise CorpusError(f"{trans}:{lineno}: utterance {utt}: {flac} does not exist")
                    rows.append((utt, flac, utt.split("-")[0], text))
    os.makedirs(out_dir, exist_ok=True)
    for name, col in (("wav.scp", 1), ("utt2spk", 2), ("text", 3)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.writelines(f"{r[0]} {r[col]}\n" for r in rows)
    return len(rows)
