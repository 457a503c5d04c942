"""Synthetic multi-voice corpus: a voice-assistant grammar spoken by TTS voices.

- ``grammar``: seeded request grammar (text, ~1,000-word vocabulary).
- ``tts``: espeak-ng / flite / piper engines, detection, voice reservation.
- ``music``: seeded music synthesiser (media noise).
- ``corpus``: ``generate_corpus`` -> Kaldi data dirs + ``noise/noise.csv``.
"""

from .corpus import generate_corpus  # noqa: F401
from .grammar import Grammar  # noqa: F401
