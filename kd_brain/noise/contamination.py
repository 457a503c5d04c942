"""On-the-fly contamination of clean speech with media noise played in rooms.

Per utterance a ``Contaminator`` draws (seeded) 1..N noise clips from a ``NoisePool``, a
random segment of each (looping short clips), one SNR per noise, and one room with distinct
RIRs for the speech and each noise; then it renders the mixture.

Definitions (what the tests check):

* **Alignment.** The noisy signal has exactly the clean signal's length, and the speech is
  not shifted: the speech RIR's direct-path delay (its peak index) is compensated.
* **Speech component** ``s_r``: the clean speech convolved with its RIR (when
  ``reverb_speech``), rescaled to the clean speech's power so that the level the student
  hears matches the teacher's.
* **Noise component** ``n_i``: the noise segment convolved with its RIR ("valid" part: the
  noise was already playing when the utterance starts), times a gain ``g_i``.
* **SNR** of noise ``i``: ``10 log10(P(s_r) / P(n_i))``, with ``P`` the mean square over the
  utterance's samples. Each noise has its own SNR against the speech (not against the sum
  of the other noises). The mixture is ``s_r + sum_i n_i``; if its peak exceeds
  ``max_peak`` all components are scaled down together, which keeps every SNR.

Determinism: all draws come from one numpy generator seeded by ``seed_for(utt_id, epoch)``
(a hash of the base seed, the epoch and the utterance ID), so the same call gives the same
audio in any process or worker, and a new epoch gives new noise. ``plan`` (draws only) and
``render`` (audio) are separate, so a manifest can record the plan and reproduce the audio.

Speed: the speech and noise rows of one example are convolved in one batched
``torchaudio.functional.fftconvolve`` call whose length is padded to a 5-smooth FFT size
(a prime-factor size is ~10x slower). See ``bench/bench_contamination.py``.
"""

import bisect
import logging
import os

import numpy as np
import torch
import torchaudio

# the noise clips and their split live in kd_brain.noise.pool; imported from here before the split, too
from kd_brain.pipeline.seeds import seed_for
from kd_brain.noise.pool import (DEFAULT_RESERVED, POOLS, NoiseError, NoisePool, read_noise_manifest,  # noqa: F401
                            split_noise_pool)

logger = logging.getLogger(__name__)


_SMOOTH = None


def fast_fft_len(n):
    """The smallest 5-smooth integer >= n (a fast FFT size for pocketfft / cuFFT).

    Example
    -------
    >>> fast_fft_len(79998), fast_fft_len(64)
    (80000, 64)
    """
    global _SMOOTH
    if _SMOOTH is None:
        limit, vals = 1 << 26, []
        p2 = 1
        while p2 <= limit:
            p3 = p2
            while p3 <= limit:
                p5 = p3
                while p5 <= limit:
                    vals.append(p5)
                    p5 *= 5
                p3 *= 3
            p2 *= 2
        _SMOOTH = sorted(vals)
    i = bisect.bisect_left(_SMOOTH, n)
    return _SMOOTH[i] if i < len(_SMOOTH) else n


class Contaminator:
    """Adds 1..N media noises played in a room to clean speech (see the module docstring).

    Arguments
    ---------
    noises : NoisePool
        The clips to draw from (one pool: train, test or reserved).
    rooms : RoomBank, MeasuredRIRs or None
        Where RIRs are drawn (``sample(rng, n)`` / ``rir(id)``); None: no room at all.
    n_noise_probs : sequence of float
        Probabilities of 1, 2, ... noises per utterance (normalised).
    snr_range : (float, float)
        Uniform range of each noise's SNR in dB.
    reverb_speech : bool
        Convolve the speech with its RIR too (the noises always are, when there are rooms).
    seed : int
        Base seed; per-utterance seeds come from ``seed_for(seed, epoch, utt_id)``.
    source_transform, output_transform : callable or None
        Length- and delay-preserving functions of a 1-D tensor, applied to every source
        before its RIR (e.g. a loudspeaker) and to the mixture (e.g. a microphone).
    max_peak : float
        The mixture is scaled down (all components together) when its peak exceeds this.
    min_segment_db : float
        A noise segment this much quieter than its clip's average (e.g. a pause in talk) is
        redrawn, so that the gain reaching the SNR stays finite.
    clean_share : float
        Share of examples left clean (no noise, no room: what the teacher heard). The paper
        contaminates all (0, the default); the ``clean_share`` ablation asks whether a
        clean share keeps the student's clean WER. Drawn first, and only when > 0, so the
        default draws stay the same.

    Example
    -------
    >>> import tempfile, os, soundfile as sf
    >>> d = tempfile.mkdtemp()
    >>> sf.write(os.path.join(d, "n.wav"), np.random.randn(8000) * 0.1, 16000)
    >>> c = Contaminator(NoisePool([dict(ID="n", path="n.wav")], d), rooms=None, seed=1)
    >>> clean = torch.randn(16000) * 0.1
    >>> noisy = c(clean, "utt1", epoch=0)
    >>> noisy.shape == clean.shape, torch.equal(noisy, c(clean, "utt1", epoch=0))
    (True, True)
    """

    def __init__(self, noises, rooms=None, n_noise_probs=(0.5, 0.3, 0.2), snr_range=(0.0, 20.0),
                 reverb_speech=True, seed=0, source_transform=None, output_transform=None,
                 max_peak=0.99, min_segment_db=-30.0, clean_share=0.0):
        if not 0.0 <= clean_share < 1.0:
            raise NoiseError(f"clean_share={clean_share}: must be in [0, 1)")
        probs = np.asarray(n_noise_probs, dtype=np.float64)
        if probs.ndim != 1 or len(probs) == 0 or (probs < 0).any() or probs.sum() <= 0:
            raise NoiseError(f"n_noise_probs={n_noise_probs}: need non-negative weights for 1, 2, ... noises")
        if snr_range[0] > snr_range[1]:
            raise NoiseError(f"snr_range={snr_range}: low > high")
        self.noises, self.rooms, self.probs = noises, rooms, probs / probs.sum()
        self.snr_range, self.reverb_speech, self.seed = tuple(snr_range), reverb_speech, seed
        self.source_transform, self.output_transform = source_transform, output_transform
        self.max_peak, self.min_segment_db, self.epoch = max_peak, min_segment_db, 0
        self.clean_share = float(clean_share)

    def set_epoch(self, epoch):
        """Sets the epoch used when a call gives none (call before each epoch's dataloader)."""
        self.epoch = int(epoch)

    def __call__(self, wav, utt_id, epoch=None):
        """Returns the contaminated ``wav`` (1-D, or (1, T)) for this utterance and epoch."""
        epoch = self.epoch if epoch is None else epoch
        return self.contaminate(wav, seed_for(self.seed, epoch, utt_id))[0]

    def contaminate(self, wav, seed):
        """Plans and renders with an explicit seed; returns ``(noisy, plan)``."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        plan = self.plan(wav.shape[-1], seed)
        return self.render(wav, plan), plan

    def _rirs(self, rir_ids):
        """``(rir, peak)`` per ID; "none" is the identity (no room, or dry speech)."""
        return [(torch.ones(1), 0) if i == "none" else self.rooms.rir(i) for i in rir_ids]

    def _geometry(self, num_samples, rirs):
        """Kernel length K and row length so the FFT size is 5-smooth and >= L + 2K - 2."""
        k = max(len(r) for r, _ in rirs)
        return k, fast_fft_len(num_samples + 2 * k - 2) - k + 1

    def plan(self, num_samples, seed):
        """Draws everything for one utterance of ``num_samples`` samples (no audio work
        beyond checking that noise segments are not silent). Returns a JSON-able dict."""
        rng = np.random.default_rng(seed)
        if self.clean_share > 0 and rng.random() < self.clean_share:
            return dict(seed=int(seed), n_noises=0, noise_ids=[], noise_offsets=[], snrs=[],
                        room="none", speech_rir="none", noise_rirs=[])
        n = int(rng.choice(len(self.probs), p=self.probs)) + 1
        picks = rng.choice(len(self.noises), n, replace=n > len(self.noises))
        snrs = rng.uniform(*self.snr_range, size=n)
        draw = self.rooms.sample(rng, n + 1) if self.rooms is not None else None
        rir_ids = draw.rir_ids if draw else ["none"] * (n + 1)
        if not self.reverb_speech:
            rir_ids[0] = "none"
        _, seg_len = self._geometry(num_samples, self._rirs(rir_ids))
        offsets = [self._offset(rng, int(k), seg_len) for k in picks]
        return dict(seed=int(seed), n_noises=n, noise_ids=[self.noises.ids[k] for k in picks],
                    noise_offsets=offsets, snrs=[round(float(s), 3) for s in snrs],
                    room=draw.room if draw else "none", speech_rir=rir_ids[0], noise_rirs=rir_ids[1:])

    def _offset(self, rng, k, seg_len):
        clip_len = len(self.noises.audio[k])
        floor = self.noises.power[k] / 32768.0 ** 2 * 10 ** (self.min_segment_db / 10)
        for _ in range(20):
            offset = int(rng.integers(max(1, clip_len - seg_len + 1)))
            if np.mean(np.square(self.noises.segment(k, offset, seg_len), dtype=np.float64)) > floor:
                return offset
        raise NoiseError(f"noise {self.noises.ids[k]}: 20 segments in a row below min_segment_db="
                         f"{self.min_segment_db} dB of the clip's power (mostly silent clip?)")

    def render(self, wav, plan, return_components=False):
        """Renders a plan on ``wav``; returns the mixture (same shape as ``wav``), and with
        ``return_components`` also a (1 + n, T) tensor of the scaled speech and noise parts
        (before ``output_transform``; their sum is the mixture)."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        shape, x = wav.shape, wav.reshape(-1)
        if wav.dim() > 2 or (wav.dim() == 2 and shape[0] != 1):
            raise ValueError(f"wav of shape {tuple(shape)}: expected (T,) or (1, T)")
        length = x.shape[0]
        if length == 0:
            raise ValueError("cannot contaminate an empty utterance")
        if plan["n_noises"] == 0:  # a clean example (clean_share): the signal as it is
            return (wav.clone(), x.clone().view(1, -1)) if return_components else wav.clone()
        if self.source_transform is not None:
            x = self.source_transform(x)
        rirs = self._rirs([plan["speech_rir"]] + plan["noise_rirs"])
        k, seg_len = self._geometry(length, rirs)
        rows = torch.zeros(len(rirs), seg_len)
        kernels = torch.zeros(len(rirs), k)
        for j, (rir, _) in enumerate(rirs):
            kernels[j, :len(rir)] = rir
        # Speech row, placed so that "valid" output sample t is aligned with input sample t
        # (its RIR peak p lands on t): [zeros(K-1-p), speech, zeros].
        peak = rirs[0][1]
        rows[0, k - 1 - peak:k - 1 - peak + length] = x
        for j, (nid, off) in enumerate(zip(plan["noise_ids"], plan["noise_offsets"]), 1):
            seg = torch.from_numpy(self.noises.segment(self.noises.index[nid], off, seg_len))
            rows[j] = self.source_transform(seg) if self.source_transform is not None else seg
        if k == 1:  # no rooms: the rows are already the signals
            out = rows[:, k - 1 - peak:k - 1 - peak + length] * kernels
        else:
            out = torchaudio.functional.fftconvolve(rows, kernels, mode="valid")[:, :length]
        power = out.square().mean(dim=1).clamp_min(1e-10)
        speech_power = wav.reshape(-1).square().mean().clamp_min(1e-10)  # the clean level
        snrs = torch.tensor(plan["snrs"], dtype=torch.float32)
        gains = torch.cat([(speech_power / power[0]).sqrt().view(1),
                           (speech_power / (power[1:] * 10 ** (snrs / 10))).sqrt()])
        out = out * gains[:, None]
        mix = out.sum(dim=0)
        peak_val = float(mix.abs().max())
        if peak_val > self.max_peak:
            out *= self.max_peak / peak_val
            mix = out.sum(dim=0)
        if self.output_transform is not None:
            mix = self.output_transform(mix)
        mix = mix.reshape(shape)
        return (mix, out) if return_components else mix

    @classmethod
    def from_files(cls, noise_csv, rooms, pool="train", noise_root=None, test_fraction=0.2,
                   split_seed=0, reserved_sources=DEFAULT_RESERVED, cache_dir=None, **kwargs):
        """Builds a contaminator on one pool of a noise manifest.

        Arguments
        ---------
        noise_csv : str
            Noise manifest; ``noise_root`` resolves its relative paths (default: see
            ``NoisePool.from_csv``).
        rooms : RoomBank, MeasuredRIRs, str or None
            A room source, or a path: a room bank (``.pt``) or an RIR manifest (``.csv``)
            with a ``split`` column (e.g. RIRS_NOISES' simulated rooms,
            ``kd_brain.noise.musan``); its ``pool`` split is used, the reserved pool
            using the test rooms.
        pool : "train", "test" or "reserved"
            Which pool of ``split_noise_pool(rows, test_fraction, split_seed, reserved_sources)``.
        **kwargs
            Passed to ``Contaminator``.

        Returns
        -------
        Contaminator
        """
        from kd_brain.noise.rooms import MeasuredRIRs, RoomBank

        if pool not in POOLS:
            raise NoiseError(f"pool={pool!r}: must be one of {POOLS}")
        ids = split_noise_pool(read_noise_manifest(noise_csv), test_fraction, split_seed,
                               reserved_sources)[pool]
        noises = NoisePool.from_csv(noise_csv, noise_root, ids=ids, cache_dir=cache_dir)
        if isinstance(rooms, (str, os.PathLike)):
            split = "train" if pool == "train" else "test"
            source = MeasuredRIRs if os.fspath(rooms).endswith(".csv") else RoomBank
            rooms = source(rooms, split=split)
        return cls(noises, rooms, **kwargs)
