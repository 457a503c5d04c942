"""A small seeded music synthesiser (numpy): chords, bass line, percussion.

Stands in for background music (a TV or radio in the room) when no real
music is available. Each clip draws a tempo, key, mode, chord progression,
timbres and a drum pattern; some clips have no drums (ambient), some an
arpeggio. Not meant to be good music: meant to have the spectro-temporal
structure of music (harmonic tones, steady beat, wide-band transients).

Example
-------
>>> clip = synth_music(seed=0, seconds=2.0)
>>> clip.shape, float(abs(clip).max()) <= 1.0
((32000,), True)
"""

import numpy as np

# Chord progressions as scale degrees (0-based); a mode gives their intervals.
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 4], [5, 3, 0, 4], [0, 3, 0, 4],
                [1, 4, 0, 0], [0, 6, 5, 4], [0, 2, 3, 4]]
MODES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}
# Drum patterns over 8 eighth-notes: kick, snare, hat (1 = hit).
DRUMS = {
    "rock": ("10001000", "00100010", "11111111"),
    "four": ("10101010", "00100010", "01010101"),
    "half": ("10000000", "00001000", "10101010"),
    "funk": ("10010010", "00100010", "11111111"),
    "none": ("00000000", "00000000", "00000000"),
}


def midi_hz(note):
    """Frequency of a MIDI note number."""
    return 440.0 * 2 ** ((note - 69) / 12)


def tone(freq, n, sr, harmonics, decay, rng):
    """A harmonic tone of ``n`` samples: partial k has amplitude ``harmonics[k]``.

    A slight random detune per partial keeps sustained chords from sounding
    like a test signal.
    """
    t = np.arange(n) / sr
    out = np.zeros(n)
    for k, amp in enumerate(harmonics, 1):
        if amp and freq * k < sr / 2 - 500:
            out += amp * np.sin(2 * np.pi * freq * k * (1 + rng.normal(0, 0.0015)) * t + rng.uniform(0, 6.28))
    attack = np.minimum(1.0, t / 0.01)
    return out * attack * np.exp(-t / decay)


def drum(kind, n, sr, rng):
    """One drum hit: ``kick`` (falling sine), ``snare`` (noise + tone) or ``hat`` (high noise)."""
    t = np.arange(n) / sr
    if kind == "kick":
        freq = 45 + 80 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.12)
    noise = rng.standard_normal(n)
    if kind == "snare":
        return (0.6 * noise + 0.5 * np.sin(2 * np.pi * 185 * t)) * np.exp(-t / 0.07)
    return np.diff(noise, prepend=0.0) * 0.3 * np.exp(-t / 0.02)  # hat: differenced noise = high-passed


def _add(track, start, sound):
    end = min(len(track), start + len(sound))
    if start < end:
        track[start:end] += sound[: end - start]


def synth_music(seed, seconds=45.0, sr=16000):
    """Synthesises one music clip.

    Arguments
    ---------
    seed : int
        Everything about the clip is drawn from this seed.
    seconds : float
        Clip length.
    sr : int
        Sample rate.

    Returns
    -------
    numpy.ndarray
        Mono float32 audio, peak 0.9, faded in and out.

    Example
    -------
    >>> np.array_equal(synth_music(3, 1.0), synth_music(3, 1.0))
    True
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    beat = 60.0 / rng.uniform(70, 140)
    eighth = int(beat / 2 * sr)
    bar = 8 * eighth
    root = int(rng.integers(52, 64))
    scale = MODES[rng.choice(list(MODES))]
    prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    pattern = DRUMS[rng.choice(list(DRUMS), p=[0.3, 0.2, 0.15, 0.15, 0.2])]
    pad = rng.uniform(0, 1, 6) ** 2 / np.arange(1, 7)  # chord timbre: random harmonic weights
    bass_timbre = 1.0 / np.arange(1, 9)  # sawtooth-like
    arpeggio = rng.random() < 0.5
    tracks = {k: np.zeros(n) for k in ("chords", "bass", "drums", "lead")}

    for b, start in enumerate(range(0, n, bar)):
        degree = prog[b % len(prog)]
        chord = [root + scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]
        for note in chord:
            _add(tracks["chords"], start, tone(midi_hz(note), bar, sr, pad, 1.5, rng))
        for step in range(0, 8, 2):  # bass on every beat, root or fifth
            note = chord[0] - 24 + (7 if step == 4 and rng.random() < 0.5 else 0)
            _add(tracks["bass"], start + step * eighth, tone(midi_hz(note), 2 * eighth, sr, bass_timbre, 0.25, rng))
        for step in range(8):
            for kind, hits in zip(("kick", "snare", "hat"), pattern):
                if hits[step] == "1" and rng.random() < 0.95:
                    _add(tracks["drums"], start + step * eighth, drum(kind, eighth, sr, rng) * (0.5 if kind == "hat" else 1))
            if arpeggio:
                note = chord[rng.integers(3)] + 12
                _add(tracks["lead"], start + step * eighth, tone(midi_hz(note), eighth, sr, [1, 0.3, 0.1], 0.15, rng))

    gains = {"chords": 0.25, "bass": 0.5, "drums": 0.6, "lead": 0.3}
    mix = sum(gains[k] * v / (np.abs(v).max() + 1e-9) for k, v in tracks.items())
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.5 * sr))
    mix = mix * fade
    return (0.9 * mix / (np.abs(mix).max() + 1e-9)).astype(np.float32)
