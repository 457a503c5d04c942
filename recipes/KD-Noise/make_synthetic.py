#!/usr/bin/env python3
"""Makes the synthetic multi-voice corpus (the default corpus of the recipe).

Text from a seeded voice-assistant grammar, spoken by espeak-ng, flite and
piper voices; Kaldi data dirs ``train/`` and ``test/`` (disjoint speakers),
synthetic media noise in ``noise/noise.csv``, and ``corpus_info.json``.
Rerunning resumes (finished utterances are skipped). ``run.py``'s corpus stage
asks for the recipe's default corpus, 3.3 h and 165 training speakers; this
script's own defaults are smaller.

Example::

    python recipes/KD-Noise/make_synthetic.py --out exp/synth_corpus --hours 3.0
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kd_brain.synth.corpus import DEFAULT_ENGINE_WEIGHTS, generate_corpus  # noqa: E402
from kd_brain.synth.tts import ENGINES, install_engines  # noqa: E402


def parse_weights(text):
    """``espeak=0.55,flite=0.3,piper=0.15`` -> dict."""
    try:
        return {k: float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--engine-weights {text!r}: expected engine=weight,engine=weight")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="exp/synth_corpus", help="corpus root (default: %(default)s)")
    p.add_argument("--hours", type=float, default=3.0, help="speech hours, train + test (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--train-speakers", type=int, default=150)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--noise-speakers", type=int, default=12, help="TTS voices for talk noise")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of %(default)s")
    p.add_argument("--engine-weights", type=parse_weights,
                   default=DEFAULT_ENGINE_WEIGHTS, help="e.g. espeak=0.55,flite=0.3,piper=0.15")
    p.add_argument("--music-clips", type=int, default=40, help="synthetic music clips (0: none)")
    p.add_argument("--talk-clips", type=int, default=40, help="synthetic talk programmes (0: none)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--install-engines", action="store_true",
                   help="apt-get the Debian engines (if root) and pip the piper voice first")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.install_engines:
        for note in install_engines():
            print("install:", note)
    info = generate_corpus(
        args.out, hours=args.hours, seed=args.seed, test_fraction=args.test_fraction,
        n_train_speakers=args.train_speakers, n_test_speakers=args.test_speakers,
        n_noise_speakers=args.noise_speakers, engines=args.engines.split(","),
        engine_weights=args.engine_weights, n_music=args.music_clips, n_talk=args.talk_clips,
        num_workers=args.workers,
    )
    summary = {k: info[k] for k in ("hours", "utterances", "speakers", "missing_engines", "warnings",
                                    "test_in_train_sentence_rate", "this_run")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
