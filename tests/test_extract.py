"""Extraction: every utterance stored with the model's frame count, rerun is a no-op, ranks agree."""

import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from kd_brain.data import read_csv
from kd_brain.modeldir import load_label_source
from kd_brain.store import IncompatibleStoreError, SoftLabelStore
from tests.conftest import REPO, load_recipe

ARGS = ["--noprogressbar", "--nbest=2", "--beam_size=2"]


def run_extract(exp, out, k=5):
    return load_recipe("extract").main([str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={exp}",
                                        f"--output_folder={out}", f"--k={k}", *ARGS])


@pytest.fixture(scope="module")
def store_dir(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("softlabels")
    run_extract(tiny_teacher, out)
    return out


def test_every_utterance_stored_with_model_frame_count(tiny_teacher, store_dir):
    store = SoftLabelStore(str(store_dir))
    rows = read_csv(tiny_teacher / "data" / "labelled.csv") + read_csv(tiny_teacher / "data" / "unlabelled.csv")
    assert sorted(store) == sorted(r["ID"] for r in rows)
    thp, _, _, _ = load_label_source(str(tiny_teacher / "teacher"))
    for r in rows:
        labels = store[r["ID"]]
        assert labels.indices.shape == labels.log_probs.shape
        assert labels.indices.shape == (thp["model"].output_frames(sf.info(r["wav"]).frames), 5)
        assert torch.all(labels.log_probs[:, :-1] >= labels.log_probs[:, 1:])  # sorted, best first
        assert 1 <= len(store.nbest(r["ID"])) <= 2
    meta = store.meta
    assert meta["k"] == 5 and meta["frame_shift_ms"] == 40.0 and meta["subsampling"] == 4
    assert meta["tokenizer_hash"] and meta["teacher_checkpoint_hash"] and meta["manifest_hash"]


def test_rerun_over_complete_store_does_nothing(tiny_teacher, store_dir):
    before = {p: os.path.getmtime(store_dir / p) for p in os.listdir(store_dir)}
    run_extract(tiny_teacher, store_dir)
    assert {p: os.path.getmtime(store_dir / p) for p in os.listdir(store_dir)} == before


def test_k_beyond_the_units_keeps_all_of_them(tiny_teacher, store_dir, tmp_path, capsys):
    """extract.yaml's k = 40 on a 30-character teacher stores the whole distribution (k = V), said in a line."""
    run_extract(tiny_teacher, tmp_path / "all", k=40)
    assert "k=40 > the teacher's 30 units: the store keeps all 30" in capsys.readouterr().out
    full, top5 = SoftLabelStore(str(tmp_path / "all")), SoftLabelStore(str(store_dir))
    assert full.meta["k"] == 30
    u = next(iter(top5))
    assert full[u].indices.shape[1] == 30 and torch.equal(full[u].indices[:, :5], top5[u].indices)


def test_mismatched_teacher_refused(tiny_teacher, store_dir):
    with pytest.raises(IncompatibleStoreError, match="k"):
        run_extract(tiny_teacher, store_dir, k=4)
    store = SoftLabelStore(str(store_dir))
    with pytest.raises(IncompatibleStoreError, match="tokenizer_hash"):
        store.check_compatible({"tokenizer_hash": "0000"})


def test_two_ranks_write_the_same_records_as_one(tiny_teacher, store_dir, tmp_path):
    out = tmp_path / "two_ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(REPO / "recipes" / "KD-Noise" / "extract.py"), str(REPO / "hparams" / "extract.yaml"),
           f"--exp_folder={tiny_teacher}", f"--output_folder={out}", "--distributed_backend=gloo", "--k=5", *ARGS]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    one, two = SoftLabelStore(str(store_dir)), SoftLabelStore(str(out))
    assert sorted(one) == sorted(two)
    assert len({f for f in os.listdir(out) if f.startswith("shard-r0001")}) == 1
    for u in one:
        assert torch.equal(one[u].indices, two[u].indices), u
        assert torch.equal(one[u].log_probs, two[u].log_probs), u
        # N-best scores are float64 sums over frames: their last bits follow the thread count
        assert [t for t, _ in one.nbest(u)] == [t for t, _ in two.nbest(u)], u
        assert [s for _, s in one.nbest(u)] == pytest.approx([s for _, s in two.nbest(u)], rel=1e-6), u


def test_nonfinite_teacher_output_stops_with_utterance_id(tmp_path):
    """NaN in an utterance's frames stops extraction naming it; NaN in padding is not an error."""
    from types import SimpleNamespace

    import speechbrain as sb

    from kd_brain.extract import ExtractBrain
    from kd_brain.store import SoftLabelWriter, stored_ids

    brain = ExtractBrain(modules={}, hparams={}, run_opts={"device": "cpu"})
    log_probs = torch.randn(3, 10, 6).log_softmax(-1)
    lens = torch.tensor([1.0, 0.6, 0.8])  # 10, 6 and 8 frames
    batch = SimpleNamespace(id=["a", "b", "c"])
    log_probs[1, 8] = float("nan")  # padding of "b"
    brain.writer = SoftLabelWriter(str(tmp_path / "ok"), k=3, vocab_size=6, meta={})
    with brain.writer:
        brain.compute_objectives((log_probs, lens), batch, sb.Stage.TEST)
    assert stored_ids(str(tmp_path / "ok")) == {"a", "b", "c"}
    log_probs[2, 7, 1] = float("inf")  # last real frame of "c"
    brain.writer = SoftLabelWriter(str(tmp_path / "bad"), k=3, vocab_size=6, meta={})
    with brain.writer, pytest.raises(ValueError, match="^c: teacher output has NaN or infinite"):
        brain.compute_objectives((log_probs, lens), batch, sb.Stage.TEST)


def test_real_store_size_benchmark_reencodes_the_stored_top_k(kd_exp):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_real_store", REPO / "bench" / "bench_real_store.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main([str(kd_exp / "softlabels")])
    assert res["k_stored"] == 5 and "bytes_per_frame_k10" not in res  # no more columns than stored
    # the same top-5 without the N-best lists: fewer bytes than the store, far fewer than naive int16 + fp16
    assert 0 < res["bytes_per_frame_k5"] < res["bytes_per_frame_as_stored"]
    assert res["bytes_per_frame_k5"] < res["naive_bytes_per_frame_k5"] == 20.0
