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
from tqdm import tqdm
from speechbrain.decoders.ctc import ctc_greedy_decode
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.metric_stats import ErrorRateStats

from kd_brain.ddp import (RankBatchSplitter, float32_outputs, global_mean, pad_to_global_length, rank_share,
                          unwrapped)
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
    log-probs come third. Log-probs are float32 under ``--precision=bf16|fp16``
    too (the output layers run in float32, :func:`kd_brain.ddp.float32_outputs`):
    CTC, the KD losses, decoders and stored soft labels all read them.
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
        if stage == sb.Stage.TRAIN and getattr(self, "distributed_launch", False):
            wavs, wav_lens = pad_to_global_length(wavs, wav_lens)  # as the 1-process batch is padded
        feats = self.hparams.compute_features(wavs)
        epoch = self.hparams.epoch_counter.current if hasattr(self.hparams, "epoch_counter") else 0
        feats = self.modules.normalize(feats, wav_lens, epoch=epoch)
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "spec_augment", None) is not None:
            feats, _ = self.hparams.spec_augment(feats, wav_lens)  # masks only: lengths unchanged
        aux = stage == sb.Stage.TRAIN and getattr(self.hparams, "aux_ctc_weight", 0) > 0
        with float32_outputs(self.modules.model, torch.device(self.device).type):
            out = self.modules.model(feats, wav_lens, aux=True) if aux else self.modules.model(feats, wav_lens)
        log_probs = out[0] if aux else out
        # Output lengths from each utterance's sample count, not from the padded batch:
        # a frame count must not depend on which utterances share the batch.
        n_out = output_frames(self.modules.model, torch.round(wav_lens * wavs.shape[1]).long())
        rel = n_out.float() / log_probs.shape[1]
        return (log_probs, rel, out[1]) if aux else (log_probs, rel)

    def _train_loader_specifics(self, dataset, loader_kwargs):
        # SpeechBrain would wrap any batch sampler in DistributedSamplerWrapper (whole batches
        # per rank, reshuffled); a RankBatchSplitter already is this rank's share of each batch.
        if isinstance(loader_kwargs.get("batch_sampler"), RankBatchSplitter):
            self.train_sampler = loader_kwargs["batch_sampler"]
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

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

    Under torchrun (DDP, :mod:`kd_brain.ddp`) each rank's loss is weighted by its
    share of the global batch, the curve's train loss is the mean over ranks,
    validation runs on the main process only (the others wait, then all save
    the checkpoint together: the save is collective) and only the main process
    writes the curve.
    """

    share_count = None  # units this batch's loss averages over (default: its utterances); see rank_share

    def compute_objectives(self, predictions, batch, stage):
        self.share_count = None
        loss = self.objective(predictions, batch, stage)
        if stage == sb.Stage.TRAIN and getattr(self, "distributed_launch", False):
            count = len(batch.id) if self.share_count is None else self.share_count
            loss = loss * rank_share(count, loss.device)
        return loss

    def objective(self, predictions, batch, stage):
        """The training loss (CTC, + auxiliary CTC); at validation it also scores dev WER."""
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
            ddp = getattr(self, "distributed_launch", False)
            self.train_loss = global_mean(stage_loss, self.device) if ddp else stage_loss
            return
        # under DDP the main process's dev WER, broadcast by _fit_valid
        wer = self._valid_wer if self._valid_wer is not None else self.wer_metric.summarize("error_rate")
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

    _valid_wer = None

    def _fit_valid(self, valid_set, epoch, enable):
        if valid_set is None or not self.distributed_launch:
            return super()._fit_valid(valid_set, epoch, enable)
        # Dev WER once, on the main process, not once per rank; run_on_main broadcasts it.
        loss, self._valid_wer = run_on_main(self._valid_pass, args=[valid_set, epoch, enable])
        try:
            self.on_stage_end(sb.Stage.VALID, loss, epoch)  # every rank: checkpoint saving is collective
        finally:
            self._valid_wer = None

    def _valid_pass(self, valid_set, epoch, enable):
        """``_fit_valid``'s loop on one process: (mean dev loss, dev WER)."""
        with unwrapped(self.modules):
            self.on_stage_start(sb.Stage.VALID, epoch)
            self.modules.eval()
            avg, self.step = 0.0, 0
            with torch.no_grad():
                for batch in tqdm(valid_set, dynamic_ncols=True, disable=not enable):
                    self.step += 1
                    avg = self.update_average(self.evaluate_batch(batch, stage=sb.Stage.VALID), avg)
            self.step = 0
        return avg, self.wer_metric.summarize("error_rate")

    def _append_curve(self, epoch, elapsed, valid_loss, wer):
        if not if_main_process():  # one curve, one row per epoch, whatever the number of ranks
            return
        path = os.path.join(self.hparams.output_folder, "curve.csv")
        new = not os.path.isfile(path)
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "elapsed_s", "train_loss", "valid_loss", "dev_wer"])
            w.writerow([epoch, round(elapsed, 1), round(self.train_loss, 4), round(float(valid_loss), 4), round(wer, 2)])
