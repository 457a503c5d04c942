"""Hard pseudo-labels: a trained model transcribes the unlabelled pool (the self-training baseline).

The ``pseudo_label`` baseline of the paper table trains CTC on contaminated
audio of labelled + unlabelled utterances, the unlabelled ones with the
teacher's best-path transcripts from its headline decoder (the n-gram LM
search when it has one). It is what most self-training recipes do; the paper's
claim is that soft top-k labels beat it. The pool's real transcripts are
never opened: the manifest read here has no ``wrd`` column.
"""

import logging
import os

import torch

from kd_brain.brains.ctc import CTCBrain
from kd_brain.data.prepare import write_csv

logger = logging.getLogger(__name__)
FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]


class PseudoLabelBrain(CTCBrain):
    """Decodes every utterance it evaluates with ``decode`` into ``self.texts``.

    ``decode`` maps ``(log_probs, relative lengths)`` to one list of
    words per utterance (e.g. ``kd_brain.decode.lm.LexiconLMDecoder``).
    """

    def __init__(self, *args, decode=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode = decode

    def on_stage_start(self, stage, epoch=None):
        self.texts = {}

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions
        for utt_id, words in zip(batch.id, self.decode(log_probs, lens)):
            self.texts[utt_id] = " ".join(words)
        return torch.zeros((), device=self.device)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        pass


def pseudo_label_manifest(brain, dataset, out_csv, batch_size=16):
    """Writes ``out_csv``: the rows of ``dataset`` with the model's transcripts as ``wrd``.

    Utterances decoded to nothing are left out (CTC has no empty target) and
    counted. The file is written under a temporary name and renamed, so a
    killed run leaves no manifest that a rerun would trust. Returns
    ``{"utterances", "empty"}``.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> from types import SimpleNamespace
    >>> from kd_brain.data.prepare import read_csv
    >>> from kd_brain.data.dataio import make_dataset
    >>> from kd_brain.model.conformer import CTCModel, LSTMEncoder
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> d = tempfile.mkdtemp()
    >>> for u in ("a", "b"):
    ...     sf.write(os.path.join(d, u + ".wav"), np.random.RandomState(0).randn(8000) * 0.1, 16000)
    >>> rows = [dict(ID=u, duration=0.5, wav=os.path.join(d, u + ".wav"), spk_id="s") for u in ("a", "b")]
    >>> write_csv(os.path.join(d, "unlabelled.csv"), rows, ["ID", "duration", "wav", "spk_id"])
    >>> model = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5)
    >>> decode = lambda lp, lens: [["HELLO"], []]  # a stand-in decoder: the second hypothesis is empty
    >>> hp = SimpleNamespace(compute_features=Fbank(n_mels=40))
    >>> norm = InputNormalization(norm_type="sentence")
    >>> brain = PseudoLabelBrain(modules={"model": model, "normalize": norm}, hparams=vars(hp),
    ...                          run_opts={"device": "cpu", "noprogressbar": True}, decode=decode)
    >>> pseudo_label_manifest(brain, make_dataset(os.path.join(d, "unlabelled.csv")), os.path.join(d, "p.csv"), 2)
    {'utterances': 1, 'empty': 1}
    >>> read_csv(os.path.join(d, "p.csv"))[0]["wrd"]
    'HELLO'
    """
    if "wrd" in (dataset.data[dataset.data_ids[0]] if len(dataset) else {}):
        raise ValueError(f"{out_csv}: the pool to pseudo-label has a wrd column; pass the unlabelled "
                         "manifest, whose transcripts must never reach training")
    brain.evaluate(dataset, test_loader_kwargs={"batch_size": batch_size})
    rows, empty = [], 0
    for utt_id in sorted(dataset.data_ids):
        text = brain.texts[utt_id]
        if not text:
            empty += 1
            continue
        row = dataset.data[utt_id]
        rows.append({"ID": utt_id, "duration": row["duration"], "wav": row["wav"], "spk_id": row.get("spk_id", ""),
                     "wrd": text})
    if not rows:  # e.g. a 1-epoch teacher in a smoke test: the baseline then learns from labelled rows only
        logger.warning("%s: every pseudo-transcript is empty; the labelling model decodes nothing", out_csv)
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    write_csv(out_csv + ".part", rows, FIELDS)
    os.replace(out_csv + ".part", out_csv)
    logger.info("%s: %d pseudo-labelled utterances, %d decoded to nothing (left out)", out_csv, len(rows), empty)
    return {"utterances": len(rows), "empty": empty}


def pseudo_label_done(out_csv, meta):
    """True when ``out_csv`` exists and was written by the same model checkpoint (its ``.json``)."""
    import json

    info = out_csv + ".json"
    if not (os.path.isfile(out_csv) and os.path.isfile(info)):
        return False
    with open(info) as f:
        return json.load(f).get("meta") == meta
