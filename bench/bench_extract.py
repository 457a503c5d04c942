#!/usr/bin/env python3
"""Extraction cost: teacher forward alone vs forward + top-k + write, and 2 ranks vs 1.

The teacher is the CPU config of ``hparams/teacher.yaml`` (4-layer conformer,
d = 144, 256 unigram units), randomly initialised: only time is measured here. Its
input is 160 real utterances of the shared bed (speechocean762, ~8 min of
audio, converted to WAV before timing); without ../shared, white noise of the
same lengths. Both kinds of pass run through ``ExtractBrain.evaluate`` over
the same fixed batches (``kd_brain.brains.extract.plan_batches``), so data loading,
features and forward are identical; the write pass adds ``torch.topk``,
quantization, zstd and the shard files (``SoftLabelWriter``, k = 20). Passes
alternate (forward, write, forward, write, ...), so load on the machine
affects both alike. ``write_overhead`` is the write step clocked inside the
loop (``compute_objectives``, closing the shard, merging the index) over the
fastest forward-only pass; ``write_overhead_passes`` compares the fastest
whole passes of each kind, which differ by less than their run-to-run noise
(a few %). Target: ``write_overhead`` <= 3%. ``nbest_overhead`` is the optional N-best
(``nbest: 4``, beam 8, ``kd_brain.brains.extract.NBestSearcher``) on top, reported,
not targeted; a random teacher's flat outputs are the beam search's worst
case (on the trained teachers it costs about a quarter of the forward pass).

Then the same extraction under ``torchrun`` with 1 rank (2 torch threads)
and 2 ranks (1 thread each) on this machine's 2 cores: ``rank_speedup`` is
the ratio of the extraction loop's wall time (slowest rank), and
``rank_speedup_with_startup`` the ratio of the whole commands' wall times.
The last line is one JSON object.

    python bench/bench_extract.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from kd_brain.data.prepare import write_csv  # noqa: E402
from kd_brain.data.dataio import make_dataset  # noqa: E402
from kd_brain.brains.extract import ExtractBrain, NBestSearcher, extract, plan_batches  # noqa: E402
from kd_brain.store import SoftLabelWriter, merge_index  # noqa: E402
from kd_brain.data.tokenizer import train_tokenizer  # noqa: E402

SPEECH = os.path.join(REPO, "..", "shared", "data", "speech", "speechocean762")
N_UTTS, K, BATCH, PASSES = 160, 20, 16, 5


class ForwardOnly(ExtractBrain):
    """The same evaluation loop with nothing kept: the baseline."""

    def compute_objectives(self, predictions, batch, stage):
        return torch.zeros(())


class TimedExtract(ExtractBrain):
    """ExtractBrain that also clocks its own top-k + write step (``seconds``)."""

    seconds = 0.0

    def compute_objectives(self, predictions, batch, stage):
        start = time.perf_counter()
        out = super().compute_objectives(predictions, batch, stage)
        self.seconds += time.perf_counter() - start
        return out


def make_manifest(folder):
    """N_UTTS utterances as 16 kHz WAV (real speech when the shared bed is present)."""
    rows, rng = [], np.random.default_rng(0)
    scp = os.path.join(SPEECH, "train", "wav.scp")
    sources = []
    if os.path.exists(scp):
        with open(scp) as f:
            sources = [line.split() for line in f][:N_UTTS]
    for i in range(N_UTTS):
        if sources:
            uid, rel = sources[i]
            audio, sr = sf.read(os.path.join(SPEECH, rel), dtype="float32")
            assert sr == 16000, rel
        else:
            uid, audio = f"noise{i:03d}", (0.1 * rng.standard_normal(int(16000 * rng.uniform(2, 6)))).astype("float32")
        wav = os.path.join(folder, f"{uid}.wav")
        sf.write(wav, audio, 16000)
        rows.append({"ID": uid, "duration": len(audio) / 16000, "wav": wav})
    path = os.path.join(folder, "bench.csv")
    write_csv(path, rows, ["ID", "duration", "wav"])
    return path, sum(r["duration"] for r in rows), bool(sources)


def subword_tokenizer(folder, vocab_size):
    """A unigram tokenizer of the teacher's size (the CPU config: 256 units, blank included).

    Trained on the shared bed's training transcripts, or without the bed on a
    seeded list of made-up words: its ids must cover every output the random
    teacher emits, or the N-best decode fails (piece id out of range).
    """
    text = os.path.join(SPEECH, "train", "text")
    if os.path.exists(text):
        with open(text) as f:
            lines = [line.split(maxsplit=1)[1].strip().upper() for line in f if len(line.split()) > 1]
    else:
        rng = np.random.default_rng(0)
        words = ["".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), rng.integers(2, 9))) for _ in range(3000)]
        lines = [" ".join(rng.choice(words, 8)) for _ in range(2000)]
    rows = [{"ID": str(i), "wrd": line} for i, line in enumerate(lines)]
    write_csv(os.path.join(folder, "text.csv"), rows, ["ID", "wrd"])
    tokenizer = train_tokenizer(os.path.join(folder, "text.csv"), folder, vocab_size=vocab_size,
                                model_type="unigram", alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    assert tokenizer.vocab_size == vocab_size, (tokenizer.vocab_size, vocab_size)
    return tokenizer


def teacher_brain(folder, brain_class, nbest=0, run_opts=None):
    with open(os.path.join(REPO, "hparams", "teacher.yaml")) as f:
        hp = load_hyperpyyaml(f, {"exp_folder": folder, "num_workers": 0})
    hp["modules"]["model"].load_state_dict(torch.load(os.path.join(folder, "teacher.pt"), weights_only=True))
    dataset = make_dataset(os.path.join(folder, "bench.csv"))
    with torch.no_grad():  # global feature statistics from the first utterances, as training would
        for i in range(4):
            hp["normalize"](hp["compute_features"](dataset[i]["sig"][None]), torch.ones(1), epoch=0)
    if nbest:
        tokenizer = subword_tokenizer(folder, hp["model"].vocab_size)
        hp.update(nbest=nbest, nbest_searcher=NBestSearcher(tokenizer, nbest, beam_size=8))
    opts = {"device": "cpu", **(run_opts or {})}
    return brain_class(modules=hp["modules"], hparams=hp, run_opts=opts), hp["model"].vocab_size


def timed_pass(brain, dataset, store=None, vocab=None):
    """One extraction (or forward-only) pass over all fixed batches; seconds."""
    batches = plan_batches(dataset, BATCH)
    start = time.perf_counter()
    if store is None:
        brain.evaluate(dataset, test_loader_kwargs={"batch_sampler": batches}, progressbar=False)
        return time.perf_counter() - start, 0.0
    brain.seconds = 0.0
    with SoftLabelWriter(store, k=K, vocab_size=vocab, meta={}) as writer:
        extract(brain, dataset, writer, BATCH)
        closing = time.perf_counter()
    merge_index(store)
    end = time.perf_counter()
    return end - start, brain.seconds + end - closing  # whole pass; top-k + write + close + index


def worker(folder, out):
    """One torchrun rank: the extraction loop, timed; writes its time to a JSON file."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(max(1, 2 // world))
    run_opts = {"distributed_backend": "gloo"}
    sb.utils.distributed.ddp_init_group(run_opts)
    brain, vocab = teacher_brain(folder, ExtractBrain, run_opts=run_opts)
    dataset = make_dataset(os.path.join(folder, "bench.csv"))
    torch.distributed.barrier()
    start = time.perf_counter()
    with SoftLabelWriter(out, k=K, vocab_size=vocab, meta={}, rank=rank) as writer:
        n = extract(brain, dataset, writer, BATCH, rank, world)
    seconds = time.perf_counter() - start
    torch.distributed.barrier()
    if rank == 0:
        merge_index(out)
    with open(os.path.join(out, f"time-r{rank}.json"), "w") as f:
        json.dump({"seconds": seconds, "utterances": n}, f)


def torchrun(folder, ranks, port):
    out = os.path.join(folder, f"ranks{ranks}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={port}",
           __file__, "--worker", folder, out]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(2 // ranks)))
    total = time.perf_counter() - start
    times = [json.load(open(os.path.join(out, f"time-r{r}.json"))) for r in range(ranks)]
    assert sum(t["utterances"] for t in times) == N_UTTS, times
    return max(t["seconds"] for t in times), total


def main():
    torch.set_num_threads(2)
    folder = tempfile.mkdtemp()
    manifest, seconds, real = make_manifest(folder)
    with open(os.path.join(REPO, "hparams", "teacher.yaml")) as f:
        torch.save(load_hyperpyyaml(f, {"exp_folder": folder})["model"].state_dict(), os.path.join(folder, "teacher.pt"))
    dataset = make_dataset(manifest)
    fwd, vocab = teacher_brain(folder, ForwardOnly)
    wrt, _ = teacher_brain(folder, TimedExtract)
    nbs, _ = teacher_brain(folder, TimedExtract, nbest=4)
    times = {"forward": [], "write": [], "nbest": []}
    writing = []
    timed_pass(fwd, dataset)  # warm-up: first-call allocations, page cache
    for p in range(PASSES):
        times["forward"].append(timed_pass(fwd, dataset)[0])
        total, inside = timed_pass(wrt, dataset, os.path.join(folder, f"store{p}"), vocab)
        times["write"].append(total)
        writing.append(inside)
    total, inside_nbest = timed_pass(nbs, dataset, os.path.join(folder, "nbest"), vocab)
    times["nbest"].append(total)
    best = {key: min(v) for key, v in times.items()}
    res = {"utterances": N_UTTS, "audio_s": round(seconds, 1), "real_speech": real, "k": K,
           "forward_s": best["forward"], "forward_write_s": best["write"],
           # the write step clocked inside the loop, over the fastest forward-only pass: the
           # difference of two whole passes (write_overhead_passes) carries their +-3% noise
           "write_overhead": min(writing) / best["forward"],
           "write_overhead_passes": best["write"] / best["forward"] - 1,
           "nbest_overhead": inside_nbest / best["forward"]}
    print(f"{N_UTTS} utterances, {seconds:.0f} s of {'speech' if real else 'noise'}, teacher CPU config, k={K}")
    print(f"forward alone {best['forward']:.2f} s; top-k + write, clocked in the loop, {min(writing):.3f} s: "
          f"writing adds {100 * res['write_overhead']:.1f}%")
    print(f"whole passes: forward + top-k + write {best['write']:.2f} s, "
          f"{100 * res['write_overhead_passes']:+.1f}% (all: {times})")
    print(f"with the N-best (4, beam 8) as well: +{100 * res['nbest_overhead']:.0f}%")
    one, one_total = torchrun(folder, 1, 29531)
    two, two_total = torchrun(folder, 2, 29532)
    res.update({"rank1_loop_s": one, "rank2_loop_s": two, "rank_speedup": one / two,
                "rank1_total_s": one_total, "rank2_total_s": two_total,
                "rank_speedup_with_startup": one_total / two_total})
    print(f"torchrun on 2 cores: 1 rank x 2 threads {one:.2f} s, 2 ranks x 1 thread {two:.2f} s "
          f"(loop, slowest rank): {one / two:.2f}x; whole command {one_total:.1f} vs {two_total:.1f} s")
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:4])
    else:
        main()
