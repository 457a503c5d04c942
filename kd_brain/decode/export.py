"""TorchScript export of a trained model: one file from waveforms to CTC log-probs.

The exported module is :class:`kd_brain.decode.transcribe.AcousticModel` traced
with ``torch.jit.trace`` (fbank, the trained normaliser, subsampling,
Conformer, output layer): ``module(wavs [B, S] 16 kHz, rel_lens [B]) ->
(log_probs [B, T, V], frames [B])``, for any batch size and length (the
trace follows tensor shapes; nothing in the forward pass branches on data).
The file carries what a user needs to read its outputs (ESPnet's rule: the
config travels with the model): the units in output order (index 0 the CTC
blank), the sentencepiece model, the training config and the checkpoint's
dev WER, as TorchScript extra files. Loading it needs torch only::

    extra = {"units.json": "", "tokenizer.model": "", "hyperparams.yaml": "", "meta.json": ""}
    am = torch.jit.load("student.pt", _extra_files=extra)

The other export, a folder that SpeechBrain's ``EncoderASR`` loads, is
:mod:`kd_brain.decode.speechbrain_folder`.
"""

import json
import logging
import os

import torch

logger = logging.getLogger(__name__)
EXTRA_FILES = ("units.json", "tokenizer.model", "hyperparams.yaml", "meta.json")


def trace(acoustic, sample_rate=16000):
    """Traces an ``AcousticModel`` on a 2-utterance example batch (1 s and 0.6 s).

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper
    >>> from kd_brain.decode.transcribe import AcousticModel
    >>> enc = ConformerEncoderWrapper(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> am = AcousticModel(Fbank(n_mels=40), norm, CTCModel(40, 16, enc, 5, 4)).eval()
    >>> max_abs_difference(am, trace(am), lengths=[8000, 24000]) < 1e-4
    True
    """
    acoustic = acoustic.eval().requires_grad_(False)  # inference only (the trace keeps no autograd)
    example = (torch.randn(2, sample_rate, generator=torch.Generator().manual_seed(0)), torch.tensor([1.0, 0.6]))
    with torch.no_grad():
        return torch.jit.trace(acoustic, example, check_trace=False)


def max_abs_difference(reference, exported, lengths=(4000, 16000, 37000), seed=0):
    """Largest |log-prob difference| between two models on one random padded batch of ``lengths`` samples.

    Frame counts must agree exactly; a disagreement is an error, not a number.
    """
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    wavs = torch.zeros(len(lengths), longest)
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=gen)
    rel = torch.tensor([n / longest for n in lengths])
    with torch.no_grad():
        (a, fa), (b, fb) = reference(wavs, rel), exported(wavs, rel)
    if a.shape != b.shape or not torch.equal(fa, fb):
        raise RuntimeError(f"exported model disagrees on shapes: {tuple(a.shape)} / {fa.tolist()} vs "
                           f"{tuple(b.shape)} / {fb.tolist()}")
    diffs = [(a[i, :f] - b[i, :f]).abs().max().item() for i, f in enumerate(fa.tolist())]
    return max(diffs)


def export_model(model_dir, out_path, tolerance=1e-4):
    """Exports a trained model folder's best checkpoint to ``out_path`` (TorchScript); returns the check.

    The traced file is loaded back and compared with the PyTorch model on a
    padded batch of three lengths other than the traced ones; more than
    ``tolerance`` apart in any log-prob is an error, and nothing is left at
    ``out_path``.
    """
    from kd_brain.pipeline.modeldir import best_checkpoint, saved_config
    from kd_brain.decode.transcribe import load_model

    acoustic, tokenizer, _ = load_model(model_dir)
    best = best_checkpoint(saved_config(model_dir)["checkpointer"], f"model folder {model_dir}")
    with open(os.path.join(model_dir, "hyperparams.yaml"), encoding="utf-8") as f:
        config = f.read()
    with open(tokenizer.model_path, "rb") as f:
        spm = f.read()
    meta = {"model_dir": os.path.abspath(model_dir), "checkpoint": os.path.relpath(best.path, model_dir),
            "dev_wer": best.meta.get("WER"), "sample_rate": 16000, "blank": 0,
            **acoustic.model.frame_info()}
    extra = {"units.json": json.dumps(tokenizer.vocab_list()), "tokenizer.model": spm,
             "hyperparams.yaml": config, "meta.json": json.dumps(meta)}
    traced = trace(acoustic)
    # written beside the target and renamed once checked: a failed write or check leaves no file to trust
    tmp = out_path + ".part"
    try:
        torch.jit.save(traced, tmp, _extra_files=extra)
        diff = max_abs_difference(acoustic, torch.jit.load(tmp))
        if diff > tolerance:
            raise RuntimeError(f"{out_path}: exported log-probs differ from the model's by {diff:.2e} > {tolerance}")
        os.replace(tmp, out_path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the exported model {out_path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("Exported %s (%s) to %s: max |log-prob difference| %.2e", model_dir, meta["checkpoint"], out_path, diff)
    return {"path": out_path, "max_abs_diff": diff, **meta}


def load_exported(path):
    """``(module, units, meta)`` of an exported file (torch only; no kd_brain objects are unpickled)."""
    extra = {name: "" for name in EXTRA_FILES}
    module = torch.jit.load(path, _extra_files=extra)
    return module, json.loads(extra["units.json"]), json.loads(extra["meta.json"])
