#!/usr/bin/env python3
"""The end of bench/gpu_check.sh: the paper table, then per stage its seconds, throughput and peak GPU
memory, then all of it as one JSON line (also written to <exp>/gpu_check.json).

    python3 bench/gpu_check_report.py exp/gpu_check --device cuda:0 --precision bf16 --sizes large \
        --wall_s 430 --chain_s 400 --budget_s 480

Throughput is audio seconds per second of the stage's wall time, the audio being what the stage
passes over: prepare the corpus's manifests once (labelled, unlabelled, dev, clean test); a training
stage its training manifests times the epochs its train_log.txt records; extract and pseudo_labels
the manifests they label. The wall time includes everything else the stage does (model loading,
dev and test decoding), so it is the throughput a user of the stage sees, not the model's alone.
Peak GPU memory is torch.cuda.max_memory_allocated of the stage's process (bench/gpu_site records
it at exit): what PyTorch's allocator handed out at its peak, without the CUDA context and cache.
"""

import argparse
import csv
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from kd_brain.pipeline import config  # noqa: E402


def manifest_seconds(path):
    with open(path, newline="", encoding="utf-8") as f:
        return sum(float(r["duration"]) for r in csv.DictReader(f))


def split_path(data, split):
    """A split name (a manifest in the data folder) or a CSV path, as train.py reads train_splits."""
    return split if str(split).endswith(".csv") else os.path.join(data, f"{split}.csv")


def stage_audio(root, exp, name, record):
    """(audio seconds the stage passed over, how they were counted), or (None, why not)."""
    data = os.path.join(root, exp, "data")
    script = os.path.basename(record["command"].split(" ")[1])
    try:
        if script == "prepare.py":
            splits = ["labelled", "unlabelled", "dev", "test_clean"]
            return sum(manifest_seconds(split_path(data, s)) for s in splits), "corpus once"
        if script in ("extract.py", "pseudo_label.py"):
            splits = config.value(os.path.join(root, "hparams", "extract.yaml"), "splits") \
                if script == "extract.py" else ["unlabelled"]
            return sum(manifest_seconds(split_path(data, s)) for s in splits), "+".join(splits) + " once"
        if script == "train.py":
            model = os.path.join(root, record["writes"][0])
            with open(os.path.join(model, "train_log.txt")) as f:
                epochs = sum(line.startswith("epoch:") for line in f)
            splits = config.value(os.path.join(model, "hyperparams.yaml"), "train_splits") or ["labelled"]
            seconds = sum(manifest_seconds(os.path.join(root, split_path(data, s))) for s in splits)
            return epochs * seconds, f"{epochs} x " + "+".join(os.path.basename(str(s)) for s in splits)
    except (OSError, KeyError, IndexError, ValueError) as e:
        return None, f"not counted: {e}"
    return None, "not counted"


def peak_memory(stats_path):
    """{command line: peak allocated bytes over its devices} of the processes that used CUDA."""
    out = {}
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            for line in f:
                r = json.loads(line)
                peak = max((d["max_allocated"] for d in r["devices"].values()), default=0)
                key = " ".join(r["argv"])
                out[key] = max(out.get(key, 0), peak)
    return out


def gpu_name(device):
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp")
    for key in ("device", "precision", "sizes"):
        parser.add_argument(f"--{key}", required=True)
    for key in ("wall_s", "chain_s", "budget_s"):  # budget 0: none
        parser.add_argument(f"--{key}", type=int, required=True)
    args = parser.parse_args()
    table_path = os.path.join(REPO, args.exp, "paper_table.json")
    if not os.path.isfile(table_path):
        sys.exit(f"gpu_check_report: {table_path} not found: the chain did not finish")
    with open(table_path) as f:
        table = json.load(f)
    with open(os.path.join(REPO, args.exp, "paper_table.md")) as f:  # the WER table, without the commands
        print("\n" + f.read().split("\nStage wall times")[0])
    records = table["stages"][args.exp]
    memory = peak_memory(os.path.join(REPO, args.exp, "gpu_memory.jsonl"))
    stages = {}
    for name, rec in records.items():
        audio, counted = stage_audio(REPO, args.exp, name, rec)
        peak = memory.get(rec["command"].split(" ", 1)[1])
        stages[name] = {"seconds": rec["seconds"], "audio_s": round(audio, 1) if audio is not None else None,
                        "x_realtime": round(audio / rec["seconds"], 1) if audio and rec["seconds"] else None,
                        "audio_counted": counted,
                        "peak_gpu_gib": round(peak / 2**30, 3) if peak is not None else None}
        s = stages[name]
        print(f"{name:15s} {s['seconds']:6d} s  {s['audio_s'] or 0:9.0f} audio s  x{s['x_realtime'] or 0:8.1f}  "
              f"peak GPU {s['peak_gpu_gib'] if s['peak_gpu_gib'] is not None else '-'} GiB  ({counted})")
    peaks = [s["peak_gpu_gib"] for s in stages.values() if s["peak_gpu_gib"] is not None]
    out = {"bench": "gpu_check", "device": args.device, "gpu": gpu_name(args.device), "precision": args.precision,
           "sizes": args.sizes, "exp": args.exp, "wall_s": args.wall_s, "chain_s": args.chain_s,
           "budget_s": args.budget_s or None, "within_budget": args.wall_s <= args.budget_s if args.budget_s else None,
           "wer": {m: {c: v["mean"] for c, v in conds.items()} for m, conds in table["wer"].items()},
           "stages": stages, "peak_gpu_gib": max(peaks) if peaks else None,
           "throughput": "audio s the stage passes over / its wall s (bench/gpu_check_report.py)",
           "gpu_memory": "torch.cuda.max_memory_allocated of each stage's process"}
    line = json.dumps(out)
    with open(os.path.join(REPO, args.exp, "gpu_check.json"), "w") as f:
        f.write(line + "\n")
    if out["within_budget"] is False:
        print(f"gpu_check: {args.wall_s} s, over the {args.budget_s} s budget", file=sys.stderr)
    print(line)


if __name__ == "__main__":
    main()
