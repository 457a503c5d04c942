"""Brains: the shared CTC forward pass and the teacher's training loop.

The Brain contract stays small: ``compute_forward`` (features -> log-probs),
``compute_objectives`` (a loss; WER at validation), ``on_stage_end``
(logging, LR annealing, checkpoints). Everything the loop needs comes from
the YAML (``hparams``) or is an attribute set here; no globals.
"""

import csv
import logging
import os
import time

import speechbrain as sb
import torch
from speechbrain.decoders.ctc import ctc_greedy_decode
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.metric_stats import ErrorRateStats

from kd_brain.tokenizer import BLANK_ID

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class WallClock:
    """Training wall time that survives resumes (saved with each checkpoint).

    Example
    -------
    >>> clock = WallClock(); clock.start(); clock.elapsed() >= 0
    True
    """

    def __init__(self):
        self.before = 0.0
        self.t0 = None

    def start(self):
        self.t0 = time.time()

    def elapsed(self):
        return self.before + (time.time() - self.t0 if self.t0 else 0.0)

    @mark_as_saver
    def _save(self, path):
        with open(path, "w") as f:
            f.write(str(self.elapsed()))

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        with open(path) as f:
            self.before = float(f.read())
        self.t0 = time.time()


def output_frames(model, n_samples):
    """CTC frames per utterance; works on a DDP-wrapped model too."""
    return getattr(model, "module", model).output_frames(n_samples)


class CTCBrain(sb.Brain):
    """Features -> normalisation -> (SpecAugment when training) -> CTC log-probs.

    Expects ``hparams.compute_features`` and ``modules.normalize`` /
    ``modules.model``; ``hparams.spec_augment`` is optional. Set
    ``checkpoint`` to evaluate that checkpoint rather than the key's pick. Subclasses add
    the objective. Returns ``(log_probs [B, T, V], relative lengths)`` where
    ``round(length * T)`` is exactly ``model.output_frames(n_samples)``; in
    training with ``hparams.aux_ctc_weight`` > 0, the auxiliary head's
    log-probs come third.
    """

    checkpoint = None  # a speechbrain Checkpoint to evaluate instead of the one min_key/max_key picks

    def on_evaluate_start(self, max_key=None, min_key=None):
        # Brain.evaluate recovers the most recent checkpoint unless given a key; a model that
        # labels data must be exactly the checkpoint its outputs' metadata names.
        if self.checkpoint is None:
            return super().on_evaluate_start(max_key=max_key, min_key=min_key)
        self.checkpointer.load_checkpoint(self.checkpoint)
        logger.info("Evaluating checkpoint %s (dev WER %s)", self.checkpoint.path, self.checkpoint.meta.get("WER"))

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = self.input_signal(batch, stage)
        feats = self.hparams.compute_features(wavs)
        epoch = self.hparams.epoch_counter.current if hasattr(self.hparams, "epoch_counter") else 0
        feats = self.modules.normalize(feats, wav_lens, epoch=epoch)
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "spec_augment", None) is not None:
            feats, _ = self.hparams.spec_augment(feats, wav_lens)  # masks only: lengths unchanged
        aux = stage == sb.Stage.TRAIN and getattr(self.hparams, "aux_ctc_weight", 0) > 0
        out = self.modules.model(feats, wav_lens, aux=True) if aux else self.modules.model(feats, wav_lens)
        log_probs = out[0] if aux else out
        # Output lengths from each utterance's sample count, not from the padded batch:
        # a frame count must not depend on which utterances share the batch.
        n_out = output_frames(self.modules.model, torch.round(wav_lens * wavs.shape[1]).long())
        rel = n_out.float() / log_probs.shape[1]
        return (log_probs, rel, out[1]) if aux else (log_probs, rel)

    def input_signal(self, batch, stage):
        """The audio the model hears; the student overrides this to contaminate it."""
        return batch.sig

    def greedy_words(self, log_probs, lens):
        """CTC greedy decoding to lists of words."""
        hyps = ctc_greedy_decode(log_probs, lens, blank_id=BLANK_ID)
        return [self.hparams.tokenizer.decode(h).split() for h in hyps]


class TeacherBrain(CTCBrain):
    """CTC training on labelled clean speech; dev WER (greedy) selects checkpoints.

    With ``hparams.aux_ctc_weight`` w > 0 the loss is ``(1 - w) CTC(units) +
    w CTC(characters)`` on the model's auxiliary head (batches need
    ``aux_tokens``): sub-word CTC from scratch stays at the blank plateau on
    our CPU budget, and the character task below it gets the encoder moving.

    Appends ``epoch, elapsed_s, train_loss, valid_loss, dev_wer`` to
    ``<output_folder>/curve.csv`` after every validation, so the
    dev-WER-vs-wall-time curve is a file, not a log to grep.
    """

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions[:2]
        tokens, token_lens = batch.tokens
        loss = sb.nnet.losses.ctc_loss(log_probs, tokens, lens, token_lens, blank_index=BLANK_ID)
        if len(predictions) == 3:  # + character CTC on an intermediate layer (hierarchical multitask)
            aux_tokens, aux_lens = batch.aux_tokens
            aux_loss = sb.nnet.losses.ctc_loss(predictions[2], aux_tokens, lens, aux_lens, blank_index=BLANK_ID)
            weight = self.hparams.aux_ctc_weight
            loss = (1 - weight) * loss + weight * aux_loss
        if stage != sb.Stage.TRAIN:
            self.wer_metric.append(batch.id, self.greedy_words(log_probs, lens), [w.split() for w in batch.wrd])
        return loss

    def on_fit_start(self):
        super().on_fit_start()  # loads the latest checkpoint, clock included
        if self.hparams.wall_clock.t0 is None:  # a fresh run; a resumed clock is already running
            self.hparams.wall_clock.start()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step and getattr(self.hparams, "lr_scheduler", None) is not None:
            self.hparams.lr_scheduler(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.wer_metric = ErrorRateStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        wer = self.wer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            elapsed = self.hparams.wall_clock.elapsed()
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr, "elapsed_s": round(elapsed)},
                train_stats={"loss": self.train_loss},
                valid_stats={"loss": stage_loss, "WER": wer},
            )
            self._append_curve(epoch, elapsed, stage_loss, wer)
            self.checkpointer.save_and_keep_only(meta={"WER": wer, "epoch": epoch}, min_keys=["WER"],
                                                 num_to_keep=getattr(self.hparams, "ckpt_keep", 2))

    def _append_curve(self, epoch, elapsed, valid_loss, wer):
        path = os.path.join(self.hparams.output_folder, "curve.csv")
        new = not os.path.isfile(path)
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "elapsed_s", "train_loss", "valid_loss", "dev_wer"])
            w.writerow([epoch, round(elapsed, 1), round(self.train_loss, 4), round(float(valid_loss), 4), round(wer, 2)])
