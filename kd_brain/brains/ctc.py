"""Brains: the shared CTC forward pass and the teacher's training loop.

The Brain contract stays small: ``compute_forward`` (features -> log-probs),
``compute_objectives`` (a loss; WER at validation), ``on_stage_end``
(logging, LR annealing, checkpoints). Everything the loop needs comes from
the YAML (``hparams``) or is an attribute set here; no globals.
"""

import csv
import functools
import io
import json
import logging
import math
import os
import random
import shutil
import time

import numpy as np
import yaml

import speechbrain as sb
import torch
from tqdm import tqdm
from speechbrain.decoders.ctc import ctc_greedy_decode
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import ddp_barrier, if_main_process, run_on_main
from speechbrain.utils.metric_stats import ErrorRateStats

from kd_brain.pipeline.atomic import write_bytes, write_text
from kd_brain.brains.ddp import (RankBatchSplitter, float32_outputs, global_mean, pad_to_global_length, rank,
                          rank_share, unwrapped)
from kd_brain.data.tokenizer import BLANK_ID
from kd_brain.kd.losses import frame_entropy
from kd_brain.model.conformer import relative_lengths
from kd_brain.results.selection import dev_wer

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


# save_on_main_only=False: every rank saves its own state (rank r > 0 to ``<path>.rank<r>``). With
# SpeechBrain's default (savers run on rank 0 only) the other ranks' files were never written, so under
# torchrun only rank 0's generators were restored after a kill.
@functools.partial(register_checkpoint_hooks, save_on_main_only=False)
class RNGState:
    """The random generators' states (torch, numpy, random; one file per rank) in each checkpoint.

    SpeechBrain's checkpoints leave them out, so a run resumed after a kill
    drew other dropout masks than the uninterrupted run and ended with other
    parameters. Loading only keeps the state; the training loop applies it
    (:meth:`restore`) where the saving run stood: at once after an
    end-of-epoch checkpoint, at the next batch after an intra-epoch one (the
    new epoch's data loader draws its seed before that, as the saving run's
    did before its checkpoint), or at the end of the epoch when the
    checkpoint followed its last batch. Checkpoints without it load as before.

    Example
    -------
    >>> import tempfile
    >>> path, state = os.path.join(tempfile.mkdtemp(), "rng.ckpt"), RNGState()
    >>> _ = torch.manual_seed(0); state._save(path); a = torch.rand(1)
    >>> state._load(path, end_of_epoch=True); state.restore(); bool(torch.equal(a, torch.rand(1)))
    True
    """

    def __init__(self):
        self.pending, self.end_of_epoch = None, True

    @staticmethod
    def _file(path):
        return path if rank() == 0 else f"{path}.rank{rank()}"

    @mark_as_saver
    def _save(self, path):
        # JSON of plain numbers (never a pickle: loading a checkpoint must not run code); the same
        # states give the same file
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        state = {"torch": torch.get_rng_state().numpy().tobytes().hex(), "random": [version, list(internal), gauss],
                 "numpy": [name, keys.astype("<u4").tobytes().hex(), int(pos), int(has_gauss), float(cached)],
                 "cuda": [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
                 if torch.cuda.is_initialized() else None}
        write_bytes(self._file(path), json.dumps(state).encode(), fsync=False)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        self.pending, self.end_of_epoch = None, end_of_epoch
        if os.path.isfile(self._file(path)):
            with open(self._file(path), encoding="utf-8") as f:
                self.pending = json.load(f)

    def restore(self):
        """Applies the loaded state (once); a no-op when none is pending."""
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        as_tensor = lambda h: torch.frombuffer(bytearray.fromhex(h), dtype=torch.uint8)  # noqa: E731
        torch.set_rng_state(as_tensor(state["torch"]))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.frombuffer(bytes.fromhex(keys), dtype="<u4").copy(), *rest))
        version, internal, gauss = state["random"]
        random.setstate((version, tuple(internal), gauss))
        if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([as_tensor(h) for h in state["cuda"]])


def atomic_checkpoints(checkpointer):
    """Makes ``checkpointer`` write each checkpoint whole or not at all; returns it.

    SpeechBrain writes a checkpoint's ``CKPT.yaml`` (what makes a folder a
    checkpoint) first and its parameter files after it: a kill in between
    left a newest "checkpoint" with a truncated or missing ``model.ckpt``,
    and the resumed run died loading it. Here ``CKPT.yaml`` is written last
    (atomically), so a folder without one is an unfinished save: never
    loaded, and removed by the next save.
    """
    if getattr(checkpointer, "_atomic_saves", False):
        return checkpointer
    save = checkpointer.save_checkpoint

    def save_checkpoint(*args, **kwargs):
        pending = []

        def meta_last(fpath, meta_to_include={}, end_of_epoch=True):
            meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **meta_to_include}
            pending.append((fpath, meta))
            return meta

        if if_main_process():
            for d in checkpointer.checkpoints_dir.glob("CKPT*"):  # unfinished saves of a killed run
                if d.is_dir() and not (d / "CKPT.yaml").exists():
                    shutil.rmtree(d, ignore_errors=True)
        # Private override, kept: Checkpointer.save_checkpoint writes CKPT.yaml through this method before any
        # parameter file, and no public hook (save_checkpoint's arguments, the savers, custom_save_hooks) can move
        # or suppress that write; replacing the writer on this instance for one save is the only way to write it
        # last, with the same content. Checked against SpeechBrain 1.1.2.
        checkpointer._save_checkpoint_metafile = meta_last
        try:
            saved = save(*args, **kwargs)
        finally:
            del checkpointer._save_checkpoint_metafile
        # Under torchrun (a save is collective: every rank calls it): every rank's own files (RNGState's)
        # are written before CKPT.yaml, and no rank goes on before it is there. SpeechBrain's deletion
        # after a save lists the checkpoints on every rank and broadcasts once per deleted one, so every
        # rank must see the same checkpoints; with CKPT.yaml written last and no barrier, a 2-rank run
        # hangs at its first intra-epoch save (rank 1 in a deletion's broadcast, rank 0 in the barrier
        # that ends the deletions). No-ops without DDP (and inside run_on_main).
        ddp_barrier()
        for fpath, meta in pending:  # the same file SpeechBrain writes, now last and atomically
            write_text(str(fpath), "# yamllint disable\n" + yaml.dump(meta))
        ddp_barrier()
        return saved

    checkpointer.save_checkpoint = save_checkpoint
    checkpointer._atomic_saves = True
    return checkpointer


def unwrapped_model(model):
    """The model itself, also when DDP wraps it."""
    return getattr(model, "module", model)


def output_frames(model, n_samples):
    """CTC frames per utterance; works on a DDP-wrapped model too."""
    return unwrapped_model(model).output_frames(n_samples)


class CTCBrain(sb.Brain):
    """Features -> normalisation -> (SpecAugment when training) -> CTC log-probs.

    Expects ``hparams.compute_features`` and ``modules.normalize`` /
    ``modules.model``; ``hparams.spec_augment`` is optional. Set
    ``checkpoint`` to evaluate that checkpoint rather than the key's pick. Subclasses add
    the objective. Returns ``(log_probs [B, T, V], relative lengths)`` where
    ``round(length * T)`` is exactly ``model.output_frames(n_samples)``; in
    training with ``hparams.aux_ctc_weight`` > 0, the auxiliary head's
    log-probs come third. Log-probs are float32 under ``--precision=bf16|fp16``
    too (the output layers run in float32, :func:`kd_brain.brains.ddp.float32_outputs`):
    CTC, the KD losses, decoders and stored soft labels all read them.
    """

    checkpoint = None  # a speechbrain Checkpoint to evaluate instead of the one min_key/max_key picks

    def __init__(self, *args, tokenizer=None, frozen_normalizer=False, dev_decoder=None, **kwargs):
        """SpeechBrain's arguments, the model's units (``tokenizer``: decoded words for dev WER),
        whether training leaves the input statistics alone (``frozen_normalizer``: a model initialised
        from another keeps that model's, :func:`kd_brain.pipeline.experiment.init_normalizer`) and the
        decoder that scores dev (``dev_decoder``: ``(log_probs, lens) -> word lists``, the results
        table's; None: greedy).

        Objects built at run time (tokenizer, contaminator, searchers, decoders) are attributes
        set here, never entries written into ``hparams``: the config stays what the YAML built.
        """
        super().__init__(*args, **kwargs)
        self.tokenizer, self.frozen_normalizer, self.dev_decoder = tokenizer, frozen_normalizer, dev_decoder

    def normalizer_epoch(self):
        """The epoch the normaliser is told: past its last update when it is frozen, so it never updates."""
        if self.frozen_normalizer:
            return math.inf
        return self.hparams.epoch_counter.current if hasattr(self.hparams, "epoch_counter") else 0

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
        net = unwrapped_model(self.modules.model)
        if stage == sb.Stage.TRAIN and getattr(self, "distributed_launch", False) and not net.mask_padding_in_training:
            wavs, wav_lens = pad_to_global_length(wavs, wav_lens)  # as the 1-process batch is padded
        feats = self.hparams.compute_features(wavs)
        feat_lens = net.feature_lengths(wav_lens, wavs.shape[1], feats.shape[1])  # exact frames per utterance
        feats = self.modules.normalize(feats, feat_lens, epoch=self.normalizer_epoch())
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "spec_augment", None) is not None:
            feats, _ = self.hparams.spec_augment(feats, feat_lens)  # masks only: lengths unchanged
        aux = stage == sb.Stage.TRAIN and getattr(self.hparams, "aux_ctc_weight", 0) > 0
        with float32_outputs(self.modules.model, torch.device(self.device).type):
            out = self.modules.model(feats, feat_lens, aux=True) if aux else self.modules.model(feats, feat_lens)
        log_probs = out[0] if aux else out
        # Output lengths from each utterance's sample count, not from the padded batch:
        # a frame count must not depend on which utterances share the batch.
        n_out = output_frames(self.modules.model, torch.round(wav_lens * wavs.shape[1]).long())
        rel = relative_lengths(n_out, log_probs.shape[1])
        return (log_probs, rel, out[1]) if aux else (log_probs, rel)

    # Private override, kept: under DDP SpeechBrain wraps any batch sampler in DistributedSamplerWrapper (whole
    # batches per rank, reshuffled), and a RankBatchSplitter already is this rank's share of each batch. No public
    # hook runs between fit() and that wrapping: the public make_dataloader calls this method itself, and a
    # DataLoader passed to fit() would skip make_dataloader's registration of the loader as the checkpointed
    # "dataloader-TRAIN" (mid-epoch resume). Checked against SpeechBrain 1.1.2.
    def _train_loader_specifics(self, dataset, loader_kwargs):
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
        return [self.tokenizer.decode(h).split() for h in hyps]

    def dev_words(self, log_probs, lens):
        """Dev hypotheses: the dev decoder's words (greedy without one)."""
        if self.dev_decoder is None:
            return self.greedy_words(log_probs, lens)
        return self.dev_decoder(log_probs, lens)


class TeacherBrain(CTCBrain):
    """CTC training on labelled clean speech; the mean dev WER (selection rule) selects checkpoints.

    With ``hparams.aux_ctc_weight`` w > 0 the loss is ``(1 - w) CTC(units) +
    w CTC(characters)`` on the model's auxiliary head (batches need
    ``aux_tokens``): sub-word CTC from scratch stays at the blank plateau on
    our CPU budget, and the character task below it gets the encoder moving.

    Appends ``epoch, elapsed_s, train_loss, valid_loss, dev_wer`` to
    ``<output_folder>/curve.csv`` after every validation, so the
    dev-WER-vs-wall-time curve is a file, not a log to grep.

    Under torchrun (DDP, :mod:`kd_brain.brains.ddp`) each rank's loss is weighted by its
    share of the global batch, the curve's train loss is the mean over ranks,
    validation runs on the main process only (the others wait, then all save
    the checkpoint together: the save is collective) and only the main process
    writes the curve.
    """

    share_count = None  # units this batch's loss averages over (default: its utterances); see rank_share
    rank_weighted = False  # set by an objective whose loss already carries its rank shares (MWER's two terms)

    def compute_objectives(self, predictions, batch, stage):
        self.share_count, self.rank_weighted = None, False
        loss = self.objective(predictions, batch, stage)
        if stage == sb.Stage.TRAIN and getattr(self, "distributed_launch", False) and not self.rank_weighted:
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
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "entropy_weight", 0.0):  # a smooth teacher
            loss = loss - self.hparams.entropy_weight * frame_entropy(log_probs, lens)
        if stage != sb.Stage.TRAIN:
            self.wer_metric.append(batch.id, self.dev_words(log_probs, lens), [w.split() for w in batch.wrd])
        return loss

    def on_fit_start(self):
        self.rng_state = RNGState()
        if self.checkpointer is not None:  # resumes draw what the uninterrupted run drew; saves are whole
            self.checkpointer.add_recoverable("rng", self.rng_state, optional_load=True)
            atomic_checkpoints(self.checkpointer)
        super().on_fit_start()  # loads the latest checkpoint, clock included
        if self.rng_state.end_of_epoch:
            self.rng_state.restore()
        if self.hparams.wall_clock.t0 is None:  # a fresh run; a resumed clock is already running
            self.hparams.wall_clock.start()

    def on_fit_batch_start(self, batch, should_step):
        self.rng_state.restore()  # after an intra-epoch checkpoint: where the saving run stood

    # Private override, kept: SpeechBrain's checkpoint holds rank 0's running train loss (``brain.ckpt``) and every
    # rank loads it, so under torchrun each rank's running mean becomes the mean over ranks just before an
    # intra-epoch save (the epoch's mean over ranks is linear in them: unchanged, resumed or not). No public hook
    # runs between a batch's update of avg_train_loss and this save (on_fit_batch_end comes before that update,
    # and _should_save_intra_epoch_ckpt decides). Checked against SpeechBrain 1.1.2.
    def _save_intra_epoch_ckpt(self):
        if getattr(self, "distributed_launch", False):
            self.avg_train_loss = global_mean(self.avg_train_loss, self.device)
        super()._save_intra_epoch_ckpt()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step and getattr(self.hparams, "lr_scheduler", None) is not None:
            self.hparams.lr_scheduler(self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.wer_metric = ErrorRateStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            # resumed from a checkpoint after the epoch's last batch: no batch came to restore it
            getattr(self, "rng_state", RNGState()).restore()
            ddp = getattr(self, "distributed_launch", False)
            self.train_loss = global_mean(stage_loss, self.device) if ddp else stage_loss
            return
        # under DDP the main process's dev WER, broadcast by _fit_valid
        wer = self._valid_wer if self._valid_wer is not None else dev_wer(self.wer_metric)
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

    # Private override, kept: under torchrun SpeechBrain's validation loop runs on every rank through the
    # DDP-wrapped modules; here dev WER is computed once, on the main process with the modules unwrapped, and
    # broadcast (run_on_main), while every rank still reaches on_stage_end (the checkpoint save is collective).
    # on_stage_start/on_stage_end cannot keep the loop itself from running on every rank. Without DDP this is
    # SpeechBrain's own loop. Checked against SpeechBrain 1.1.2.
    def _fit_valid(self, valid_set, epoch, enable):
        if valid_set is None or not self.distributed_launch:
            return super()._fit_valid(valid_set, epoch, enable)
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
        return avg, dev_wer(self.wer_metric)

    def _append_curve(self, epoch, elapsed, valid_loss, wer):
        if not if_main_process():  # one curve, one row per epoch, whatever the number of ranks
            return
        path = os.path.join(self.hparams.output_folder, "curve.csv")
        rows = [["epoch", "elapsed_s", "train_loss", "valid_loss", "dev_wer"]]
        if os.path.isfile(path):
            with open(path, newline="") as f:
                # a run killed after writing an epoch's row but before its checkpoint redoes that
                # epoch: its row replaces the earlier one instead of following it
                rows = [r for i, r in enumerate(csv.reader(f)) if i == 0 or (r and int(r[0]) < epoch)]
        rows.append([epoch, round(elapsed, 1), round(self.train_loss, 4), round(float(valid_loss), 4), round(wer, 2)])
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        write_text(path, out.getvalue())
