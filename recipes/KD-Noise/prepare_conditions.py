#!/usr/bin/env python3
"""Writes the room bank and the three test conditions (clean, noisy_sim, rerecorded).

    python recipes/KD-Noise/prepare_conditions.py \\
        --test_csv exp/speechocean762/data/test_clean.csv \\
        --out_dir exp/speechocean762/conditions \\
        --noise_csv ../shared/data/noise/noise.csv --rir_csv ../shared/data/rir/rir.csv \\
        --room_bank exp/speechocean762/rooms.pt

Both steps are skipped when done with the same options and resume when interrupted. The noise
split settings (--test_fraction, --split_seed, --reserved_sources) must match training's.
Thin glue over ``kd_brain.rooms.simulate_room_bank`` and ``kd_brain.conditions.write_conditions``.
"""

import argparse
import logging

from kd_brain.conditions import CONDITIONS, write_conditions
from kd_brain.contamination import DEFAULT_RESERVED
from kd_brain.rooms import simulate_room_bank


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test_csv", required=True, help="test manifest: ID,duration,wav,spk_id,wrd")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--noise_csv", required=True)
    p.add_argument("--noise_root", default=None, help="root of relative noise paths (default: the csv's parent's parent)")
    p.add_argument("--rir_csv", required=True)
    p.add_argument("--rir_root", default=None, help="root of relative RIR paths (default: the csv's parent's parent)")
    p.add_argument("--rir_rooms", nargs="*", default=None, help="room groups of rir_csv to use (default: all)")
    p.add_argument("--room_bank", required=True, help="room bank .pt (simulated here if missing)")
    p.add_argument("--n_rooms", type=int, default=200)
    p.add_argument("--n_test_rooms", type=int, default=40)
    p.add_argument("--room_seed", type=int, default=0)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--test_fraction", type=float, default=0.2, help="noise clips per source held out for noisy_sim")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--reserved_sources", nargs="*", default=list(DEFAULT_RESERVED))
    p.add_argument("--n_noise_probs", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    p.add_argument("--snr_range", type=float, nargs=2, default=[0.0, 20.0])
    p.add_argument("--dry_speech", action="store_true", help="do not reverberate the speech")
    p.add_argument("--recorded_csv", default=None, help="real re-recordings to use for 'rerecorded'")
    p.add_argument("--cache_dir", default=None, help="decoded-noise cache")
    p.add_argument("--num_workers", type=int, default=2, help="room simulation processes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    simulate_room_bank(a.room_bank, n_rooms=a.n_rooms, n_test_rooms=a.n_test_rooms, seed=a.room_seed,
                       num_workers=a.num_workers)
    paths = write_conditions(
        a.test_csv, a.out_dir, a.noise_csv, a.room_bank, a.rir_csv, noise_root=a.noise_root, rir_root=a.rir_root,
        conditions=a.conditions, seed=a.seed, test_fraction=a.test_fraction, split_seed=a.split_seed,
        reserved_sources=a.reserved_sources, n_noise_probs=a.n_noise_probs, snr_range=a.snr_range,
        reverb_speech=not a.dry_speech, rir_rooms=a.rir_rooms, recorded_csv=a.recorded_csv, cache_dir=a.cache_dir)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
