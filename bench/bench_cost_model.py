#!/usr/bin/env python3
"""Cost model of the full-scale path: FLOPs counted, CPU time measured, GPU-hours estimated.

No GPU throughput can be measured here, so the GPU-hours are arithmetic: for
each stage, the hours of audio it reads times the FLOPs per audio second of
its model (counted by ``torch.utils.flop_counter`` on a real forward and
backward pass of the CPU default and of the LibriSpeech model,
hparams/model.yaml sizes and hparams/teacher_large.yaml's), divided by an
assumed sustained GPU rate: ``GPU_TFLOPS`` gives two, 200 TFLOP/s (20% of an
H100/H200's ~990 TFLOP/s dense bf16 peak: a well-fed large batch) and 20 TFLOP/s
(2%: closer to what published recipes of small conformers achieve once data
loading, CTC and short utterances are counted). Both are assumptions. The CPU step of both
models is timed side by side, so the CPU rate the estimate starts from is a
measurement. Disk: the soft-label store at the bytes per frame measured on
the main job's sub-word store (RESULTS.md, benchmarks), 40 ms CTC frames.

    python bench/bench_cost_model.py     # about 30 s; last line: one JSON object
"""

import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper

# name: (d_model, layers, d_ffn, heads, kernel, frontend channels, units)
MODELS = {"cpu_default": (144, 4, 576, 4, 15, 32, 256), "librispeech_large": (256, 12, 1024, 4, 31, 256, 512)}
GPU_TFLOPS = (200.0, 20.0)  # assumptions, not measurements: 20% and 2% of ~990 TFLOP/s dense bf16
STORE_B_PER_FRAME = 27.0    # measured: main job's sub-word store at k = 20 (RESULTS.md, benchmarks)
FRAME_S = 0.04              # 10 ms fbank hop, 4x subsampling
# (stage, model, audio hours at LibriSpeech 960 h, at the paper's 8,000 h, passes, backward?)
STAGES = [("teacher", "librispeech_large", 100, 800, 100, True),        # teacher_large.yaml: 100 epochs
          ("teacher_seq (MWER)", "librispeech_large", 100, 800, 2, True),  # fwd+bwd; N-best search on CPU
          ("extract (top-k)", "librispeech_large", 960, 8000, 1, False),
          ("student", "librispeech_large", 960, 8000, 30, True),
          ("student_seq (MWER)", "librispeech_large", 100, 800, 2, True)]


def build(name):
    d, layers, ffn, heads, kernel, front, units = MODELS[name]
    torch.manual_seed(0)
    return CTCModel(80, d, ConformerEncoderWrapper(layers, d, ffn, heads, kernel), vocab_size=units,
                    frontend_channels=front)


def flops_per_second(model, train, seconds=8.0):
    """FLOPs of one pass (forward, and backward when ``train``) per second of audio."""
    feats = torch.randn(1, int(seconds * 100), 80)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(feats, torch.ones(1))
        if train:
            out.sum().backward()
    return counter.get_total_flops() / seconds


def step_seconds(model, batch=4, seconds=4.0, steps=3):
    """Median CPU wall time of a forward + backward on ``batch`` utterances of ``seconds``."""
    feats = torch.randn(batch, int(seconds * 100), 80)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t = time.perf_counter()
        model(feats, torch.ones(batch)).sum().backward()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2], batch * seconds


def main():
    torch.set_num_threads(1)
    info = {}
    for name in MODELS:
        model = build(name)
        wall, audio = step_seconds(model)
        train = flops_per_second(model, True)
        info[name] = dict(params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                          train_GFLOP_per_audio_s=round(train / 1e9, 2),
                          forward_GFLOP_per_audio_s=round(flops_per_second(model, False) / 1e9, 2),
                          cpu_step_s_per_audio_s=round(wall / audio, 4),
                          cpu_GFLOPS_1thread=round(train * audio / wall / 1e9, 1))
        print(name, info[name], flush=True)
    ratio = info["librispeech_large"]["cpu_step_s_per_audio_s"] / info["cpu_default"]["cpu_step_s_per_audio_s"]
    rows = []
    hi, lo = GPU_TFLOPS
    print(f"\nGPU-hours at {hi:g} / {lo:g} TFLOP/s sustained (estimates)\n")
    print("| stage | audio h x passes (960 h / 8,000 h) | 960 h | 8,000 h |")
    print("|---|---|---|---|")
    for stage, model, h960, h8000, passes, backward in STAGES:
        key = "train_GFLOP_per_audio_s" if backward else "forward_GFLOP_per_audio_s"
        gflop_s = info[model][key]
        gpu_h = {(h, r): h * passes * gflop_s / (r * 1e3) for h in (h960, h8000) for r in GPU_TFLOPS}
        rows.append(dict(stage=stage, gpu_hours_960=[round(gpu_h[h960, r], 1) for r in GPU_TFLOPS],
                         gpu_hours_8000=[round(gpu_h[h8000, r], 1) for r in GPU_TFLOPS]))
        print(f"| {stage} | {h960} / {h8000} x {passes} | {gpu_h[h960, hi]:.1f} / {gpu_h[h960, lo]:.1f} | "
              f"{gpu_h[h8000, hi]:.1f} / {gpu_h[h8000, lo]:.1f} |")
    store = {f"{h} h": round(h * 3600 / FRAME_S * STORE_B_PER_FRAME / 1e9, 2) for h in (1, 1000, 7200)}
    print(f"\nstore at k = 20 ({STORE_B_PER_FRAME} B/frame, {1 / FRAME_S:.0f} frames/s): GB {store}")
    print(json.dumps({"bench": "cost_model", "models": info, "large_vs_default_cpu_time": round(ratio, 2),
                      "gpu_tflops_assumed": list(GPU_TFLOPS), "stages": rows, "store_GB": store}))


if __name__ == "__main__":
    main()
