"""Extraction: every utterance stored with the model's frame count, rerun is a no-op, ranks agree."""

import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from kd_brain.data.prepare import read_csv
from kd_brain.pipeline.modeldir import load_label_source
from kd_brain.store import IncompatibleStoreError, SoftLabelStore
from tests.conftest import REPO, load_recipe

ARGS = ["--noprogressbar", "--nbest=2", "--beam_size=2"]


def run_extract(exp, out, k=5, *extra):
    return load_recipe("extract").main([str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={exp}",
                                        f"--output_folder={out}", f"--k={k}", *ARGS, *extra])


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


def test_two_ranks_write_the_same_records_as_one(tiny_teacher, store_dir, side_stores, tmp_path):
    """Also the sampled store and the side arrays, written in the same pass."""
    out = tmp_path / "two_ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(REPO / "recipes" / "KD-Noise" / "extract.py"), str(REPO / "hparams" / "extract.yaml"),
           f"--exp_folder={tiny_teacher}", f"--output_folder={out}", "--distributed_backend=gloo", "--k=5", *ARGS,
           *SIDE, f"--sampled_folder={tmp_path / 'two_ranks_sampled'}"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    one, two = SoftLabelStore(str(store_dir)), SoftLabelStore(str(out))
    one_s, two_s = SoftLabelStore(str(side_stores / "sampled")), SoftLabelStore(str(tmp_path / "two_ranks_sampled"))
    one_side = SoftLabelStore(str(side_stores / "topk"))
    assert sorted(one) == sorted(two) == sorted(two_s)
    assert len({f for f in os.listdir(out) if f.startswith("shard-r0001")}) == 1
    for u in one:
        assert torch.equal(one[u].indices, two[u].indices), u
        assert torch.equal(one[u].log_probs, two[u].log_probs), u
        assert torch.equal(one_s[u].indices, two_s[u].indices), u
        assert torch.equal(one_s.side(u), two_s.side(u)) and torch.equal(one_side.side(u), two.side(u)), u
        # N-best scores are float64 sums over frames: their last bits follow the thread count
        assert [t for t, _ in one.nbest(u)] == [t for t, _ in two.nbest(u)], u
        assert [s for _, s in one.nbest(u)] == pytest.approx([s for _, s in two.nbest(u)], rel=1e-6), u


def test_nonfinite_teacher_output_stops_with_utterance_id(tmp_path):
    """NaN in an utterance's frames stops extraction naming it; NaN in padding is not an error."""
    from types import SimpleNamespace

    import speechbrain as sb

    from kd_brain.brains.extract import ExtractBrain
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
    # the teacher re-run for the target ablations' costs: side arrays (3 temperatures, 6 B raw) and sampled stores
    assert res["side_frames"] > 0 and 0 < res["side_bytes_per_frame_k20"] < 7
    assert 0 < res["side_bytes_per_frame_k40"] < 7
    assert 0 < res["sampled_side_bytes_per_frame_K20"] < res["sampled_bytes_per_frame_K20"]
    assert 1 <= res["sampled_distinct_units_per_frame_K40"] <= 30


# ---------------------------------------------------------------- targets tail and sampled

SIDE = ["--side_temperatures=[1.0,2.0,4.0]", "--sampled_k=12"]


@pytest.fixture(scope="module")
def side_stores(tiny_teacher, tmp_path_factory):
    """One teacher pass writes a top-k store with side arrays and a sampled store; then again in batches of 3."""
    out = tmp_path_factory.mktemp("side_stores")
    run_extract(tiny_teacher, out / "topk", 5, *SIDE, f"--sampled_folder={out / 'sampled'}")
    run_extract(tiny_teacher, out / "topk_b3", 5, *SIDE, f"--sampled_folder={out / 'sampled_b3'}", "--batch_size=3")
    return out


def test_extraction_writes_side_arrays_and_a_sampled_store(tiny_teacher, store_dir, side_stores):
    topk, sampled = SoftLabelStore(str(side_stores / "topk")), SoftLabelStore(str(side_stores / "sampled"))
    plain = SoftLabelStore(str(store_dir))
    assert topk.meta["side_temperatures"] == [1.0, 2.0, 4.0] and topk.target == "topk"
    assert sampled.meta["target"] == "sampled" and sampled.meta["k"] == 12 and sampled.meta["sample_seed"] == 0
    for key in ("teacher_checkpoint_hash", "tokenizer_hash", "manifest_hash"):  # the same teacher pass
        assert sampled.meta[key] == topk.meta[key] == plain.meta[key]
    assert sorted(topk) == sorted(sampled) == sorted(plain)
    for u in plain:
        assert torch.equal(topk[u].indices, plain[u].indices) and torch.equal(topk[u].log_probs, plain[u].log_probs)
        frames = len(plain[u].indices)
        side = topk.side(u)
        assert side.shape == (frames, 3) and torch.isfinite(side).all()
        # top-5 plus the tail beyond it is all the tempered mass: the sampled store's log Z_T, computed apart
        # (stored top-5 log-probs within 0.05 nats of the exact ones, side values within 1/256)
        temps = torch.tensor([1.0, 2.0, 4.0])
        z = torch.logaddexp(torch.logsumexp(topk[u].log_probs[:, :, None] / temps, 1), side)
        assert (z - sampled.side(u)).abs().max() < 0.06
        draws = sampled[u]
        assert draws.indices.shape == (frames, 12) and sampled.side(u).shape == (frames, 3)
        assert sampled.side(u)[:, 0].abs().max() < 1e-3  # log Z_1 = 0
        assert torch.all(draws.log_probs[:, :-1] >= draws.log_probs[:, 1:])
    assert topk.nbest(u) and not sampled.nbest(u)  # N-best lists go to the top-k store only


def test_sampled_draws_survive_a_resume_and_differ_between_utterances(tiny_teacher, side_stores, tmp_path):
    """A rerun whose top-k store is complete and whose sampled store is gone (killed before it finalized):
    the very draws of one uninterrupted run; and the draws are per utterance."""
    args = [*SIDE, f"--sampled_folder={tmp_path / 'sampled'}"]
    run_extract(tiny_teacher, tmp_path / "topk", 5, *args)
    shutil.rmtree(tmp_path / "sampled")
    before = {p: os.path.getmtime(tmp_path / "topk" / p) for p in os.listdir(tmp_path / "topk")}
    run_extract(tiny_teacher, tmp_path / "topk", 5, *args)
    assert {p: os.path.getmtime(tmp_path / "topk" / p) for p in os.listdir(tmp_path / "topk")} == before
    resumed, once = SoftLabelStore(str(tmp_path / "sampled")), SoftLabelStore(str(side_stores / "sampled"))
    assert sorted(resumed) == sorted(once)
    for u in once:
        assert torch.equal(resumed[u].indices, once[u].indices), u
    first = [once[u].indices[0] for u in once]  # the first frames (mostly silence) still differ in their draws
    assert len({tuple(f.tolist()) for f in first}) > len(first) // 2


def test_sampled_draws_follow_the_teacher_not_the_batch_size(side_stores):
    """Batches of 16 and of 3. The teacher's own outputs depend on the padding (the top-5 store differs in ~10%
    of its frames here; hence plan_batches); where its stored row is unchanged, so are the draws, but for
    float noise at a CDF boundary. Exact identity under any batching, for fixed teacher outputs:
    test_sampled_writer_gets_the_same_draws_in_any_batch."""
    a, b = SoftLabelStore(str(side_stores / "sampled")), SoftLabelStore(str(side_stores / "sampled_b3"))
    ta, tb = SoftLabelStore(str(side_stores / "topk")), SoftLabelStore(str(side_stores / "topk_b3"))
    same_rows = same_draws = 0
    for u in a:
        unchanged = ((ta[u].indices == tb[u].indices).all(1) & (ta[u].log_probs == tb[u].log_probs).all(1)
                     & ((ta.side(u) - tb.side(u)).abs() < 1e-3).all(1))
        same_rows += int(unchanged.sum())
        same_draws += int((unchanged & (a[u].indices == b[u].indices).all(1)).sum())
    assert same_rows > 1000 and same_draws >= 0.99 * same_rows


def test_sampled_store_needs_side_temperatures(tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match="sampled_k > 0 needs side_temperatures"):
        run_extract(tiny_teacher, tmp_path / "x", 5, "--sampled_k=12", f"--sampled_folder={tmp_path / 'y'}")


def student_hparams(exp, *extra):
    from hyperpyyaml import load_hyperpyyaml
    import speechbrain as sb

    from tests.conftest import student_argv

    argv = student_argv(exp, "--contaminate=False", *extra)
    if any(a.startswith("--k=") for a in extra):  # student_argv sets --k=5
        argv.remove("--k=5")
    hparams_file, _, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as f:
        return load_hyperpyyaml(f, overrides)


def student_batch_loss(exp, *extra):
    """The frame criterion's training loss on one batch of the student's data (train.py's student_data)."""
    import speechbrain as sb

    from tests.conftest import student_brain

    hp = student_hparams(exp, *extra)
    brain, train_set = student_brain(hp)
    batch = next(iter(sb.dataio.dataloader.make_dataloader(train_set, batch_size=4)))
    with torch.no_grad():
        predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    return brain.compute_objectives(predictions, batch, sb.Stage.TRAIN), batch, hp, predictions


def test_student_reads_the_tail_and_sampled_targets(tiny_teacher, side_stores):
    from kd_brain.kd.losses import FrameKD

    topk, batch, hp, (log_probs, lens) = student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'topk'}")
    assert batch.kd_side.data.shape[-1] == 3  # the store has a side array: the batch carries it
    tail, batch, hp, (log_probs, lens) = student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'topk'}",
                                                            "--target=tail")
    assert torch.isfinite(tail) and tail.item() > 0 and tail.item() != pytest.approx(topk.item(), rel=1e-3)
    # _loss_frame hands the side array over: the same number as FrameKD on the batch's T = 2 column
    kd = FrameKD(temperature=2.0, k=5, target="tail")
    kd.check_store(SoftLabelStore(str(side_stores / "topk")).meta, "x")
    n = min(log_probs.shape[1], batch.kd_idx.data.shape[1])
    want = kd(log_probs[:, :n], batch.kd_idx.lengths * batch.kd_idx.data.shape[1] / n, batch.kd_idx.data[:, :n],
              batch.kd_logp.data[:, :n], side=batch.kd_side.data[:, :n])
    assert tail.item() == pytest.approx(want.item(), rel=1e-5)
    sampled, batch, _, _ = student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'sampled'}",
                                              "--target=sampled", "--k=12", "--blank_weight=0.5")
    assert torch.isfinite(sampled) and batch.kd_idx.data.shape[-1] == 12


def test_student_refuses_targets_its_store_cannot_serve(tiny_teacher, store_dir, side_stores):
    with pytest.raises(IncompatibleStoreError, match=f"target=tail needs a side array, and {store_dir} has none"):
        student_batch_loss(tiny_teacher, f"--store_dir={store_dir}", "--target=tail")
    with pytest.raises(IncompatibleStoreError, match="target=sampled reads all K draws.*k=5 but .* holds K=12"):
        student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'sampled'}", "--target=sampled")
    with pytest.raises(IncompatibleStoreError, match="temperature=3.0 is not in .*topk's side_temperatures"):
        student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'topk'}", "--target=tail", "--temperature=3.0")
    with pytest.raises(IncompatibleStoreError, match="target=topk but .*sampled is a sampled store"):
        student_batch_loss(tiny_teacher, f"--store_dir={side_stores / 'sampled'}", "--k=12")


def test_sampled_writer_gets_the_same_draws_in_any_batch(tmp_path):
    """ExtractBrain level: one utterance batched with different neighbours (so other padding) draws the same."""
    from types import SimpleNamespace

    import speechbrain as sb

    from kd_brain.brains.extract import ExtractBrain
    from kd_brain.store import SoftLabelWriter, merge_index

    g = torch.Generator().manual_seed(0)
    utts = {u: torch.randn(n, 6, generator=g).mul(3).log_softmax(-1) for u, n in [("a", 9), ("b", 4), ("c", 7)]}
    brain = ExtractBrain(modules={}, hparams={}, run_opts={"device": "cpu"})
    stores = []
    for name, batches in [("one", [["a", "b", "c"]]), ("two", [["b"], ["c", "a"]])]:
        brain.writer = SoftLabelWriter(str(tmp_path / name), k=3, vocab_size=6, meta={}, side_temperatures=[2.0])
        brain.sampled_writer = SoftLabelWriter(str(tmp_path / f"{name}_s"), k=8, vocab_size=6, meta={},
                                               target="sampled", side_temperatures=[2.0])
        with brain.writer, brain.sampled_writer:
            for ids in batches:
                longest = max(len(utts[u]) for u in ids)
                lp = torch.zeros(len(ids), longest, 6).log_softmax(-1)
                for i, u in enumerate(ids):
                    lp[i, : len(utts[u])] = utts[u]
                lens = torch.tensor([len(utts[u]) / longest for u in ids])
                brain.compute_objectives((lp, lens), SimpleNamespace(id=ids), sb.Stage.TEST)
        merge_index(str(tmp_path / name)), merge_index(str(tmp_path / f"{name}_s"))
        stores.append([SoftLabelStore(str(tmp_path / name)), SoftLabelStore(str(tmp_path / f"{name}_s"))])
    (one, one_s), (two, two_s) = stores
    for u in utts:
        assert torch.equal(one_s[u].indices, two_s[u].indices) and torch.equal(one_s[u].log_probs, two_s[u].log_probs)
        assert torch.equal(one_s.side(u), two_s.side(u)) and torch.equal(one.side(u), two.side(u))
    assert not torch.equal(one_s["a"].indices[:4], one_s["b"].indices)
