#!/usr/bin/env bash
# Installs everything KD-Noise needs on a fresh Debian/Ubuntu machine with Python >= 3.9:
# the TTS engines for the synthetic corpus (Debian packages, when we are root) and the
# Python package with its dependencies (torch 2.9.1 + torchaudio, speechbrain 1.1.x, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! command -v espeak-ng >/dev/null || ! command -v flite >/dev/null; then
    apt-get update -qq && apt-get install -y -qq espeak-ng flite >/dev/null
  fi
else
  echo "setup: not root or no apt-get: espeak-ng/flite not installed; the synthetic corpus uses the pip TTS engine only"
fi
python3 -m pip install -q -e '.[test,tts,bench]'
