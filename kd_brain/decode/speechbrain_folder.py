"""A trained model as a SpeechBrain inference folder: ``EncoderASR.from_hparams(source=folder)`` loads it.

:func:`export_folder` writes, from a model folder's lowest-dev-WER checkpoint,
``hyperparams.yaml``: SpeechBrain's ``EncoderASR`` interface with CTC greedy
decoding (``ctc_greedy_decode``), and ``hyperparams_beam.yaml``: the same with
SpeechBrain's ``CTCPrefixBeamSearcher`` (``from_hparams(...,
hparams_file="hyperparams_beam.yaml")``). Their ``encoder`` is
:class:`CTCEncoder` (fbank, the trained normaliser, kd_brain's Conformer CTC
model: kd_brain must be importable where the folder is loaded);
SpeechBrain's ``Pretrainer`` fills it and the sentencepiece ``tokenizer``
from ``model.ckpt``, ``normalizer.ckpt`` (the checkpoint's files) and
``tokenizer.ckpt``. ``train_hyperparams.yaml`` is the training config,
``README.md`` the model card: what the model is, its WER per condition and
decoder (the headline ``lm`` is kd_brain's n-gram search, not in the
folder: ``transcribe.py --decoder lm``), the command that trained it, how
to load it. The folder is loaded back with ``EncoderASR`` and compared with
the PyTorch model before it is kept, as the TorchScript export is.
"""

import json
import logging
import math
import os
import shutil
import tempfile

import torch

from kd_brain.data.tokenizer import BLANK_ID
from kd_brain.decode.transcribe import AcousticModel
from kd_brain.model.conformer import ConformerEncoderWrapper, padding_mask

logger = logging.getLogger(__name__)
ARCH_KEYS = ("n_mels", "d_model", "num_layers", "nhead", "d_ffn", "conv_kernel", "frontend_channels", "dropout",
             "vocab_size", "aux_vocab_size", "aux_layer")
FILES = {"model": "model.ckpt", "normalize": "normalizer.ckpt"}  # checkpoint entry -> file in the folder


class CTCEncoder(AcousticModel):
    """EncoderASR's ``encoder``: waveforms [B, S] and relative lengths [B] -> CTC log-probs [B, T, V].

    The log-probs are :class:`AcousticModel`'s (each utterance's own, its
    padding masked), laid out by :func:`decodable` so that SpeechBrain's CTC
    decoders, which take the waveforms' relative lengths, read exactly each
    utterance's frames.

    Example
    -------
    >>> from speechbrain.decoders.ctc import ctc_greedy_decode
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, LSTMEncoder
    >>> net = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5, frontend_channels=4)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> enc = CTCEncoder(Fbank(n_mels=40), norm, net).eval()
    >>> wavs, lens = torch.rand(2, 16000), torch.tensor([1.0, 0.3])
    >>> batched = ctc_greedy_decode(enc(wavs, lens), lens, blank_id=0)
    >>> alone = ctc_greedy_decode(enc(wavs[1:, :4800], torch.ones(1)), torch.ones(1), blank_id=0)
    >>> batched[1] == alone[0]
    True
    """

    def forward(self, wavs, wav_lens):
        log_probs, frames = super().forward(wavs, wav_lens)
        return decodable(log_probs, frames, wav_lens)


def decodable(log_probs, frames, rel_lens, blank_index=BLANK_ID):
    """Log-probs that SpeechBrain's CTC decoders read with the waveforms' relative lengths ``rel_lens``.

    An utterance's output frames are not a fixed share of the batch's
    (``frames`` [B] follow from its own sample count), and the decoders read
    ``round`` (greedy) or ``floor`` (beam searchers) of ``rel_lens * T``
    frames. So every utterance's frames are kept, the frames after them
    become certain blanks (log-prob 0 on ``blank_index``), which add nothing
    to a transcript or a beam's score, and ``T`` grows until every utterance's
    share covers its frames.

    Example
    -------
    >>> lp = torch.randn(2, 3, 4).log_softmax(-1)
    >>> out = decodable(lp, torch.tensor([3, 2]), torch.tensor([1.0, 0.5]))
    >>> out.shape, torch.equal(out[1, :2], lp[1, :2]), out[1, 2:].argmax(-1).tolist()
    (torch.Size([2, 4, 4]), True, [0, 0])
    """
    n_frames, valid = log_probs.shape[1], rel_lens > 0  # an empty utterance has no frames to keep
    if bool(valid.any()):
        need = (frames[valid].to(rel_lens.dtype) / rel_lens[valid]).max().item()
        n_frames = max(n_frames, math.ceil(need))
        while bool((torch.floor(rel_lens[valid] * n_frames) < frames[valid]).any()):  # float rounding
            n_frames += 1
    padded = torch.nn.functional.pad(log_probs, (0, 0, 0, n_frames - log_probs.shape[1]))
    certain_blank = torch.full_like(padded[0, 0], -math.inf)
    certain_blank[blank_index] = 0.0
    return torch.where(padding_mask(frames.to(padded.device), n_frames)[..., None], certain_blank, padded)


HYPERPARAMS = """\
# KD-Noise {name} as a SpeechBrain EncoderASR ({decoding}); README.md is the model card.
#   from speechbrain.inference.ASR import EncoderASR
#   asr = EncoderASR.from_hparams(source="<this folder>", savedir="<a cache folder>"{hparams_arg})
#   asr.transcribe_file("speech.wav")  # the model classes are kd_brain's: pip install -e <KD-Noise checkout>

sample_rate: 16000
{arch}

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
conformer: !new:kd_brain.model.conformer.ConformerEncoderWrapper
    num_layers: !ref <num_layers>
    d_model: !ref <d_model>
    d_ffn: !ref <d_ffn>
    nhead: !ref <nhead>
    kernel_size: !ref <conv_kernel>
    dropout: !ref <dropout>
model: !new:kd_brain.model.conformer.CTCModel
    n_mels: !ref <n_mels>
    d_model: !ref <d_model>
    encoder: !ref <conformer>
    vocab_size: !ref <vocab_size>
    frontend_channels: !ref <frontend_channels>
    dropout: !ref <dropout>
    aux_vocab_size: !ref <aux_vocab_size>
    aux_layer: !ref <aux_layer>
# (wavs [B, S] at 16 kHz, relative lengths [B]) -> CTC log-probs [B, T, vocab_size], blank at index 0
encoder: !new:kd_brain.decode.speechbrain_folder.CTCEncoder
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    model: !ref <model>
modules:
    encoder: !ref <encoder>

tokenizer: !new:sentencepiece.SentencePieceProcessor
# transcribe_file: any rate, downmixed to mono, resampled to 16 kHz
audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: !ref <sample_rate>
    mix: avg-to-mono
{decoder}

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        normalizer: !ref <normalize>
        tokenizer: !ref <tokenizer>
"""
GREEDY = """\
# CTC best path; hyperparams_beam.yaml decodes with the prefix beam search
decoding_function: !name:speechbrain.decoders.ctc.ctc_greedy_decode
    blank_id: 0"""
BEAM = """\
# EncoderASR builds the searcher from test_beam_search and the tokenizer's pieces;
# speechbrain.decoders.ctc.CTCBeamSearcher takes the same keys
decoding_function: !name:speechbrain.decoders.ctc.CTCPrefixBeamSearcher
test_beam_search:
    blank_index: 0
    beam_size: {beam_size}"""


def write_hyperparams(out_dir, name, arch, beam_size):
    """Writes ``hyperparams.yaml`` (greedy) and ``hyperparams_beam.yaml`` (prefix beam search) for ``arch``.

    ``arch`` is the ``arch`` mapping of a training config (hparams/model.yaml's keys).

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> arch = dict(n_mels=40, d_model=16, num_layers=1, nhead=2, d_ffn=32, conv_kernel=3, frontend_channels=4,
    ...             dropout=0.1, vocab_size=30, aux_vocab_size=0, aux_layer=2)
    >>> write_hyperparams(d, "teacher", arch, beam_size=4)
    >>> "beam_size: 4" in open(os.path.join(d, "hyperparams_beam.yaml")).read()
    True
    """
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise KeyError(f"the model's arch lacks {', '.join(missing)} (hparams/model.yaml's keys)")
    values = "\n".join(f"{k}: {json.dumps(arch[k])}" for k in ARCH_KEYS)
    for file, decoding, hparams_arg, decoder in [
        ("hyperparams.yaml", "CTC greedy decoding", "", GREEDY),
        ("hyperparams_beam.yaml", f"CTC prefix beam search, beam {beam_size}",
         ', hparams_file="hyperparams_beam.yaml"', BEAM.format(beam_size=beam_size)),
    ]:
        text = HYPERPARAMS.format(name=name, decoding=decoding, hparams_arg=hparams_arg, arch=values, decoder=decoder)
        with open(os.path.join(out_dir, file), "w", encoding="utf-8") as f:
            f.write(text)


def check_folder(folder, acoustic, lengths=(4000, 16000, 37000), seed=0):
    """Largest |log-prob difference| between a written folder's ``EncoderASR`` and ``acoustic``
    (an :class:`AcousticModel`) over each utterance's frames, on one random padded batch.

    A frame a SpeechBrain decoder would not read is an error, not a number.
    """
    from speechbrain.inference.ASR import EncoderASR

    gen = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=gen)
    rel = torch.tensor([n / max(lengths) for n in lengths])
    with tempfile.TemporaryDirectory() as savedir:
        asr = EncoderASR.from_hparams(source=os.path.abspath(folder), savedir=savedir)
        with torch.no_grad():
            got = asr.encode_batch(wavs, rel)
            ref, frames = acoustic(wavs, rel)
    if bool((torch.floor(rel * got.shape[1]) < frames).any()):
        raise RuntimeError(f"{folder}: the decoders would not read every frame ({got.shape[1]} frames for "
                           f"{frames.tolist()} at relative lengths {rel.tolist()})")
    return max((got[i, :f] - ref[i, :f]).abs().max().item() for i, f in enumerate(frames.tolist()))


def export_folder(model_dir, out_dir, beam_size=None, tolerance=1e-4):
    """Writes a trained model folder's best checkpoint as a SpeechBrain ``EncoderASR`` folder ``out_dir``.

    ``beam_size`` (``hyperparams_beam.yaml``) defaults to the model config's
    ``beam_size``, the beam its evaluation scored. The folder is written
    beside ``out_dir`` and renamed once :func:`check_folder` finds it within
    ``tolerance`` of the PyTorch model (the ONNX check's: two paths through the
    same float32 weights differ by rounding, ~1e-5 on a trained model's log-probs
    of tens of nats); ``out_dir`` may be an earlier export
    (replaced), not another non-empty folder. Returns what was written.
    """
    from kd_brain.decode.transcribe import load_model
    from kd_brain.pipeline.modeldir import best_checkpoint, saved_config

    out_dir = os.path.normpath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not all(
            os.path.isfile(os.path.join(out_dir, f)) for f in ("hyperparams.yaml", *FILES.values())):
        raise FileExistsError(f"{out_dir} exists and is not a SpeechBrain export: choose a new folder")
    acoustic, tokenizer, origin = load_model(model_dir)
    cfg = saved_config(model_dir)
    if "arch" not in cfg or not isinstance(acoustic.model.encoder, ConformerEncoderWrapper):
        raise ValueError(f"{model_dir}/hyperparams.yaml: not the Conformer of hparams/model.yaml (its arch include)")
    best = best_checkpoint(cfg["checkpointer"], f"model folder {model_dir}")
    name = cfg.get("model_name") or os.path.basename(os.path.normpath(model_dir))
    beam_size = int(beam_size or cfg.get("beam_size", 10))
    tmp = out_dir + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        write_hyperparams(tmp, name, cfg["arch"], beam_size)
        for entry, file in FILES.items():
            shutil.copyfile(best.paramfiles[entry], os.path.join(tmp, file))
        shutil.copyfile(tokenizer.model_path, os.path.join(tmp, "tokenizer.ckpt"))
        shutil.copyfile(os.path.join(model_dir, "hyperparams.yaml"), os.path.join(tmp, "train_hyperparams.yaml"))
        info = {"path": out_dir, "model": name, "checkpoint": os.path.relpath(best.path, model_dir),
                "dev_wer": None if best.meta.get("WER") is None else round(float(best.meta["WER"]), 2),
                "beam_size": beam_size,
                "parameters": sum(p.numel() for p in acoustic.model.parameters()),
                "units": f"{tokenizer.vocab_size} sentencepiece units ({origin.get('token_type')})"}
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(model_dir, cfg, info))
        diff = check_folder(tmp, acoustic)
        if diff > tolerance:
            raise RuntimeError(f"{out_dir}: EncoderASR's log-probs differ from the model's by {diff:.2e} > {tolerance}")
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the SpeechBrain folder {out_dir}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Exported %s (%s) to %s: max |log-prob difference| %.2e", model_dir, info["checkpoint"], out_dir, diff)
    return {**info, "max_abs_diff": diff}


def training_command(model_dir):
    """``(command, where it was read)`` of the training run that wrote ``model_dir``.

    ``run.py``'s stage record ``<exp>/stages/<model>.done`` holds it; a model
    trained by hand has only its saved config, whose first lines name the
    YAML file it came from (its overrides are resolved in that config).

    Example
    -------
    >>> d = tempfile.mkdtemp()
    >>> for sub in ("stages", "student"): os.makedirs(os.path.join(d, sub))
    >>> _ = open(os.path.join(d, "stages", "student.done"), "w").write('{"command": "python train.py s.yaml"}')
    >>> training_command(os.path.join(d, "student"))[0]
    'python train.py s.yaml'
    """
    model_dir = os.path.normpath(model_dir)
    record = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "stages", os.path.basename(model_dir) + ".done")
    command = _read_json(record, "a stage record").get("command")
    if command:
        return command, record
    config = os.path.join(model_dir, "hyperparams.yaml")
    with open(config, encoding="utf-8") as f:
        head = [f.readline(), f.readline()]
    source = head[1].lstrip("# ").strip() if head[0].startswith("# Generated") else "<config>"
    return f"python recipes/KD-Noise/train.py {source}", config


def wer_table(model_dir, name):
    """``(markdown table or None, file read)``: WER per condition and decoder of model ``name``, from the
    ``scores.json`` that its evaluation updates beside the model folder (``results.json`` is its headline).

    Example
    -------
    >>> from kd_brain.brains.evaluate import update_results
    >>> d = tempfile.mkdtemp()
    >>> _ = update_results(d, "student", {"clean": {"greedy": 12.0, "beam": 11.5, "lm": 9.25, "n_utts": 3}})
    >>> print(wer_table(os.path.join(d, "student"), "student")[0].splitlines()[2])
    | clean | 3 | 9.25 | 11.50 | 12.00 | lm |
    """
    from kd_brain.brains.evaluate import DECODERS, headline

    path = os.path.join(os.path.dirname(os.path.abspath(os.path.normpath(model_dir))), "scores.json")
    table = _read_json(path, "a scores file").get(name)
    if not table:
        return None, path
    decoders = [d for d in reversed(DECODERS) if any(d in s for s in table.values())]
    lines = ["| condition | utterances | " + " | ".join(decoders) + " | headline |",
             "|---|---|" + "---|" * (len(decoders) + 1)]
    for cond, s in table.items():
        cells = [f"{s[d]:.2f}" if d in s else "-" for d in decoders]
        lines.append(f"| {cond} | {s.get('n_utts', '-')} | " + " | ".join(cells) + f" | {headline(s)} |")
    return "\n".join(lines), path


def _read_json(path, what):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not {what} (JSON): {e}") from e


def describe(cfg):
    """One sentence on what a training config trained (teacher, student, sequence training, baseline).

    Example
    -------
    >>> describe({"teacher_dir": "exp/synthetic/teacher", "criterion": "ctc", "contaminate": False})
    'A KD-Noise model trained with CTC on transcripts (a baseline), on clean audio.'
    """
    if "teacher_dir" not in cfg:
        return "The KD-Noise teacher: CTC on the labelled clean speech of its corpus."
    teacher, crit = cfg["teacher_dir"], cfg.get("criterion")
    how = {"frame": f"distilled frame by frame from the top-{cfg.get('k')} posteriors (temperature "
                    f"{cfg.get('temperature')}) of the teacher `{teacher}` on the same audio",
           "sequence": f"distilled from the N-best transcripts of the teacher `{teacher}`",
           "mwer": "sequence-trained (minimum expected word errors over its N-best)",
           "ctc": "trained with CTC on transcripts (a baseline)"}.get(crit, f"trained with criterion {crit}")
    audio = "audio with simulated media noise in simulated rooms" if cfg.get("contaminate", True) else "clean audio"
    start = f", starting from `{cfg['init_from']}`" if cfg.get("init_from") else ""
    return f"A KD-Noise model {how}, on {audio}{start}."


CARD = """\
# KD-Noise {model}: CTC speech recognition (SpeechBrain EncoderASR)

{description} KD-Noise is teacher-student learning for noise-robust ASR (Mošner et al., ICASSP 2019).

- Model: kd_brain's Conformer CTC, {parameters:,} parameters, {units}, CTC blank 0; 16 kHz in, a frame per 40 ms.
- Checkpoint: `{checkpoint}` of `{model_dir}`, the lowest selection WER
  ({dev_wer}%: the mean over the dev conditions, with the decoder its training validated with).
- Decoders: CTC greedy (`hyperparams.yaml`), CTC prefix beam search of width {beam_size} (`hyperparams_beam.yaml`).
  The `lm` decoder is kd_brain's n-gram search: `recipes/KD-Noise/transcribe.py {model_dir} speech.wav`.

## WER (%)

{wers}

## Training

{command_source}

```bash
{command}
```

## Use

```python
from speechbrain.inference.ASR import EncoderASR

asr = EncoderASR.from_hparams(source="{path}", savedir="pretrained_models/{model}")
print(asr.transcribe_file("speech.wav"))  # any rate and channel count
beam = EncoderASR.from_hparams(source="{path}", hparams_file="hyperparams_beam.yaml",
                               savedir="pretrained_models/{model}")
```

`transcribe_batch(wavs, wav_lens)`: waveforms [B, S] at 16 kHz, zero-padded, lengths relative to the longest; a
transcript does not depend on its batch. `encode_batch` gives the CTC log-probs. Needs speechbrain 1.1,
sentencepiece and kd_brain (`pip install -e` the KD-Noise checkout). Files: `model.ckpt` (state dict),
`normalizer.ckpt` (input statistics), `tokenizer.ckpt` (sentencepiece), `train_hyperparams.yaml` (training config).
"""


def model_card(model_dir, cfg, info):
    """The folder's README.md: what the model is, its WERs, the command that trained it, how to load it."""
    table, scores = wer_table(model_dir, info["model"])
    command, source = training_command(model_dir)
    wers = (f"From `{scores}` (the headline decoder: `lm`, else `beam`):\n\n{table}" if table else
            f"No scores: `{scores}` (the model's evaluation writes it) has none for {info['model']}.")
    source = (f"run.py's stage record `{source}`:" if source.endswith(".done") else
              f"From `{source}` (every override resolved there; a copy: `train_hyperparams.yaml`):")
    return CARD.format(description=describe(cfg), model_dir=os.path.normpath(model_dir), wers=wers, command=command,
                       command_source=source, **info)
