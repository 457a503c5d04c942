"""Offline soft labels: run the teacher over clean audio, keep top-k per CTC frame.

``ExtractBrain`` is an evaluation-only Brain: ``evaluate`` over a manifest
calls ``compute_objectives`` per batch, which writes each utterance's
top-k log-probs (and optionally its N-best) to this rank's
``SoftLabelWriter``, keyed by utterance ID. Under torchrun each rank takes
every world_size-th utterance and writes its own shards; rank 0 merges the
index. Utterances already in the store are skipped, so a killed extraction
resumes, and a rerun over a complete store does nothing.
"""

import hashlib
import logging
import os

import speechbrain as sb
import torch

from kd_brain.brain import CTCBrain
from kd_brain.store import SoftLabelWriter

logger = logging.getLogger(__name__)


def file_hash(path):
    """sha1 (16 hex digits) of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def store_meta(model, tokenizer, checkpoint_path, manifest_paths):
    """What a stored frame means; the student checks it before training.

    ``checkpoint_path`` is the teacher's saved model file; manifests are
    hashed in the given order.

    Example
    -------
    >>> from kd_brain.model import CTCModel, LSTMEncoder
    >>> m = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5)
    >>> class Tok: hash = "abc"
    >>> store_meta(m, Tok(), None, [])["frame_shift_ms"]
    40.0
    """
    meta = dict(model.frame_info())
    meta["tokenizer_hash"] = tokenizer.hash
    meta["teacher_checkpoint_hash"] = file_hash(checkpoint_path) if checkpoint_path else None
    h = hashlib.sha1()
    for p in manifest_paths:
        h.update(file_hash(p).encode())
    meta["manifest_hash"] = h.hexdigest()[:16]
    return meta


class ExtractBrain(CTCBrain):
    """Writes the teacher's top-k per output frame for every utterance it evaluates.

    Set ``writer`` (a ``SoftLabelWriter``) before ``evaluate``; with
    ``hparams.nbest > 0`` the teacher's N-best from ``hparams.beam_searcher``
    (token ids and scores) is stored too.
    """

    writer = None

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions
        n_frames = torch.round(lens * log_probs.shape[1]).long().tolist()
        nbests = [None] * len(batch.id)
        if getattr(self.hparams, "nbest", 0) > 0:
            hyps = self.hparams.beam_searcher(log_probs, lens)
            nbests = [[(self.hparams.tokenizer.encode(h.text), float(h.score)) for h in utt] for utt in hyps]
        for utt_id, lp, n, nb in zip(batch.id, log_probs, n_frames, nbests):
            if utt_id not in self.writer:  # a batch resumed after a kill may be partly stored
                self.writer.add(utt_id, lp[:n], nbest=nb)  # refuses NaN/inf with the utterance ID
        return torch.zeros((), device=self.device)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        pass


def plan_batches(dataset, batch_size):
    """Fixed batches (sorted by duration) over the whole manifest.

    Every run, whatever its number of ranks and wherever it resumes, puts an
    utterance in the same batch with the same neighbours, so padding is the
    same and the stored values do not depend on how the work was split.
    """
    durations = {u: float(dataset.data[u]["duration"]) for u in dataset.data_ids}
    order = sorted(range(len(dataset.data_ids)), key=lambda i: (durations[dataset.data_ids[i]], dataset.data_ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def extract(brain, dataset, writer, batch_size, rank=0, world_size=1):
    """Stores soft labels for the utterances of ``dataset`` that ``writer`` lacks.

    Batch ``i`` of ``plan_batches`` goes to rank ``i % world_size``; batches
    whose utterances are all stored are skipped. Returns the number of
    utterances written by this rank.
    """
    ids = dataset.data_ids
    todo = [b for i, b in enumerate(plan_batches(dataset, batch_size))
            if i % world_size == rank and not all(ids[j] in writer for j in b)]
    if not todo:
        logger.info("rank %d: every utterance already stored", rank)
        return 0
    brain.writer = writer
    before = len(writer.stored_ids)
    brain.evaluate(dataset, test_loader_kwargs={"batch_sampler": todo}, progressbar=True)
    return len(writer.stored_ids) - before
