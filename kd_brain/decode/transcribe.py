"""Using a trained model: audio in, words out.

``load_model`` turns any trained model folder (teacher, teacher_seq, a
student, a baseline) into a :class:`Recogniser`: its saved config builds the
network, its lowest-dev-WER checkpoint fills it (``weights_only`` loads), the
origin config names its units and n-gram LM. ``AcousticModel`` is the
network as one ``torch.nn.Module`` from waveforms to CTC log-probs (fbank,
the trained global normaliser, the CTC model), so the thing that decodes is
exactly the thing that is exported (:mod:`kd_brain.decode.export`,
:mod:`kd_brain.decode.speechbrain_folder`).

Audio of any sample rate or channel count that soundfile reads is downmixed
and resampled to 16 kHz (torchaudio), said once per file in a log line, so a
user's 44.1 kHz stereo recording needs no preparation; what cannot be read
is an error naming the file (and the utterance, for a manifest row).
"""

import logging
import os

import numpy as np
import soundfile as sf
import torch

from kd_brain.data.splits import CorpusError
from kd_brain.data.tokenizer import BLANK_ID
from kd_brain.model.conformer import relative_lengths

logger = logging.getLogger(__name__)
SAMPLE_RATE = 16000
DECODERS = ("greedy", "beam", "lm")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")


class AcousticModel(torch.nn.Module):
    """Waveforms [B, S] and relative lengths [B] -> (log-probs [B, T, V], output frames [B]).

    ``normalize`` must be in eval mode (its stored global statistics): the
    output then depends on each utterance alone (the model masks the
    padding), as in evaluation.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, LSTMEncoder
    >>> net = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5, frontend_channels=4)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> am = AcousticModel(Fbank(n_mels=40), norm, net).eval()
    >>> log_probs, frames = am(torch.rand(2, 16000), torch.tensor([1.0, 0.5]))
    >>> log_probs.shape, frames.tolist()
    (torch.Size([2, 26, 5]), [26, 13])
    """

    def __init__(self, compute_features, normalize, model):
        super().__init__()
        self.compute_features, self.normalize, self.model = compute_features, normalize, model

    def forward(self, wavs, wav_lens):
        feats = self.compute_features(wavs)
        feat_lens = self.model.feature_lengths(wav_lens, wavs.shape[1], feats.shape[1])  # as CTCBrain does
        log_probs = self.model(self.normalize(feats, feat_lens), feat_lens)
        # frames from each utterance's sample count, as in training and evaluation (CTCBrain)
        return log_probs, self.model.output_frames(torch.round(wav_lens * wavs.shape[1]).long())


def load_audio(path, utt_id=None):
    """A mono 16 kHz float32 tensor from any file soundfile reads (downmixed, resampled).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.zeros((44100, 2), dtype="float32"), 44100)
    >>> load_audio(path).shape
    torch.Size([16000])
    """
    where = f"utterance {utt_id}: " if utt_id is not None else ""
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing or corrupt files
        raise CorpusError(f"{where}cannot read audio file {path}: {e}") from e
    if audio.shape[0] == 0:
        raise CorpusError(f"{where}{path} contains no samples")
    if not np.isfinite(audio).all():
        raise CorpusError(f"{where}{path} has NaN or infinite samples")
    notes = []
    if audio.shape[1] > 1:
        notes.append(f"{audio.shape[1]} channels downmixed")
    wav = torch.from_numpy(audio.mean(axis=1))
    if sr != SAMPLE_RATE:
        import torchaudio

        notes.append(f"resampled {sr} -> {SAMPLE_RATE} Hz")
        wav = torchaudio.functional.resample(wav, sr, SAMPLE_RATE)
    if notes:
        logger.info("%s%s: %s", where, path, ", ".join(notes))
    return wav


def read_inputs(paths):
    """``[(utt_id, audio path, transcript or None)]`` from audio files and CSV manifests.

    A manifest (``.csv``) needs ``ID`` and ``wav`` columns; ``wrd``, where
    present, is the reference for WER. An audio file's ID is its name less
    the suffix. IDs must be unique over all inputs.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "m.csv"), "w").write("ID,wav,wrd\\nu1,a.wav,HELLO\\n")
    >>> read_inputs([os.path.join(d, "m.csv"), "/data/b.flac"])[1]
    ('b', '/data/b.flac', None)
    """
    items = []
    for path in paths:
        if path.endswith(".csv"):
            items += _read_manifest(path)
        else:
            items.append((os.path.splitext(os.path.basename(path))[0], path, None))
    seen = {}
    for utt, path, _ in items:
        if utt in seen:
            raise CorpusError(f"utterance ID {utt} is given twice ({seen[utt]} and {path}): IDs must be unique")
        seen[utt] = path
    return items


def _read_manifest(path):
    """A manifest's ``[(ID, audio path, wrd or None)]``, checked by :func:`kd_brain.data.validate.read_manifest`;
    paths resolve by :func:`resolve_audio_path`, speechbrain's ``$data_root`` as the manifest's folder."""
    from kd_brain.data.validate import read_manifest

    base = os.path.dirname(os.path.abspath(path))
    return [(utt, resolve_audio_path(row["wav"].replace("$data_root", base), path), row.get("wrd"))
            for utt, row in read_manifest(path).items()]


def resolve_audio_path(wav, manifest):
    """A manifest row's audio path as a file name to open.

    Absolute, or relative to the working directory where it exists there
    (the prepare stage writes its manifests so, from the repository root,
    and training reads them as given), else relative to the manifest's
    folder (a manifest written beside its audio).

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> manifest = os.path.join(d, "data", "m.csv")
    >>> resolve_audio_path("corpus/u1.wav", manifest) == os.path.join(d, "data", "corpus", "u1.wav")
    True
    >>> here = os.getcwd(); os.chdir(d); os.makedirs("corpus"); open("corpus/u1.wav", "w").close()
    >>> resolve_audio_path("corpus/u1.wav", manifest) == os.path.join(os.getcwd(), "corpus", "u1.wav")
    True
    >>> os.chdir(here)
    """
    if os.path.isabs(wav) or os.path.exists(wav):
        return os.path.abspath(wav)
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), wav)


class Recogniser:
    """A trained model folder's acoustic model with its units and decoders.

    Arguments
    ---------
    acoustic : AcousticModel
    tokenizer : kd_brain.data.tokenizer.Tokenizer
    decoder : str
        "greedy", "beam" (CTC prefix search) or "lm" (the headline decoder:
        the LM search of the model's teacher config, as in evaluation).
    beam_size : int
        Prefix-search width of "beam".
    lm_decoder : kd_brain.decode.lm.LexiconLMDecoder, optional
        Needed for "lm": the n-gram search that ``lm_settings`` of the teacher
        config sets up (sub-word units without a lexicon, or words with one).
    """

    def __init__(self, acoustic, tokenizer, decoder="lm", beam_size=10, lm_decoder=None):
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r}: choose from {', '.join(DECODERS)}")
        if decoder == "lm" and lm_decoder is None:
            raise ValueError("decoder=lm but the model's teacher config has no n-gram LM (lm_order: 0)")
        self.acoustic, self.tokenizer, self.decoder = acoustic.eval(), tokenizer, decoder
        self.lm_decoder = lm_decoder
        self.beam = None
        if decoder == "beam":
            from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

            self.beam = CTCPrefixBeamSearcher(blank_index=BLANK_ID, vocab_list=tokenizer.vocab_list(),
                                              beam_size=beam_size)

    @torch.no_grad()
    def transcribe_batch(self, wavs):
        """A list of 1-D waveforms (16 kHz) -> a list of transcripts."""
        longest = max(len(w) for w in wavs)
        batch = torch.zeros(len(wavs), longest)
        for i, w in enumerate(wavs):
            batch[i, :len(w)] = w
        rel = torch.tensor([len(w) / longest for w in wavs])
        log_probs, frames = self.acoustic(batch, rel)
        lens = relative_lengths(frames, log_probs.shape[1])  # what evaluation gives its decoders
        if self.decoder == "lm":
            return [" ".join(words) for words in self.lm_decoder(log_probs, lens)]
        if self.decoder == "beam":
            return [hyps[0].text for hyps in self.beam(log_probs, lens)]
        from speechbrain.decoders.ctc import ctc_greedy_decode

        return [self.tokenizer.decode(h) for h in ctc_greedy_decode(log_probs, lens, blank_id=BLANK_ID)]

    def transcribe(self, items, batch_size=8, progress=True):
        """Yields ``(utt_id, hypothesis, reference or None)`` for ``read_inputs`` items, in input order.

        Utterances are batched by length (less padding); audio is read one
        batch at a time, so memory stays flat on long lists.
        """
        from tqdm import tqdm

        lengths = {}
        for utt, path, _ in items:
            try:
                info = sf.info(path)
                lengths[utt] = info.frames / info.samplerate
            except Exception:
                lengths[utt] = 0.0  # unreadable: load_audio names it when its batch comes
        order = sorted(range(len(items)), key=lambda i: lengths[items[i][0]])
        hyps = {}
        with tqdm(total=len(items), disable=not progress, unit="utt", desc="transcribe") as bar:
            for start in range(0, len(order), batch_size):
                chunk = [items[i] for i in order[start:start + batch_size]]
                wavs = [load_audio(path, utt) for utt, path, _ in chunk]
                for (utt, _, _), text in zip(chunk, self.transcribe_batch(wavs)):
                    hyps[utt] = text
                bar.update(len(chunk))
        for utt, _, ref in items:
            yield utt, hyps[utt], ref


def load_model(model_dir, device="cpu"):
    """``(AcousticModel, tokenizer, origin config)`` of a trained model folder, best checkpoint loaded.

    Any folder that ``train.py`` wrote works (it holds ``hyperparams.yaml``
    and ``save/``); the units and LM come from the teacher config at the end
    of its ``teacher_dir`` chain (:mod:`kd_brain.pipeline.modeldir`).
    """
    from kd_brain.pipeline.modeldir import load_label_source, load_normalization

    cfg, origin, best, tokenizer = load_label_source(model_dir, what=f"model folder {model_dir}")
    model = cfg["model"]
    state = torch.load(best.paramfiles["model"], map_location=device, weights_only=True)
    model.load_state_dict(state)
    load_normalization(cfg["normalize"], best)  # speechbrain's own loader (weights_only inside)
    logger.info("%s: checkpoint %s (dev WER %s)", model_dir, best.path, best.meta.get("WER"))
    acoustic = AcousticModel(cfg["compute_features"], cfg["normalize"], model).to(device).eval()
    return acoustic, tokenizer, origin


def recogniser(model_dir, decoder="lm", beam_size=10, device="cpu"):
    """A :class:`Recogniser` for a trained model folder (or an ONNX export's ``model.onnx``), decoded as its
    evaluation decodes it."""
    from kd_brain.pipeline.modeldir import lm_decoder, lm_settings

    if model_dir.endswith(".onnx"):  # an export of kd_brain.decode.onnx_export, run by onnxruntime on the CPU
        from kd_brain.decode.onnx_export import load_onnx_model

        acoustic, tokenizer, origin = load_onnx_model(model_dir, with_lm=decoder == "lm")
    else:
        acoustic, tokenizer, origin = load_model(model_dir, device)
    lm = lm_decoder(lm_settings(origin), origin["data_folder"], tokenizer) if decoder == "lm" else None
    return Recogniser(acoustic, tokenizer, decoder, beam_size=beam_size, lm_decoder=lm)
