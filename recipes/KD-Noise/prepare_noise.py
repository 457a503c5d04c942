#!/usr/bin/env python3
"""Exports MUSAN and RIRS_NOISES (unpacked by hand) to the noise and RIR manifests the recipe reads.

    python recipes/KD-Noise/prepare_noise.py musan /data/musan exp/public
    python recipes/KD-Noise/prepare_noise.py rirs_noises /data/RIRS_NOISES exp/public

Then train and prepare with, e.g., --noise_csv=exp/public/noise/musan.csv
--reserved_sources=[jamendo,us-gov] --train_rooms=exp/public/rir/simulated_rirs.csv
--rir_csv=exp/public/rir/real_rirs.csv (the lines printed below).
"""

import argparse
import sys

from kd_brain.noise.musan import MUSAN_DEFAULT_CATEGORIES, MUSAN_RESERVED, export_musan
from kd_brain.noise.rirs_noises import SIM_SIZES, export_real_rirs, export_simulated_rirs


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="corpus", required=True)
    m = sub.add_parser("musan", help="music/ and speech/ (and noise/ with --with-noise) to <out>/noise/musan.csv")
    m.add_argument("root")
    m.add_argument("out")
    m.add_argument("--with-noise", action="store_true", help="also export noise/ (kind noise)")
    m.add_argument("--reserved", nargs="*", default=list(MUSAN_RESERVED), help="subsets for rerecorded only")
    m.add_argument("--no-vocals", action="store_true", help="leave out music with vocals")
    r = sub.add_parser("rirs_noises", help="real RIRs to <out>/rir/real_rirs.csv, simulated to simulated_rirs.csv")
    r.add_argument("root")
    r.add_argument("out")
    r.add_argument("--sizes", nargs="+", default=list(SIM_SIZES))
    r.add_argument("--rirs-per-room", type=int, default=10, help="0: all")
    r.add_argument("--test-fraction", type=float, default=0.2, help="simulated rooms held out for noisy_sim")
    r.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.corpus == "musan":
        cats = list(MUSAN_DEFAULT_CATEGORIES) + (["noise"] if a.with_noise else [])
        out = export_musan(a.root, a.out, cats, a.reserved, use_vocals=not a.no_vocals)
        print(f"prepare_noise: {out['csv']}: {out['rows']} clips")
        for s, v in sorted(out["sources"].items()):
            print(f"  {s:16s} {v['kind']:6s} {v['clips']:6d} clips {v['hours']:7.2f} h"
                  f"{'  (reserved)' if s in a.reserved else ''}")
        print(f"prepare_noise: use --noise_csv={out['csv']} --reserved_sources=[{','.join(a.reserved)}]")
    else:
        real = export_real_rirs(a.root, a.out)
        print(f"prepare_noise: {real['csv']}: {real['rows']} RIR channels, {real['rooms']} rooms, "
              f"{real['bytes'] / 1e6:.1f} MB of FLAC, {len(real['skipped'])} channels left out")
        for why in real["skipped"]:
            print(f"  left out: {why}")
        sim = export_simulated_rirs(a.root, a.out, a.sizes, a.rirs_per_room or None, a.test_fraction, a.seed)
        print(f"prepare_noise: {sim['csv']}: {sim['rows']} RIRs, {sim['train_rooms']} train rooms, "
              f"{sim['test_rooms']} test rooms")
        print(f"prepare_noise: use --train_rooms={sim['csv']} --rir_csv={real['csv']}")


if __name__ == "__main__":
    main(sys.argv[1:])
