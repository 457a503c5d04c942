#!/usr/bin/env python3
"""Student training step vs a plain CTC step: the cost of soft labels.

Same model (the CPU default's encoder, 4-layer conformer, d=144, with 30 output
units, the character configuration's), same batch
(16 utterances of 4 s), same optimizer. The CTC step is forward + CTC loss +
backward + AdamW step. The student step adds what distillation adds: reading
the batch's top-k labels (k=20) from a soft-label store by utterance ID,
padding them, and the frame KD loss instead of CTC. Contamination is not
counted here (it is the student's input, see bench_contamination.py).
Steps alternate between the two kinds and the medians are compared, so load
on the machine affects both alike. Target: overhead <= 5%.

    python bench/bench_student_step.py
"""

import json
import statistics
import tempfile
import time

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.nnet.losses import ctc_loss

from kd_brain.kd.losses import FrameKD
from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper
from kd_brain.store import SoftLabelStore, SoftLabelWriter, merge_index

B, SECONDS, V, K, STEPS = 16, 4.0, 30, 20, 12


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = CTCModel(80, 144, ConformerEncoderWrapper(4, 144, 576, 4, 15), vocab_size=V)
    feats_fn = Fbank(n_mels=80)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wavs = torch.randn(B, int(16000 * SECONDS)) * 0.1
    lens = torch.ones(B)
    ids = [f"utt{i:03d}" for i in range(B)]
    frames = model.output_frames(wavs.shape[1])
    tokens = torch.randint(1, V, (B, 40))
    store_dir = tempfile.mkdtemp()
    with SoftLabelWriter(store_dir, k=K, vocab_size=V, meta={}) as w:
        for u in ids:  # peaky CTC-like posteriors
            logits = torch.randn(frames, V) * 2
            logits[:, 0] += 6 * (torch.rand(frames) > 0.3)
            w.add(u, logits)
    merge_index(store_dir)
    store = SoftLabelStore(store_dir)
    kd = FrameKD(temperature=2.0, k=K)

    def ctc_step():
        log_probs = model(feats_fn(wavs), lens)
        loss = ctc_loss(log_probs, tokens, lens, torch.ones(B), blank_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def kd_step():
        labels = [store[u] for u in ids]  # what the dataloader reads per batch
        idx = torch.nn.utils.rnn.pad_sequence([x.indices for x in labels], batch_first=True)
        logp = torch.nn.utils.rnn.pad_sequence([x.log_probs for x in labels], batch_first=True)
        log_probs = model(feats_fn(wavs), lens)
        loss = kd(log_probs, lens, idx, logp)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {"ctc": [], "kd": []}
    ctc_step(), kd_step()  # warm-up
    for _ in range(STEPS):
        for name, fn in (("ctc", ctc_step), ("kd", kd_step)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    t_labels = []
    for _ in range(50):
        t = time.perf_counter()
        [store[u] for u in ids]
        t_labels.append(time.perf_counter() - t)
    ctc, kdt = statistics.median(times["ctc"]), statistics.median(times["kd"])
    overhead = (kdt - ctc) / ctc
    print(f"batch {B} x {SECONDS:.0f} s, 1 thread: CTC step {ctc * 1000:.0f} ms, student step {kdt * 1000:.0f} ms, "
          f"label reads {statistics.median(t_labels) * 1000:.2f} ms per batch; overhead {100 * overhead:+.1f}%")
    print(json.dumps({"step_overhead": round(overhead, 4), "ctc_step_ms": round(ctc * 1000, 1),
                      "student_step_ms": round(kdt * 1000, 1),
                      "label_read_ms_per_batch": round(statistics.median(t_labels) * 1000, 3),
                      "batch": B, "seconds_per_utt": SECONDS, "k": K, "vocab": V, "steps": STEPS}))


if __name__ == "__main__":
    main()
