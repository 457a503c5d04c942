#!/usr/bin/env python3
"""Exports LibriSpeech to the Kaldi data directories that hparams/teacher_large.yaml reads.

    python recipes/KD-Noise/prepare_librispeech.py /data/LibriSpeech exp/librispeech/kaldi
"""

import argparse

from kd_brain.corpora import librispeech_to_kaldi

TRAIN = ["train-clean-100", "train-clean-360", "train-other-500"]

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("librispeech_root")
    p.add_argument("out_dir")
    p.add_argument("--train", nargs="+", default=TRAIN)
    p.add_argument("--test", nargs="+", default=["test-clean"])
    a = p.parse_args()
    for name, subsets in (("train", a.train), ("test", a.test)):
        n = librispeech_to_kaldi(a.librispeech_root, subsets, f"{a.out_dir}/{name}")
        print(f"{a.out_dir}/{name}: {n} utterances")
