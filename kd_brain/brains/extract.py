"""Offline soft labels: run the teacher over clean audio, keep top-k per CTC frame.

``ExtractBrain`` is an evaluation-only Brain: ``evaluate`` over a manifest
calls ``compute_objectives`` per batch, which writes each utterance's
top-k log-probs (float32 under autocast too: ``CTCBrain.compute_forward``)
(and optionally its N-best) to this rank's
``SoftLabelWriter``, keyed by utterance ID. Under torchrun each rank takes
every world_size-th utterance and writes its own shards; rank 0 merges the
index. Utterances already in the store are skipped, so a killed extraction
resumes, and a rerun over a complete store does nothing.

The same teacher pass can fill a second store, ``sampled_writer``: per
frame, K draws with replacement from the teacher's T = 1 softmax (the
``sampled`` target, :mod:`kd_brain.kd.targets`). Either writer may have side
temperatures; their side arrays (tail mass beyond the top-k, ``log Z_T``)
are computed here from the full distribution, which no store keeps.
"""

import hashlib
import logging
import os

import numpy as np
import torch

from kd_brain.brains.ctc import CTCBrain
from kd_brain.decode.lm import flashlight_decode, flashlight_decoder
from kd_brain.kd.targets import draw_units, log_partition, tail_log_mass

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
    >>> from kd_brain.model.conformer import CTCModel, LSTMEncoder
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


class NBestSearcher:
    """The teacher's N-best unit sequences and their log scores, per utterance.

    Lexicon-free CTC beam search without an LM in flashlight's C++ decoder
    (``torchaudio.models.decoder.ctc_decoder``): on the trained CPU teachers
    at beam 8, 1.1-1.6 ms per utterance, a quarter of their forward pass,
    where speechbrain's Python prefix beam search takes 5.3-8.3 ms. Hypotheses are normalised through the
    tokenizer (text, then units), and a sequence that several alignments in
    the beam reach is listed once, with the log-sum of their scores.

    Arguments
    ---------
    tokenizer : kd_brain.data.tokenizer.Tokenizer
        The teacher's units; needs the word-boundary piece (flashlight's
        word separator).
    nbest : int
        Hypotheses kept per utterance (at most).
    beam_size : int
        Beam width.

    Example
    -------
    >>> import tempfile, os
    >>> from kd_brain.data.prepare import write_csv
    >>> from kd_brain.data.tokenizer import train_tokenizer
    >>> d = tempfile.mkdtemp()
    >>> write_csv(os.path.join(d, "l.csv"), [{"ID": str(i), "wrd": "AB BA"} for i in range(9)], ["ID", "wrd"])
    >>> tok = train_tokenizer(os.path.join(d, "l.csv"), d, vocab_size=6, model_type="char", alphabet="AB")
    >>> a, b = tok.encode("A")[-1], tok.encode("B")[-1]
    >>> lp = torch.full((1, 3, tok.vocab_size), -9.0)
    >>> lp[0, 0, 0] = lp[0, 1, a] = 0.0
    >>> lp[0, 2, b], lp[0, 2, 0] = -0.5, -1.0
    >>> [tok.decode(units) for units, _ in NBestSearcher(tok, 2, 4)(lp.log_softmax(-1), torch.ones(1))[0]]
    ['AB', 'A']
    """

    def __init__(self, tokenizer, nbest, beam_size):
        self.tokenizer, self.nbest = tokenizer, nbest
        self.decoder = flashlight_decoder(tokenizer.vocab_list(), lexicon=None, lm=None,
                                          nbest=beam_size, beam_size=beam_size)

    def __call__(self, log_probs, lens):
        """Per utterance, [(unit IDs, log score)] best first."""
        out = []
        for hyps in flashlight_decode(self.decoder, log_probs, lens):
            merged = {}
            for h in hyps:  # flashlight wraps each hypothesis in word boundaries: normalise via text
                key = tuple(self.tokenizer.encode(self.tokenizer.decode(h.tokens.tolist())))
                merged[key] = float(np.logaddexp(merged[key], h.score)) if key in merged else float(h.score)
            best = sorted(merged.items(), key=lambda kv: -kv[1])[: self.nbest]
            out.append([(list(key), score) for key, score in best])
        return out


class ExtractBrain(CTCBrain):
    """Writes the teacher's top-k per output frame for every utterance it evaluates.

    Set ``writer`` (a ``SoftLabelWriter``) before ``evaluate``; with an
    ``nbest_searcher`` (a :class:`NBestSearcher`) the teacher's N-best is
    stored too. ``sampled_writer`` (a writer with ``target="sampled"``), if
    set, gets each utterance's draws.
    """

    writer = None
    sampled_writer = None

    def __init__(self, *args, nbest_searcher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nbest_searcher = nbest_searcher

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions
        n_frames = torch.round(lens * log_probs.shape[1]).long().tolist()
        # NaN/inf anywhere makes the sum non-finite: a screen 8x cheaper than isfinite().all();
        # the exact check then looks at each utterance's frames (padding may be the culprit)
        if not torch.isfinite(log_probs.sum()):
            for utt_id, lp, n in zip(batch.id, log_probs, n_frames):
                if not torch.isfinite(lp[:n]).all():
                    raise ValueError(f"{utt_id}: teacher output has NaN or infinite values; extraction stopped")
        values, indices = log_probs.topk(self.writer.k, dim=-1)  # one call per batch, not per utterance
        nbests = [None] * len(batch.id)
        if self.nbest_searcher is not None:
            nbests = self.nbest_searcher(log_probs, lens)
        todo = [i for i, u in enumerate(batch.id) if u not in self.writer]  # a resumed batch may be partly stored
        temps = self.writer.side_temperatures
        side = tail_log_mass(log_probs[todo], indices[todo], temps) if temps and todo else None
        self.writer.add_batch([batch.id[i] for i in todo], indices[todo], values[todo],
                              [n_frames[i] for i in todo], [nbests[i] for i in todo], side)
        if self.sampled_writer is not None:
            self._add_sampled(log_probs, batch.id, n_frames)
        return torch.zeros((), device=self.device)

    def _add_sampled(self, log_probs, ids, n_frames):
        w = self.sampled_writer
        todo = [i for i, u in enumerate(ids) if u not in w]
        if not todo:
            return
        # per utterance, on its own frames only: the draws must not depend on the batch's padding
        draws = [draw_units(log_probs[i, :n_frames[i]], w.k, w.meta["sample_seed"], ids[i]) for i in todo]
        pad = torch.nn.utils.rnn.pad_sequence  # padding 0 keeps the batch sorted and valid; never stored
        side = log_partition(log_probs[todo], w.side_temperatures)
        w.add_batch([ids[i] for i in todo], pad([d[0] for d in draws], batch_first=True),
                    pad([d[1] for d in draws], batch_first=True), [n_frames[i] for i in todo],
                    side=side[:, : max(n_frames[i] for i in todo)])

    def on_stage_end(self, stage, stage_loss, epoch=None):
        pass


def plan_batches(dataset, batch_size):
    """Fixed batches (sorted by duration) over the whole manifest.

    Every run, whatever its number of ranks and wherever it resumes, puts an
    utterance in the same batch with the same neighbours: the batches are the
    units of work that ranks share and resumes skip, and the stored values do
    not depend on how the work was split, not even in the last float digit.
    """
    durations = {u: float(dataset.data[u]["duration"]) for u in dataset.data_ids}
    order = sorted(range(len(dataset.data_ids)), key=lambda i: (durations[dataset.data_ids[i]], dataset.data_ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def extract(brain, dataset, writer, batch_size, rank=0, world_size=1, sampled_writer=None, num_workers=0):
    """Stores soft labels for the utterances of ``dataset`` that ``writer`` (or ``sampled_writer``) lacks.

    Batch ``i`` of ``plan_batches`` goes to rank ``i % world_size``; batches
    whose utterances are all stored (in both stores) are skipped. Returns the
    number of utterances written to ``writer`` by this rank. ``num_workers``
    dataloader workers read this rank's audio; the batches (so the values)
    do not depend on it.
    """
    ids = dataset.data_ids
    writers = [w for w in (writer, sampled_writer) if w is not None]
    todo = [b for i, b in enumerate(plan_batches(dataset, batch_size))
            if i % world_size == rank and not all(ids[j] in w for j in b for w in writers)]
    if not todo:
        logger.info("rank %d: every utterance already stored", rank)
        return 0
    brain.writer, brain.sampled_writer = writer, sampled_writer
    before = len(writer.stored_ids)
    brain.evaluate(dataset, test_loader_kwargs={"batch_sampler": todo, "num_workers": num_workers}, progressbar=True)
    return len(writer.stored_ids) - before
