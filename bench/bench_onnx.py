#!/usr/bin/env python3
"""Real-time factor on one CPU core: PyTorch vs the ONNX export (fp32 and int8), and the files' sizes.

The model is a trained model folder's best checkpoint when one is given
(exported by ``kd_brain.decode.onnx_export.export_onnx``), else the default
architecture of ``hparams/model.yaml`` (4-layer conformer, d = 144, 80 mels,
256 units), randomly initialised, with normaliser statistics from the audio:
only time and agreement are measured then. The audio is about ``--seconds``
of real utterances of the shared bed (speechocean762 test, as read by
transcription), or without ../shared white noise of 2-6 s utterances; batches
of 8 in length order, as ``recipes/KD-Noise/transcribe.py`` batches them.
Each engine runs the whole path, waveforms to log-probs (the fbank is
torch's in all three; ``rtf_fbank`` is that share, timed alone), with ``torch.set_num_threads(1)`` and onnxruntime
``intra_op_num_threads=1``. Passes rotate over the engines (PyTorch, fp32,
int8, PyTorch, ...), so load on the machine affects all alike; the fastest
pass of each counts. RTF = seconds of compute per second of audio. Also the
largest |log-prob difference| from PyTorch over valid frames, and for int8
the share of frames whose best unit is PyTorch's. The last line is one JSON
object.

    python bench/bench_onnx.py [MODEL_DIR] [--seconds 120] [--passes 5]
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from hyperpyyaml import load_hyperpyyaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from kd_brain.decode.onnx_export import FeatureCTC, OnnxAcoustic, export_graph, export_onnx  # noqa: E402
from kd_brain.decode.transcribe import AcousticModel, load_audio, load_model  # noqa: E402

BED = os.path.join(REPO, "..", "shared", "data", "speech", "speechocean762")  # wav.scp paths are relative to it
BATCH = 8


def read_audio(seconds):
    """Waveforms of about ``seconds`` in all: the bed's test utterances, or seeded noise without it."""
    wavs, total = [], 0.0
    scp = os.path.join(BED, "test", "wav.scp")
    if os.path.isfile(scp):
        with open(scp) as f:
            for line in f:
                wavs.append(load_audio(os.path.join(BED, line.split()[1])))
                total += len(wavs[-1]) / 16000
                if total >= seconds:
                    break
        return wavs, True
    rng = np.random.default_rng(0)
    while total < seconds:
        wavs.append(torch.from_numpy((0.1 * rng.standard_normal(int(16000 * rng.uniform(2, 6)))).astype("float32")))
        total += len(wavs[-1]) / 16000
    return wavs, False


def batches_of(wavs):
    """Padded batches of BATCH in length order: ``[(wavs [N, S], relative lengths [N])]``."""
    wavs = sorted(wavs, key=len)
    out = []
    for start in range(0, len(wavs), BATCH):
        chunk = wavs[start:start + BATCH]
        longest = max(len(w) for w in chunk)
        batch = torch.zeros(len(chunk), longest)
        for i, w in enumerate(chunk):
            batch[i, :len(w)] = w
        out.append((batch, torch.tensor([len(w) / longest for w in chunk])))
    return out


def random_model(folder, wavs):
    """``(AcousticModel, fp32 path, int8 path)`` of the default architecture, randomly initialised."""
    torch.manual_seed(0)
    with open(os.path.join(REPO, "hparams", "model.yaml")) as f:
        hp = load_hyperpyyaml(f, {"vocab_size": 256})
    fbank, norm, model = hp["compute_features"], hp["normalize"], hp["model"]
    with torch.no_grad():  # global statistics from the audio, as training collects them
        for w in wavs[:8]:
            norm(fbank(w[None]), torch.ones(1), epoch=0)
    acoustic = AcousticModel(fbank, norm, model).eval()
    fp32, int8 = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.int8.onnx")
    export_graph(FeatureCTC(norm, model), fp32, feature_dim=80, int8_path=int8)
    return acoustic, fp32, int8


def run_pass(engine, batches):
    """Seconds for one pass over all batches, and the outputs."""
    start = time.perf_counter()
    with torch.no_grad():
        outs = [engine(wavs, rel) for wavs, rel in batches]
    return time.perf_counter() - start, outs


def agreement(ref, got):
    """(max |log-prob difference|, share of frames with the same best unit), over valid frames."""
    diff, same, total = 0.0, 0, 0
    for (a, fa), (b, fb) in zip(ref, got):
        assert torch.equal(fa, fb), (fa, fb)
        for i, f in enumerate(fa.tolist()):
            diff = max(diff, (a[i, :f] - b[i, :f]).abs().max().item())
            same += (a[i, :f].argmax(-1) == b[i, :f].argmax(-1)).sum().item()
            total += f
    return diff, same / total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="a trained model folder (default: a random default-size model)")
    p.add_argument("--seconds", type=float, default=120.0, help="audio to transcribe per pass")
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = tempfile.mkdtemp()
    wavs, real = read_audio(args.seconds)
    audio_s = sum(len(w) for w in wavs) / 16000
    if args.model_dir:
        info = export_onnx(args.model_dir, folder)
        acoustic, fp32, int8 = load_model(args.model_dir)[0], info["model"], info["model_int8"]
    else:
        acoustic, fp32, int8 = random_model(folder, wavs)
    buf = io.BytesIO()
    torch.save(acoustic.state_dict(), buf)
    engines = {"pytorch": acoustic, "onnx_fp32": OnnxAcoustic(fp32, acoustic.compute_features, num_threads=1),
               "onnx_int8": OnnxAcoustic(int8, acoustic.compute_features, num_threads=1)}
    batches = batches_of(wavs)
    timed = {**engines, "fbank": lambda wavs, rel: acoustic.compute_features(wavs)}  # the share all three run
    times, outs = {name: [] for name in timed}, {}
    for name, engine in timed.items():  # warm-up: first-call allocations, onnxruntime's kernel choices
        run_pass(engine, batches[:1])
    for _ in range(args.passes):
        for name, engine in timed.items():
            seconds, outs[name] = run_pass(engine, batches)
            times[name].append(seconds)
    res = {"model": args.model_dir or "random default (hparams/model.yaml, 256 units)", "real_speech": real,
           "audio_s": round(audio_s, 1), "utterances": len(wavs), "threads": 1}
    for name in timed:
        res[f"rtf_{name}"] = min(times[name]) / audio_s
    res["speedup_fp32"] = min(times["pytorch"]) / min(times["onnx_fp32"])
    res["speedup_int8"] = min(times["pytorch"]) / min(times["onnx_int8"])
    res["max_abs_diff_fp32"], _ = agreement(outs["pytorch"], outs["onnx_fp32"])
    res["max_abs_diff_int8"], res["int8_same_best_unit"] = agreement(outs["pytorch"], outs["onnx_int8"])
    res.update(pytorch_state_bytes=buf.getbuffer().nbytes, onnx_fp32_bytes=os.path.getsize(fp32),
               onnx_int8_bytes=os.path.getsize(int8))
    print(f"{len(wavs)} utterances, {audio_s:.0f} s of {'speech' if real else 'noise'}, {res['model']}, 1 thread")
    for name in timed:
        print(f"{name:10s} RTF {res[f'rtf_{name}']:.4f} (passes {', '.join(f'{t:.2f}' for t in times[name])} s)")
    print(f"speed-up over PyTorch (whole path): fp32 {res['speedup_fp32']:.2f}x, int8 {res['speedup_int8']:.2f}x; "
          f"max |log-prob difference| fp32 {res['max_abs_diff_fp32']:.1e}, int8 {res['max_abs_diff_int8']:.1e} "
          f"(same best unit on {100 * res['int8_same_best_unit']:.1f}% of frames)")
    print(f"sizes: PyTorch state {res['pytorch_state_bytes'] / 1e6:.2f} MB, "
          f"ONNX fp32 {res['onnx_fp32_bytes'] / 1e6:.2f} MB, int8 {res['onnx_int8_bytes'] / 1e6:.2f} MB")
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
