#!/usr/bin/env python3
"""Training step with torch.nn.Dropout vs kd_brain.model.dropout.FastDropout.

The default model (hparams/model.yaml: 4-layer conformer, d=144, 256 units,
auxiliary character head) built twice from the same seed, one with
``fast_dropout: False``, one with ``True``; same batch (12 utterances of
2.5 s, the synthetic corpus's mean, i.e. the teacher's 30 s batches), same
AdamW. A step is features + forward (both heads) + CTC losses + backward +
step. Steps alternate between the two models and the medians are compared, so
load on the machine affects both alike. Also checks the masks: the dropped
fraction of a large tensor is p. Target: the fast step >= 10% cheaper.

    python bench/bench_dropout.py [--threads 2]
"""

import argparse
import json
import os
import statistics
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.losses import ctc_loss

from kd_brain.model.dropout import FastDropout

MODEL_YAML = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hparams", "model.yaml")
B, SECONDS, V, STEPS = 12, 2.5, 256, 10


def build(fast):
    torch.manual_seed(0)
    with open(MODEL_YAML) as f:
        hp = load_hyperpyyaml(f, {"vocab_size": V, "fast_dropout": fast})
    model = hp["model"].train()
    return model, hp["compute_features"], torch.optim.AdamW(model.parameters(), lr=1e-4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the configs' num_threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wavs = torch.randn(B, int(16000 * SECONDS)) * 0.1
    lens = torch.ones(B)
    tokens, chars = torch.randint(1, V, (B, 12)), torch.randint(1, 30, (B, 30))
    runs = {"torch": build(False), "fast": build(True)}
    assert not any(type(m) is torch.nn.Dropout for m in runs["fast"][0].modules()), "a Dropout was not replaced"

    def step(model, fbank, opt):
        log_probs, aux = model(fbank(wavs), lens, aux=True)
        loss = ctc_loss(log_probs, tokens, lens, torch.ones(B), 0) + ctc_loss(aux, chars, lens, torch.ones(B), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {name: [] for name in runs}
    for name in runs:  # warm-up
        step(*runs[name])
    for _ in range(STEPS):
        for name, run in runs.items():
            t = time.perf_counter()
            step(*run)
            times[name].append(time.perf_counter() - t)
    ms = {name: 1000 * statistics.median(ts) for name, ts in times.items()}
    saving = 1 - ms["fast"] / ms["torch"]
    dropped = (FastDropout(0.1)(torch.ones(1_000_000)) == 0).float().mean().item()
    print(f"batch {B} x {SECONDS} s, {args.threads} threads: step with torch.nn.Dropout {ms['torch']:.0f} ms, "
          f"with FastDropout {ms['fast']:.0f} ms ({100 * saving:.1f}% cheaper); dropped fraction at p=0.1: {dropped:.4f}")
    print(json.dumps({"step_saving": round(saving, 4), "torch_dropout_step_ms": round(ms["torch"], 1),
                      "fast_dropout_step_ms": round(ms["fast"], 1), "dropped_fraction_p0.1": round(dropped, 5),
                      "threads": args.threads, "batch": B, "seconds_per_utt": SECONDS, "vocab": V,
                      "steps": STEPS}))


if __name__ == "__main__":
    main()
