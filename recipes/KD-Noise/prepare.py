#!/usr/bin/env python3
"""Prepare stage: manifests, tokenizer, room bank, the fixed test conditions and the noisy dev set.

    python recipes/KD-Noise/prepare.py hparams/teacher.yaml hparams/student.yaml [--key=value ...]

Data settings come from the teacher config, noise and room settings from the
student config (the same keys its on-the-fly contamination uses, so the
held-out noise pool of ``noisy_sim`` is exactly what training never draws).
``--key=value`` overrides go to both configs where the key exists. Every step
is skipped when done with the same options and resumes when interrupted.
"""

import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from kd_brain.noise.conditions import CONDITIONS, write_conditions
from kd_brain.noise.rooms import simulate_room_bank
from kd_brain.pipeline.experiment import prepare
from kd_brain.pipeline.lock import releases_locks, take_lock


def load(path, overrides):
    with open(path) as f:
        return load_hyperpyyaml(f, overrides, overrides_must_match=False)


@releases_locks
def main(argv):
    teacher_yaml, student_yaml, *rest = argv
    _, _, overrides = sb.parse_arguments([teacher_yaml] + rest)
    thp, shp = load(teacher_yaml, overrides), load(student_yaml, overrides)
    take_lock(thp["exp_folder"])  # one run per folder (passes under run.py)
    prepare(thp)
    mix = shp["contaminator"].keywords
    rooms = shp["train_rooms"]  # the simulated bank, or an RIR manifest with a split column (RIRS_NOISES)
    if not str(rooms).endswith(".csv"):
        simulate_room_bank(rooms, seed=shp["seed"], num_workers=thp["prep_workers"])
    recorded = shp.get("recorded_csv")  # real re-recordings (VOiCES) instead of the simulated playback
    conditions = [c for c in CONDITIONS if c != "rerecorded" or recorded or os.path.isfile(shp["rir_csv"])]
    if "rerecorded" not in conditions:
        print(f"prepare: {shp['rir_csv']} not found: the rerecorded condition (measured rooms) is skipped")
    paths = write_conditions(
        os.path.join(thp["data_folder"], "test_clean.csv"), os.path.join(shp["prep_folder"], "conditions"),
        mix["noise_csv"], rooms, shp["rir_csv"], noise_root=mix["noise_root"], conditions=conditions,
        seed=shp["seed"], test_fraction=mix["test_fraction"], split_seed=mix["split_seed"],
        reserved_sources=mix["reserved_sources"], n_noise_probs=mix["n_noise_probs"],
        snr_range=mix["snr_range"], cache_dir=mix["cache_dir"], recorded_csv=recorded,
        dev_csv=os.path.join(thp["data_folder"], "dev.csv"))
    for name, path in paths.items():
        print(f"prepare: condition {name}: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
