#!/usr/bin/env python3
"""Exports LibriSpeech (and optionally VOiCES) to the Kaldi data directories that hparams/teacher_large.yaml reads.

    python recipes/KD-Noise/prepare_librispeech.py /data/LibriSpeech exp/librispeech/kaldi
    python recipes/KD-Noise/prepare_librispeech.py /data/LibriSpeech exp/librispeech/kaldi \\
        --voices /data/VOiCES_devkit [--voices-mics 1 5 --voices-distractors none babb]

Writes one Kaldi directory per subset, ``<out_dir>/<subset>`` (``wav.scp`` with the
absolute FLAC paths, ``text``, ``utt2spk``, ``spk2gender`` from SPEAKERS.TXT). The
large config's ``splits`` assigns them to roles, LibriSpeech's standard split
(``kd_brain.data.librispeech.STANDARD_SPLITS``): train-clean-100 labelled; train-clean-360
and train-other-500 unlabelled (audio only; their transcripts go to
``unlabelled_transcripts.csv``); dev-clean + dev-other for model selection;
test-clean the clean test set (``test_clean.csv``); test-other a further test set
(``test_other.csv``), which the large config scores through ``extra_test``.
``--labelled_hours=10`` (or 1) on the training command keeps a seeded subset of
whole train-clean-100 speakers labelled.

``--voices`` also exports a VOiCES split (``kd_brain.data.voices``): ``voices-<split>/``
(the source utterances, one per recording: the clean test set), the recordings
``voices-<split>_recorded.csv`` (the real ``rerecorded`` condition) and
``voices_librispeech.csv`` (every LibriSpeech utterance VOiCES replays, whose speakers
``--exclude_csv`` takes out of training). The commands it prints then run the chain on it.
"""

import argparse
import os
import sys

from kd_brain.data.librispeech import SUBSETS, export_librispeech
from kd_brain.data.voices import export_voices


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("librispeech_root", help="the LibriSpeech folder (or the folder holding it)")
    p.add_argument("out_dir")
    p.add_argument("--subsets", nargs="+", default=list(SUBSETS))
    p.add_argument("--voices", help="VOiCES_devkit (or VOiCES_release) folder")
    p.add_argument("--voices-split", default="test")
    p.add_argument("--voices-rooms", nargs="+", help="e.g. rm1 rm2 (default: all)")
    p.add_argument("--voices-distractors", nargs="+", help="none babb musi tele (default: all)")
    p.add_argument("--voices-mics", nargs="+", help="mic IDs, e.g. 1 5 (default: all)")
    a = p.parse_args(argv)
    for subset, n in export_librispeech(a.librispeech_root, a.out_dir, a.subsets).items():
        print(f"{os.path.join(a.out_dir, subset)}: {n} utterances")
    if a.voices:
        v = export_voices(a.voices, a.out_dir, a.voices_split, rooms=a.voices_rooms,
                          distractors=a.voices_distractors, mics=a.voices_mics)
        print(f"{v['kaldi_dir']}: {v['recordings']} recordings of {v['speakers']} speakers (clean sources)")
        print(f"{v['recorded_csv']}: the recordings; {v['exclude_csv']}: the LibriSpeech utterances replayed")
        test = os.path.basename(v["kaldi_dir"])
        print("then, e.g.:\n  python recipes/KD-Noise/train.py hparams/teacher_large.yaml "
              f'--corpus_dir={a.out_dir} --splits="{{test: [{test}], test_librispeech: [test-clean]}}" '
              f"--exclude_csv={v['exclude_csv']} "
              '--extra_test="{test_librispeech: <data_folder>/test_librispeech.csv}"'
              "\n  (prepare stage: hparams/student.yaml's "
              f"--recorded_csv={v['recorded_csv']})")


if __name__ == "__main__":
    main(sys.argv[1:])
