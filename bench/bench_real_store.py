"""Disk cost of a real soft-label store at k = 5, 10, 20, 40 (re-encoded from its own top-k); < 1 minute.

    python3 bench/bench_real_store.py exp/synthetic/softlabels [--side_seconds=300]

A store written at k keeps each frame's k best units in rank order, so its
first k' <= k columns are exactly the top-k' store: this re-encodes them with
the store's own quantization step, without the N-best lists (reported
apart), and prints bytes per frame next to naive top-k (int16 index + fp16
value, 4k B) and to icefall's MVQ codebook labels (8 uint8 codes per 20 ms
frame: 16 B per 40 ms frame, lossy), with the disk cost per hour of audio and
for the paper's 7,200 h.

The frame-target ablations (:mod:`kd_brain.kd.targets`) need what
the store does not keep: the teacher's full distribution. When the store's
teacher (``teacher_dir`` in its metadata, relative to the folder above the
store's experiment) is there, it is run again over the store's utterances,
every n-th by duration, ~``--side_seconds`` of audio (0: skip), and the same
frames are written at k = 20 and 40 with and without the side array at
T = 1, 2, 4 (``side_bytes_per_frame_k*``: the difference), and as sampled
stores of K = 20 and 40 draws (``sampled_bytes_per_frame_K*``, side array
included; ``sampled_side_bytes_per_frame_K*`` of it). The last line is one
JSON object.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kd_brain.store import SoftLabelStore, SoftLabelWriter, merge_index  # noqa: E402

KS = (5, 10, 20, 40)
MVQ_BYTES = 16.0  # 8 one-byte codes per 20 ms frame = 16 B per 40 ms CTC frame
PAPER_HOURS = 7200
SIDE_TEMPERATURES = [1.0, 2.0, 4.0]  # the ablation's (recipes/KD-Noise/ablations.py)
SIDE_KS = (20, 40)


def reencode(store, k, out_dir):
    """Bytes per frame of the store's first k columns, re-encoded without N-best lists."""
    meta = store.meta
    with SoftLabelWriter(out_dir, k=k, vocab_size=meta["vocab_size"], meta={}, quant_step=meta["quant_step"]) as w:
        for utt_id in store:
            labels = store[utt_id]
            w.add_topk(utt_id, labels.indices[:, :k], labels.log_probs[:, :k])
    merge_index(out_dir)
    return SoftLabelStore(out_dir).stats()["bytes_per_frame"]


def teacher_root(store_dir, teacher_dir):
    """The folder ``teacher_dir`` (maybe relative, as the run wrote it) is relative to, or None."""
    if os.path.isabs(teacher_dir):
        return "/" if os.path.isdir(teacher_dir) else None
    folder = os.path.abspath(store_dir)
    while folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
        if os.path.isfile(os.path.join(folder, teacher_dir, "hyperparams.yaml")):
            return folder
    return None


def teacher_outputs(store, root, max_seconds):
    """{utt_id: [frames, V] log-probs} of the store's teacher on every n-th of its utterances by duration,
    about max_seconds of audio in all; and those seconds."""
    import torch

    from kd_brain.data.prepare import read_csv, write_csv
    from kd_brain.data.dataio import make_dataset
    from kd_brain.brains.extract import ExtractBrain, plan_batches
    from kd_brain.pipeline.modeldir import load_label_source

    class Capture(ExtractBrain):
        def compute_objectives(self, predictions, batch, stage):
            log_probs, lens = predictions
            for u, lp, n in zip(batch.id, log_probs, torch.round(lens * log_probs.shape[1]).long().tolist()):
                self.outputs[u] = lp[:n].cpu()
            return torch.zeros(())

    cwd = os.getcwd()
    os.chdir(root)  # manifests and wav paths are relative to where the run was started
    try:
        thp, origin, best, _ = load_label_source(store.meta["teacher_dir"])
        rows = [r for s in ("labelled", "unlabelled") for r in read_csv(os.path.join(origin["data_folder"], f"{s}.csv"))
                if r["ID"] in store]
        rows.sort(key=lambda r: (float(r["duration"]), r["ID"]))
        stride = max(1, round(sum(float(r["duration"]) for r in rows) / max_seconds))
        chosen = rows[stride // 2 :: stride]  # short and long utterances alike
        total = sum(float(r["duration"]) for r in chosen)
        manifest = os.path.join(tempfile.mkdtemp(), "subset.csv")
        write_csv(manifest, chosen, ["ID", "duration", "wav"])  # audio only: the unlabelled rows have no wrd
        dataset = make_dataset(manifest)
        brain = Capture(modules=thp["modules"], hparams=thp, run_opts={"device": "cpu", "noprogressbar": True},
                        checkpointer=thp["checkpointer"])
        brain.checkpoint, brain.outputs = best, {}
        with torch.no_grad():
            brain.evaluate(dataset, test_loader_kwargs={"batch_sampler": plan_batches(dataset, 16)},
                           progressbar=False)
    finally:
        os.chdir(cwd)
    return brain.outputs, total


def store_bytes(out_dir, outputs, k, vocab_size, step, **writer_kw):
    """Bytes per frame of ``outputs`` written by ``SoftLabelWriter.add`` (which makes any side array)."""
    with SoftLabelWriter(out_dir, k=k, vocab_size=vocab_size, meta={}, quant_step=step, **writer_kw) as w:
        for utt_id, lp in outputs.items():
            w.add(utt_id, lp)
    merge_index(out_dir)
    return SoftLabelStore(out_dir).stats()["bytes_per_frame"]


def target_costs(store, max_seconds, tmp):
    """Side-array and sampled-store bytes per frame (see the module docstring); {} without the teacher."""
    meta = store.meta
    root = teacher_root(store.store_dir, meta.get("teacher_dir") or "")
    if max_seconds <= 0 or root is None:
        print("no teacher run: " + ("--side_seconds=0" if max_seconds <= 0 else f"{meta.get('teacher_dir')} not found"))
        return {}
    start = time.time()
    outputs, seconds = teacher_outputs(store, root, max_seconds)
    frames = sum(len(x) for x in outputs.values())
    res = {"side_utterances": len(outputs), "side_frames": frames, "side_audio_s": round(seconds, 1),
           "side_teacher_s": round(time.time() - start, 1)}
    V, step = meta["vocab_size"], meta["quant_step"]
    print(f"teacher re-run on {len(outputs)} utterances ({seconds:.0f} s, {frames} frames) in "
          f"{res['side_teacher_s']} s; side array at T = {SIDE_TEMPERATURES}")
    print(f"{'k / K':>5} {'top-k B/f':>10} {'+side B/f':>10} {'sampled B/f':>12} {'of it side':>11} "
          f"{'units/frame':>12}")
    for k in SIDE_KS:
        plain = store_bytes(os.path.join(tmp, f"t{k}"), outputs, min(k, V), V, step)
        side = store_bytes(os.path.join(tmp, f"t{k}s"), outputs, min(k, V), V, step,
                           side_temperatures=SIDE_TEMPERATURES)
        sdir = os.path.join(tmp, f"s{k}")
        sampled = store_bytes(sdir, outputs, k, V, step, target="sampled", side_temperatures=SIDE_TEMPERATURES)
        draws = SoftLabelStore(sdir)
        distinct = sum(len(set(r)) for u in draws for r in draws[u].indices.tolist())
        res.update({f"topk_bytes_per_frame_k{k}": plain, f"side_bytes_per_frame_k{k}": side - plain,
                    f"sampled_bytes_per_frame_K{k}": sampled,
                    f"sampled_distinct_units_per_frame_K{k}": distinct / max(frames, 1)})
        no_side = float("nan")
        if k <= V:  # the same draws in a plain store (which keeps at most V per frame): the side array's share
            with SoftLabelWriter(sdir + "n", k=k, vocab_size=V, meta={}, quant_step=step) as w:
                for utt_id in draws:
                    w.add_topk(utt_id, draws[utt_id].indices, draws[utt_id].log_probs)
            merge_index(sdir + "n")
            no_side = SoftLabelStore(sdir + "n").stats()["bytes_per_frame"]
            res[f"sampled_side_bytes_per_frame_K{k}"] = sampled - no_side
        print(f"{k:>5} {plain:>10.2f} {side - plain:>10.2f} {sampled:>12.2f} {sampled - no_side:>11.2f} "
              f"{distinct / max(frames, 1):>12.2f}")
    return res


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    side_seconds = 300.0
    for a in [a for a in argv if a.startswith("--side_seconds=")]:
        side_seconds = float(a.split("=", 1)[1])
        argv = [x for x in argv if x != a]
    if len(argv) != 1:
        sys.exit(__doc__)
    store = SoftLabelStore(argv[0])
    meta, stats = store.meta, store.stats()
    frames_per_s = 1000.0 / meta["frame_shift_ms"]
    hours = stats["frames"] / frames_per_s / 3600
    res = {"store": argv[0], "k_stored": meta["k"], "V": meta["vocab_size"], "utterances": stats["utterances"],
           "frames": stats["frames"], "hours": round(hours, 3), "bytes_per_frame_as_stored": stats["bytes_per_frame"]}
    print(f"{argv[0]}: V = {meta['vocab_size']}, stored k = {meta['k']}, {stats['utterances']} utterances, "
          f"{hours:.2f} h, {stats['bytes_per_frame']:.1f} B/frame as stored (N-best lists included)")
    print(f"{'k':>3} {'ours B/f':>9} {'naive B/f':>10} {'MVQ B/f':>8} {'MB per h':>9} {'GB for 7,200 h':>15}")
    tmp = tempfile.mkdtemp()
    for k in [k for k in KS if k <= meta["k"]]:
        ours = reencode(store, k, os.path.join(tmp, f"k{k}"))
        per_hour = ours * frames_per_s * 3600
        res.update({f"bytes_per_frame_k{k}": ours, f"naive_bytes_per_frame_k{k}": 4.0 * k,
                    f"mb_per_hour_k{k}": per_hour / 1e6, f"gb_{PAPER_HOURS}h_k{k}": per_hour * PAPER_HOURS / 1e9})
        print(f"{k:>3} {ours:>9.2f} {4.0 * k:>10.1f} {MVQ_BYTES:>8.1f} {per_hour / 1e6:>9.2f} "
              f"{per_hour * PAPER_HOURS / 1e9:>15.1f}")
    res["mvq_bytes_per_frame"] = MVQ_BYTES
    res.update(target_costs(store, side_seconds, tmp))
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}))
    return res


if __name__ == "__main__":
    main()
