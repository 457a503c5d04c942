"""Disk cost of a real soft-label store at k = 5, 10, 20, 40 (re-encoded from its own top-k); < 1 minute.

    python3 bench/bench_real_store.py exp/synthetic/softlabels

A store written at k keeps each frame's k best units in rank order, so its
first k' <= k columns are exactly the top-k' store: this re-encodes them with
the store's own quantization step, without the N-best lists (reported
apart), and prints bytes per frame next to naive top-k (int16 index + fp16
value, 4k B) and to icefall's MVQ codebook labels (8 uint8 codes per 20 ms
frame: 16 B per 40 ms frame, lossy), with the disk cost per hour of audio and
for the paper's 7,200 h. The last line is one JSON object.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kd_brain.store import SoftLabelStore, SoftLabelWriter, merge_index  # noqa: E402

KS = (5, 10, 20, 40)
MVQ_BYTES = 16.0  # 8 one-byte codes per 20 ms frame = 16 B per 40 ms CTC frame
PAPER_HOURS = 7200


def reencode(store, k, out_dir):
    """Bytes per frame of the store's first k columns, re-encoded without N-best lists."""
    meta = store.meta
    with SoftLabelWriter(out_dir, k=k, vocab_size=meta["vocab_size"], meta={}, quant_step=meta["quant_step"]) as w:
        for utt_id in store:
            labels = store[utt_id]
            w.add_topk(utt_id, labels.indices[:, :k], labels.log_probs[:, :k])
    merge_index(out_dir)
    return SoftLabelStore(out_dir).stats()["bytes_per_frame"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
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
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}))
    return res


if __name__ == "__main__":
    main()
