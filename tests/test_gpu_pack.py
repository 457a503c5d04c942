"""bench/gpu_pack.sh and bench/gpu_check.sh: the GPU check runs on a bare machine from the pack alone.

The default suite checks the pack's data slice (bench/gpu_pack_data.py) and that gpu_check.sh names
what is missing. ``-m slow`` simulates the bare GPU machine on this CPU, end to end:

1. the pack built for this Python (``PACK_PYTHON=3.11 bash bench/gpu_pack.sh``: the same pinned list
   as the GPU machine's CPython 3.12 pack, other wheel tags);
2. a fresh virtual environment without system site-packages holding only what the GPU machine has:
   torch 2.11.0 (PyPI's CUDA build, which runs on a CPU, so the pack's torchaudio is tried against the
   same torch), numpy, scipy, sentencepiece, onnx, onnxruntime, h5py, matplotlib, tqdm, pytest;
3. ``bash bench/gpu_check.sh --device=cpu --sizes=tiny`` with that environment's python3 first on
   PATH: it installs the pack's wheels with no index and runs the whole chain on the pack's data.

It needs the package index (steps 1-2, ~5 GB for torch's CUDA build) and ../shared/data; about 15
minutes on 2 cores once the environment exists. ``GPU_VENV=/tmp/gpu_venv_test`` keeps the
environment there and reuses it next time:

    GPU_VENV=/tmp/gpu_venv_test nice -n 19 python3 -m pytest -m slow tests/test_gpu_pack.py -s
"""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, need

# The GPU machine's own packages (bench/gpu_check.sh's header); torch at its version there
GPU_MACHINE = ["torch==2.11.0", "numpy", "scipy", "sentencepiece", "onnx", "onnxruntime", "h5py", "matplotlib",
               "tqdm", "pytest"]
# What the pack supplies: none of it may be in the simulated machine before gpu_check.sh runs
PACKED_MODULES = ["speechbrain", "hyperpyyaml", "jiwer", "soundfile", "pyroomacoustics", "zstandard",
                  "flashlight.lib.text", "kaldialign", "torchaudio", "ruamel.yaml", "yaml"]


def lines(path):
    return path.read_text().splitlines()


def test_data_slice_keeps_the_layout_whole_speakers_and_readable_audio(tmp_path):
    need((SHARED / "speech" / "speechocean762").is_dir(), f"{SHARED} not present (the shared data beside the checkout)")
    out = tmp_path / "data"
    res = subprocess.run([sys.executable, "bench/gpu_pack_data.py", str(SHARED), str(out), "--train-every", "40",
                          "--test-every", "50", "--noise-per-source", "1", "--rirs-per-room", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary == json.loads((out / "slice.json").read_text())
    speakers = {}
    for split in ("train", "test"):
        kaldi = out / "speech" / "speechocean762" / split
        utt2spk = dict(line.split() for line in lines(kaldi / "utt2spk"))
        speakers[split] = set(utt2spk.values())
        assert len(speakers[split]) == summary["speech"][split]["speakers"] == len(lines(kaldi / "spk2gender"))
        # whole speakers: every utterance the bed has for a kept speaker
        full = dict(line.split() for line in lines(SHARED / "speech" / "speechocean762" / split / "utt2spk"))
        assert sorted(utt2spk) == sorted(u for u, s in full.items() if s in speakers[split])
        assert {line.split()[0] for line in lines(kaldi / "text")} == set(utt2spk)
        for line in lines(kaldi / "wav.scp"):
            rel = line.split()[1]
            assert (out / "speech" / "speechocean762" / rel).read_bytes() == \
                (SHARED / "speech" / "speechocean762" / rel).read_bytes()
    assert not speakers["train"] & speakers["test"]
    for manifest, group in (("noise/noise.csv", "source"), ("rir/rir.csv", "room")):
        with open(out / manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        with open(SHARED / manifest, newline="") as f:
            groups = {r[group] for r in csv.DictReader(f)}
        assert {r[group] for r in rows} == groups and len(rows) == len(groups)  # one of each, reserved included
        assert all((out / r["path"]).is_file() for r in rows)


def test_check_names_a_missing_pack_and_a_pack_of_another_python(tmp_path):
    res = subprocess.run(["bash", "bench/gpu_check.sh", "--device=cpu", "--pack", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "PACK.json not found" in res.stderr and "bench/gpu_pack.sh" in res.stderr
    (tmp_path / "PACK.json").write_text(json.dumps({"python": "2.7"}))
    res = subprocess.run(["bash", "bench/gpu_check.sh", "--device=cpu", "--pack", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "PACK_PYTHON=" in res.stderr, res.stderr


def test_every_process_that_used_cuda_records_its_peak_and_the_machines_sitecustomize_still_runs(tmp_path):
    """bench/gpu_site/sitecustomize.py, with a stand-in torch (this machine has no GPU)."""
    other = tmp_path / "machine"
    other.mkdir()
    (other / "sitecustomize.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('yes')\n")
    fake = ("import sys, types; t = types.ModuleType('torch'); c = types.SimpleNamespace("
            "is_initialized=lambda: {used}, device_count=lambda: 1, max_memory_allocated=lambda i: 3 * 2**30, "
            "max_memory_reserved=lambda i: 4 * 2**30); t.cuda = c; sys.modules['torch'] = t")
    stats = tmp_path / "gpu.jsonl"
    for used in (True, False):
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'bench' / 'gpu_site'}{os.pathsep}{other}", KD_GPU_STATS=str(stats))
        subprocess.run([sys.executable, "-c", fake.format(used=used), "stage", "--x=1"], check=True, env=env)
    assert (tmp_path / "ran").read_text() == "yes"
    records = [json.loads(line) for line in lines(stats)]  # the process that never used CUDA wrote nothing
    assert [(r["argv"][1:], r["devices"]) for r in records] == [
        (["stage", "--x=1"], {"0": {"max_allocated": 3 * 2**30, "max_reserved": 4 * 2**30}})]


def test_wheels_unpacked_without_pip_import_as_pip_installs_them(tmp_path):
    """bench/gpu_install.py's fallback for a machine without pip, on two small wheels (one with a .data folder)."""
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "zz_packed_a-1.0-py3-none-any.whl", "w") as z:
        z.writestr("zz_packed_a/__init__.py", "X = 1\n")
        z.writestr("zz_packed_a-1.0.dist-info/METADATA", "Name: zz-packed-a\nVersion: 1.0\n")
    with zipfile.ZipFile(wheels / "zz_packed_b-2.0-py3-none-any.whl", "w") as z:
        z.writestr("zz_packed_b-2.0.data/purelib/zz_packed_b.py", "Y = 2\n")
        z.writestr("zz_packed_b-2.0.data/scripts/zz-b", "#!/bin/sh\n")
        z.writestr("zz_packed_b-2.0.dist-info/METADATA", "Name: zz-packed-b\nVersion: 2.0\n")
    with zipfile.ZipFile(wheels / "pytest-0.0-py3-none-any.whl", "w") as z:  # this Python has it: left out
        z.writestr("pytest/__init__.py", "raise ImportError('shadowed')\n")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "bench/gpu_install.py", str(wheels), str(site), "--no-pip"], cwd=REPO,
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stderr
    assert "has pytest" in res.stdout and "installing 2 wheels" in res.stdout
    assert sorted(p.name for p in site.iterdir()) == [".installed", "zz_packed_a", "zz_packed_a-1.0.dist-info",
                                                     "zz_packed_b-2.0.dist-info", "zz_packed_b.py"]
    res = subprocess.run([sys.executable, "bench/gpu_install.py", str(wheels), str(site), "--no-pip"], cwd=REPO,
                         capture_output=True, text=True)
    assert "already in" in res.stdout


def make_bare_venv(venv):
    """A virtual environment with only the GPU machine's packages (made once; kept when GPU_VENV names it)."""
    python = venv / "bin" / "python3"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *GPU_MACHINE], check=True)
    return python


@pytest.mark.slow
def test_gpu_check_runs_on_a_bare_machine_from_the_pack_alone(tmp_path):
    need(SHARED.is_dir(), f"{SHARED} not present (the pack is cut from it)")
    pyv = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pack = tmp_path / "pack"
    subprocess.run(["bash", "bench/gpu_pack.sh"], cwd=REPO, check=True,
                   env=dict(os.environ, PACK_PYTHON=pyv, PACK_DIR=str(pack)))
    python = make_bare_venv(Path(os.environ.get("GPU_VENV") or tmp_path / "venv"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    for module in PACKED_MODULES:  # the simulated machine lacks them until the pack is installed
        res = subprocess.run([str(python), "-c", f"import {module}"], env=env, capture_output=True, cwd=tmp_path)
        assert res.returncode != 0, f"{python} already has {module}: not a bare machine"
    env["GPU_SITE"] = str(tmp_path / "site")  # a fresh install, not one left in build/ by an earlier run
    exp = tmp_path / "exp"
    t0 = time.time()
    res = subprocess.run(["bash", "bench/gpu_check.sh", "--device=cpu", "--sizes=tiny", "--pack", str(pack),
                          "--exp", str(exp)], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\nsimulated bare machine: gpu_check.sh --device=cpu --sizes=tiny in {wall:.0f} s\n{res.stdout[-8000:]}")
    assert out["device"] == "cpu" and out["sizes"] == "tiny"
    assert list(out["stages"]) == ["prepare", "teacher", "teacher_seq", "extract", "student", "student_seq",
                                   "multicondition", "pseudo_labels", "pseudo_label"]
    assert all(s["x_realtime"] and s["x_realtime"] > 0 for s in out["stages"].values())
    assert out["peak_gpu_gib"] is None  # no process used CUDA
    assert set(out["wer"]) == {"teacher", "teacher_seq", "student", "student_seq", "multicondition", "pseudo_label"}
    assert all(c in w for w in out["wer"].values() for c in ("clean", "noisy_sim", "rerecorded"))
    assert (exp / "gpu_check.json").read_text().strip() == json.dumps(out)
    # the stages read the pack's copy, not ../shared
    prepare = json.loads((exp / "stages" / "prepare.done").read_text())["command"]
    assert f"--corpus_dir={pack}/data/speech/speechocean762" in prepare and f"--noise_csv={pack}/data/noise" in prepare
