#!/usr/bin/env python3
"""Copies a slice of the real bed (../shared/data) into a pack folder with the same layout, for bench/gpu_pack.sh.

    python3 bench/gpu_pack_data.py ../shared/data gpu_pack/data --train-every 2 --test-every 8 \
        --noise-per-source 6 --rirs-per-room 12

The GPU machine has no ../shared, so bench/gpu_check.sh points the recipe at this copy
(--corpus_dir, --noise_csv, --rir_csv). The layout is shared/data's, so the recipe's own
preparation reads it unchanged:

* speech/speechocean762/{train,test}/ (Kaldi dirs: text, wav.scp, utt2spk, spk2gender, spk2age)
  holding every ``every``-th speaker in ID order (whole speakers: train and test stay disjoint, and
  the teacher's speaker split still draws labelled, unlabelled and dev speakers), and audio/ with
  their original Ogg/Opus files, byte for byte (no second lossy coding);
* noise/noise.csv with evenly spread clips of every source (the reserved sources included, which only
  the rerecorded condition plays), and the clips;
* rir/rir.csv with evenly spread measured RIRs of every room, and the files.

Every copied audio file is opened with soundfile, so an unreadable pack fails here and not on the
GPU machine. Prints what it kept as one JSON line (also written to <out>/slice.json).
"""

import argparse
import csv
import json
import math
import os
import shutil
import sys

import soundfile as sf

SPEECH = os.path.join("speech", "speechocean762")
KALDI_FILES = ("text", "wav.scp", "utt2spk", "spk2gender", "spk2age")


def read_table(path):
    """``{key: rest of line}`` of a Kaldi table file (key, a space, the rest)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                key, _, rest = line.partition(" ")
                out[key] = rest
    return out


def copy_file(src_root, dst_root, rel):
    src, dst = os.path.join(src_root, rel), os.path.join(dst_root, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def audio_seconds(path):
    """The file's duration; any file soundfile cannot open stops the pack with its name."""
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises its own and RuntimeError types
        sys.exit(f"gpu_pack_data: {path}: soundfile cannot read it ({e})")
    return info.frames / info.samplerate


def slice_speech(src, out, split, every):
    """Every ``every``-th speaker of one Kaldi dir, its tables and audio; (speakers, utterances, seconds)."""
    tables = {name: read_table(os.path.join(src, SPEECH, split, name)) for name in KALDI_FILES
              if os.path.isfile(os.path.join(src, SPEECH, split, name))}
    for name in ("text", "wav.scp", "utt2spk"):
        if name not in tables:
            sys.exit(f"gpu_pack_data: {os.path.join(src, SPEECH, split, name)} not found")
    speakers = sorted(set(tables["utt2spk"].values()))[::every]
    keep = set(speakers)
    utts = sorted(u for u, s in tables["utt2spk"].items() if s in keep)
    os.makedirs(os.path.join(out, SPEECH, split), exist_ok=True)
    for name, table in tables.items():
        keys = speakers if name.startswith("spk2") else utts
        with open(os.path.join(out, SPEECH, split, name), "w", encoding="utf-8") as f:
            f.writelines(f"{k} {table[k]}\n" for k in keys if k in table)
    seconds = 0.0
    for u in utts:  # wav.scp paths are relative to speech/speechocean762/
        dst = copy_file(os.path.join(src, SPEECH), os.path.join(out, SPEECH), tables["wav.scp"][u])
        seconds += audio_seconds(dst)
    return len(speakers), len(utts), seconds


def read_manifest(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_manifest(path, fields, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def slice_manifest(src, out, rel_csv, group, per_group):
    """Up to ``per_group`` rows of each ``group`` value of a manifest, evenly spread over its rows (other
    tracks, rooms and microphones rather than neighbouring excerpts), copied with their files (paths
    relative to the manifest's folder's parent, as in shared/data); {group: [rows, seconds]}."""
    fields, rows = read_manifest(os.path.join(src, rel_csv))
    by_group = {}
    for r in rows:
        by_group.setdefault(r[group], []).append(r)
    kept, stats = [], {}
    for name, members in by_group.items():
        step = max(1, math.ceil(len(members) / per_group))
        chosen = members[::step][:per_group]
        seconds = sum(audio_seconds(copy_file(src, out, r["path"])) for r in chosen)
        kept += chosen
        stats[name] = (len(chosen), round(seconds, 1))
    write_manifest(os.path.join(out, rel_csv), fields, kept)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the real bed (../shared/data)")
    parser.add_argument("out", help="the pack's data folder (made; must not exist)")
    parser.add_argument("--train-every", type=int, default=2, help="keep every N-th training speaker")
    parser.add_argument("--test-every", type=int, default=8, help="keep every N-th test speaker")
    parser.add_argument("--noise-per-source", type=int, default=6, help="noise clips kept per source")
    parser.add_argument("--rirs-per-room", type=int, default=12, help="measured RIRs kept per room (evenly spread)")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        sys.exit(f"gpu_pack_data: {args.out} exists; the pack is built into a fresh folder")
    for rel in (SPEECH, os.path.join("noise", "noise.csv"), os.path.join("rir", "rir.csv")):
        if not os.path.exists(os.path.join(args.src, rel)):
            sys.exit(f"gpu_pack_data: {os.path.join(args.src, rel)} not found (the real bed, ../shared/data)")
    summary = {"speech": {}, "noise": {}, "rir": {}}
    for split, every in (("train", args.train_every), ("test", args.test_every)):
        spk, n, sec = slice_speech(args.src, args.out, split, every)
        summary["speech"][split] = {"speakers": spk, "utterances": n, "hours": round(sec / 3600, 3)}
    summary["noise"] = slice_manifest(args.src, args.out, os.path.join("noise", "noise.csv"), "source",
                                      args.noise_per_source)
    summary["rir"] = slice_manifest(args.src, args.out, os.path.join("rir", "rir.csv"), "room",
                                    args.rirs_per_room)
    readme = os.path.join(args.src, "README.md")
    if os.path.isfile(readme):  # sources and licences travel with the slice
        shutil.copyfile(readme, os.path.join(args.out, "README.shared.md"))
    with open(os.path.join(args.out, "slice.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
