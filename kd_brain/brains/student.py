"""The student: noisy audio in, the teacher's soft labels (of the clean audio) as targets.

``StudentBrain`` differs from the teacher in two places only:

* ``input_signal``: the batch's audio contaminated on the fly (``noisy_sig``,
  made in the dataloader by ``kd_brain.noise.contamination.Contaminator`` from the
  utterance ID and epoch), so every epoch hears new noise and rooms and the
  audio stays sample-aligned with the clean copy the teacher labelled;
* ``objective``: the criterion named by ``hparams.criterion``,
  looked up in ``hparams.criteria`` (``frame``, ``sequence``, ``mwer``,
  ``ctc``), optionally interpolated with CTC on labelled utterances.

Targets come from the soft-label store by utterance ID, so shuffling,
dynamic batching, DDP and mid-epoch resume need nothing special; the noise
of an utterance depends on (seed, epoch, utterance ID) only, so each rank of
a torchrun hears what one process would (:mod:`kd_brain.brains.ddp`).
"""

import logging

import speechbrain as sb
import torch

from kd_brain.brains.ctc import TeacherBrain
from kd_brain.brains.ddp import rank_share
from kd_brain.kd.losses import ctc_per_utt, word_errors
from kd_brain.data.tokenizer import BLANK_ID

logger = logging.getLogger(__name__)


class FrameMismatchError(RuntimeError):
    """Student output frames and stored teacher frames disagree for an utterance."""


def check_frames(ids, student_frames, teacher_frames, tolerance):
    """Raises FrameMismatchError naming the first utterance off by more than ``tolerance``.

    Example
    -------
    >>> check_frames(["a", "b"], [10, 12], [10, 12], tolerance=0)
    >>> check_frames(["a", "b"], [10, 12], [10, 14], tolerance=1)
    Traceback (most recent call last):
    ...
    kd_brain.brains.student.FrameMismatchError: utterance b: student has 12 output frames, the stored teacher labels 14 (tolerance 1)
    """
    for u, s, t in zip(ids, student_frames, teacher_frames):
        if abs(int(s) - int(t)) > tolerance:
            raise FrameMismatchError(
                f"utterance {u}: student has {int(s)} output frames, the stored teacher labels {int(t)} "
                f"(tolerance {tolerance})")


def mwer_rank_loss(loss, ctc, ctc_weight, risk_share, ctc_share):
    """This rank's MWER loss weighted so that the mean over ranks is the global batch's loss.

    ``MWER`` averages its risk over the utterances whose N-best holds two
    or more texts and its CTC over all of them: each term gets the share
    (:func:`kd_brain.brains.ddp.rank_share`) of its own count, not one share for the
    sum, or a rank holding a single-hypothesis utterance weighed its risk by
    the wrong count. ``ctc`` is the criterion's CTC term (mean over the
    rank's utterances); the risk is what the loss holds beyond it.

    Example
    -------
    >>> float(mwer_rank_loss(torch.tensor(1.5), torch.tensor(4.0), 0.25, 0.5, 1.0))
    1.25
    """
    return shared_sum(loss - ctc_weight * ctc, risk_share, ctc_weight * ctc, ctc_share)


def shared_sum(first, first_share, second, second_share):
    """``first * first_share + second * second_share``: two loss terms, each weighted by this rank's
    share (:func:`kd_brain.brains.ddp.rank_share`) of the units it averages over, so that DDP's mean over
    ranks is the global batch's loss (MWER's risk and CTC; KD and the labelled CTC of ``ctc_weight``).

    Example
    -------
    >>> float(shared_sum(torch.tensor(2.0), 0.5, torch.tensor(1.0), 1.5))
    2.5
    """
    return first * first_share + second * second_share


def abs_lengths(rel, max_len):
    return torch.round(rel * max_len).long()


class StudentBrain(TeacherBrain):
    """Trains on contaminated audio with the criterion ``hparams.criterion``.

    Reads ``batch.noisy_sig`` when ``hparams.contaminate`` is true; ``frame``
    needs ``batch.kd_idx`` / ``batch.kd_logp`` (and ``batch.kd_side`` for the
    targets ``tail`` and ``sampled``); ``sequence`` needs
    ``batch.kd_nbest``; ``mwer`` and CTC interpolation need ``batch.tokens``,
    ``batch.labelled`` and ``batch.wrd``. Validation (dev WER,
    checkpoints, curve) is the teacher's. ``contaminator`` is the built
    :class:`kd_brain.noise.contamination.Contaminator` (its epoch is set here), ``nbest_searcher``
    the MWER criterion's N-best search.
    """

    def __init__(self, *args, contaminator=None, nbest_searcher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.contaminator, self.nbest_searcher = contaminator, nbest_searcher

    def input_signal(self, batch, stage):
        # training audio is contaminated on the fly; dev's noisy condition is written by the prepare stage
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "contaminate", False):
            return batch.noisy_sig
        return batch.sig

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        if self.contaminator is not None and stage == sb.Stage.TRAIN:
            # Workers are forked when the epoch's loader starts, after this: they see the epoch.
            self.contaminator.set_epoch(epoch)

    def objective(self, predictions, batch, stage):
        if stage != sb.Stage.TRAIN:
            return super().objective(predictions, batch, stage)  # CTC + dev WER
        log_probs, lens = predictions
        name = self.hparams.criterion
        if name not in self.hparams.criteria:
            raise ValueError(f"criterion={name!r}: choose one of {sorted(self.hparams.criteria)}")
        loss = getattr(self, f"_loss_{name}")(self.hparams.criteria[name], log_probs, lens, batch)
        weight = getattr(self.hparams, "ctc_weight", 0.0)
        if weight == 0 or name in ("ctc", "mwer"):
            return loss
        ctc = self._labelled_ctc(log_probs, lens, batch)
        if not getattr(self, "distributed_launch", False):
            return loss + weight * ctc
        # under DDP the KD term averages over frames (frame) or utterances (sequence), the CTC
        # term over labelled utterances: a rank's share of one is not its share of the other
        self.rank_weighted = True
        kd_count = len(batch.id) if self.share_count is None else self.share_count
        n_labelled = int(batch.labelled.data[:, 0].sum())
        return shared_sum(loss, rank_share(kd_count, loss.device), weight * ctc, rank_share(n_labelled, loss.device))

    def _loss_frame(self, criterion, log_probs, lens, batch):
        idx, t_lens = batch.kd_idx
        logp, _ = batch.kd_logp
        s_frames = abs_lengths(lens, log_probs.shape[1])
        t_frames = abs_lengths(t_lens, idx.shape[1])
        check_frames(batch.id, s_frames, t_frames, self.hparams.frame_tolerance)
        T = min(log_probs.shape[1], idx.shape[1])
        # frames valid for both: the shorter of the two lengths, as a fraction of T
        n_common = torch.minimum(s_frames, t_frames).clamp(max=T)
        common = n_common.float() / T
        args = (log_probs[:, :T], common, idx[:, :T].long(), logp[:, :T].float())
        if getattr(self, "distributed_launch", False):
            # FrameKD averages over its frame weights: a rank's share of the batch is their sum (its
            # frames, unless blank_weight down-weights blank-dominated ones); one process needs neither
            self.share_count = (int(n_common.sum()) if getattr(criterion, "blank_weight", 1.0) == 1.0
                                else float(criterion.frame_weights(*args[1:]).sum()))
        side = getattr(batch, "kd_side", None)  # only from stores with a side array
        if side is None:
            return criterion(*args)
        return criterion(*args, side=side[0][:, :T].float())

    def _loss_sequence(self, criterion, log_probs, lens, batch):
        return criterion(log_probs, lens, batch.kd_nbest)

    def _require_transcripts(self, batch):
        """Invariant: CTC and MWER targets are real transcripts, never the unlabelled rows' placeholder."""
        missing = [u for u, has in zip(batch.id, batch.labelled.data[:, 0].tolist()) if not has]
        if missing:
            raise ValueError(f"criterion={self.hparams.criterion}: utterance {missing[0]} has no transcript; "
                             "train_splits must hold transcribed rows only (train.py leaves the others out)")

    def _loss_ctc(self, criterion, log_probs, lens, batch):
        self._require_transcripts(batch)
        tokens, token_lens = batch.tokens
        return sb.nnet.losses.ctc_loss(log_probs, tokens, lens, token_lens, blank_index=BLANK_ID)

    def _loss_mwer(self, criterion, log_probs, lens, batch):
        self._require_transcripts(batch)
        tokenizer = self.tokenizer
        with torch.no_grad():  # distinct texts, best first (kd_brain.pipeline.modeldir.nbest_searcher)
            nbests = self.nbest_searcher(log_probs.detach(), lens)
        hyp_tokens, hyp_errors = [], []
        for hyps, ref in zip(nbests, batch.wrd):
            hyp_tokens.append([tokenizer.encode(h) for h in hyps])
            hyp_errors.append([word_errors(ref.split(), h.split()) for h in hyps])
        tokens, token_lens = batch.tokens
        loss = criterion(log_probs, lens, hyp_tokens, hyp_errors, tokens, token_lens)
        if not getattr(self, "distributed_launch", False):
            return loss
        # under DDP its two terms average over different counts: each gets its own share
        weight = criterion.ctc_weight
        ctc = (sb.nnet.losses.ctc_loss(log_probs.float(), tokens, lens, token_lens, blank_index=BLANK_ID)
               if weight > 0 else loss * 0.0)  # the criterion's CTC term, recomputed (deterministic)
        self.rank_weighted = True
        n_risk = sum(len(h) >= 2 for h in hyp_tokens)  # the utterances MWER's risk averages over
        return mwer_rank_loss(loss, ctc, weight, rank_share(n_risk, loss.device),
                              rank_share(len(batch.id), loss.device))

    def _labelled_ctc(self, log_probs, lens, batch):
        """CTC on the utterances that have transcripts (labelled), averaged over them."""
        tokens, token_lens = batch.tokens
        n_tok = abs_lengths(token_lens, tokens.shape[1])
        has = batch.labelled.data[:, 0].bool()
        if not has.any():
            return log_probs.sum() * 0.0
        nll = ctc_per_utt(log_probs[has], lens[has], tokens[has], n_tok[has])
        return (nll / n_tok[has].clamp_min(1)).mean()
