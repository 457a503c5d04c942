"""Contamination: alignment, determinism, SNR, noise counts, held-out pools, bad input."""

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
from speechbrain.lobes.features import Fbank

from kd_brain.noise.contamination import Contaminator, NoiseError, NoisePool, split_noise_pool
from kd_brain.pipeline.seeds import seed_for
from kd_brain.noise.rooms import MeasuredRIRs, RIRError, RoomBank, simulate_room_bank

from tests.conftest import need, write_rows as write_csv

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = {"musicA": 6, "talkA": 5, "fillets-en": 2, "singularity": 2}


def speechlike(n, seed=0):
    """White noise with a syllable-rate envelope: a sharp autocorrelation, like speech's."""
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / SR) ** 2
    return torch.from_numpy((rng.standard_normal(n) * env * 0.1).astype(np.float32))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """Tiny noise manifest (relative paths), a tiny room bank and a measured-style RIR set."""
    d = tmp_path_factory.mktemp("bed")
    (d / "noise").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for src, n in SOURCES.items():
        for i in range(n):
            audio = rng.standard_normal(int(SR * rng.uniform(0.3, 2.0))) * rng.uniform(0.01, 0.3)
            sf.write(d / "noise" / f"{src}_{i}.wav", audio, SR)
            rows.append(dict(ID=f"{src}_{i}", duration=len(audio) / SR, path=f"noise/{src}_{i}.wav",
                             kind="talk" if "talk" in src or "fillets" in src else "music", source=src))
    noise_csv = write_csv(d / "noise" / "noise.csv", rows)
    bank = simulate_room_bank(str(d / "rooms.pt"), n_rooms=6, n_test_rooms=2, sources_per_room=4,
                              rt60_range=(0.2, 0.4), max_order=6, seed=1)
    (d / "rir").mkdir()
    rir_rows = []
    for i in range(3):  # exponential decays with a 50 ms pre-delay, like measured files
        tail = rng.standard_normal(SR // 4) * np.exp(-np.arange(SR // 4) / 800) * 0.3
        rir = np.r_[np.zeros(800), 1.0, tail]
        sf.write(d / "rir" / f"r{i}.flac", rir, SR)
        rir_rows.append(dict(ID=f"r{i}", duration=len(rir) / SR, path=f"rir/r{i}.flac", room=f"room{i % 2}"))
    rir_csv = write_csv(d / "rir" / "rir.csv", rir_rows)
    return dict(dir=d, noise_csv=noise_csv, bank_path=str(d / "rooms.pt"), bank=bank, rir_csv=rir_csv)


def make(bed, rooms="bank", pool="train", **kw):
    rooms = {"bank": bed["bank_path"], "none": None,
             "measured": MeasuredRIRs(bed["rir_csv"]) if rooms == "measured" else None}[rooms]
    return Contaminator.from_files(bed["noise_csv"], rooms, pool=pool, **kw)


def lag(clean, noisy, max_lag=400):
    xc = scipy.signal.correlate(noisy.numpy(), clean.numpy(), mode="full", method="fft")
    mid = len(clean) - 1
    return int(np.argmax(xc[mid - max_lag:mid + max_lag + 1])) - max_lag


@pytest.mark.parametrize("rooms", ["bank", "measured", "none"])
@pytest.mark.parametrize("reverb_speech", [True, False])
def test_length_and_zero_lag(bed, rooms, reverb_speech):
    c = make(bed, rooms, snr_range=(10, 10), reverb_speech=reverb_speech, seed=3)
    fbank = Fbank(n_mels=40)
    for n in (12345, 24000):  # odd and even lengths
        clean = speechlike(n, n)
        for utt in ("a", "b", "c"):
            noisy = c(clean, utt, epoch=0)
            assert noisy.shape == clean.shape
            assert lag(clean, noisy) == 0
            assert fbank(noisy[None]).shape == fbank(clean[None]).shape
    assert c(clean[None], "a").shape == (1, n)  # (1, T) in, (1, T) out


def test_seed_determinism(bed):
    clean = speechlike(16000)
    a, b = make(bed, seed=7), make(bed, seed=7)
    assert torch.equal(a(clean, "u1", 0), b(clean, "u1", 0))
    assert not torch.equal(a(clean, "u1", 0), a(clean, "u1", 1))  # new epoch, new noise
    assert not torch.equal(a(clean, "u1", 0), a(clean, "u2", 0))
    assert not torch.equal(a(clean, "u1", 0), make(bed, seed=8)(clean, "u1", 0))
    a.set_epoch(1)
    assert torch.equal(a(clean, "u1"), b(clean, "u1", 1))
    assert seed_for(7, 1, "u1") == seed_for(7, 1, "u1")


def _power(x):
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return float(np.mean(np.square(x, dtype=np.float64)))


@pytest.mark.parametrize("rooms", ["bank", "measured"])
def test_snr_per_noise_on_mixture(bed, rooms):
    """SNR_i = 10 log10(P(speech after RIR) / P(noise i after RIR and gain)) over the utterance."""
    c = make(bed, rooms, snr_range=(-5, 20), seed=1)
    clean = speechlike(20000)
    for s in range(20):
        noisy, plan = c.contaminate(clean, s)
        mix, parts = c.render(clean, plan, return_components=True)
        assert torch.allclose(parts.sum(0), mix, atol=1e-5) and torch.equal(mix, noisy)
        assert abs(_power(parts[0]) - _power(clean)) / _power(clean) < 1e-3 or noisy.abs().max() >= 0.98
        for i, snr in enumerate(plan["snrs"], 1):
            measured = 10 * np.log10(_power(parts[0]) / _power(parts[i]))
            assert abs(measured - snr) < 0.5, (plan, i, measured)


def test_snr_independent_reconstruction(bed):
    """One noise: rebuild the speech part with scipy, take noise = mixture - speech, check the SNR."""
    c = make(bed, "bank", n_noise_probs=(1,), snr_range=(0, 15), seed=2, max_peak=1e9)
    clean = speechlike(16000)
    for s in range(10):
        noisy, plan = c.contaminate(clean, s)
        rir, peak = c.rooms.rir(plan["speech_rir"])
        speech = scipy.signal.fftconvolve(clean.numpy(), rir.numpy())[peak:peak + len(clean)]
        speech *= np.sqrt(_power(clean) / _power(speech))
        noise = noisy.numpy() - speech
        assert abs(10 * np.log10(_power(speech) / _power(noise)) - plan["snrs"][0]) < 0.5


@pytest.mark.parametrize("probs,allowed", [((1,), {1}), ((0, 1), {2}), ((0, 0, 1), {3}), ((0.5, 0.3, 0.2), {1, 2, 3})])
def test_noise_count_honoured(bed, probs, allowed):
    c = make(bed, n_noise_probs=probs, seed=0)
    seen = set()
    for s in range(60):
        plan = c.plan(8000, s)
        assert len(plan["noise_ids"]) == len(plan["snrs"]) == len(plan["noise_rirs"]) == plan["n_noises"]
        seen.add(plan["n_noises"])
        if plan["n_noises"] <= len(c.noises):
            assert len(set(plan["noise_ids"])) == plan["n_noises"]  # distinct clips
    assert seen == allowed


def test_pools_held_out(bed):
    rows = list(csv.DictReader(open(bed["noise_csv"])))
    pools = split_noise_pool(rows, test_fraction=0.2, seed=0)
    assert pools == split_noise_pool(rows, test_fraction=0.2, seed=0)  # seeded, stable
    train, test, reserved = (set(pools[p]) for p in ("train", "test", "reserved"))
    assert not (train & test) and not (train & reserved) and not (test & reserved)
    assert train | test | reserved == {r["ID"] for r in rows}
    assert reserved == {r["ID"] for r in rows if r["source"] in ("fillets-en", "singularity")}
    assert {r["source"] for r in rows if r["ID"] in test} == {"musicA", "talkA"}
    c = make(bed, pool="train", seed=0)
    assert set(c.noises.ids) == train
    test_rooms = set(bed["bank"].room_ids("test"))
    used_noises, used_rooms = set(), set()
    for s in range(300):
        plan = c.plan(4000, s)
        used_noises.update(plan["noise_ids"])
        used_rooms.add(plan["room"])
        assert all(r.split("/")[0] == plan["room"] for r in [plan["speech_rir"]] + plan["noise_rirs"])
    assert used_noises <= train and not used_rooms & test_rooms
    assert used_rooms == set(bed["bank"].room_ids("train"))
    assert {p["room"] for p in (make(bed, pool="test").plan(4000, s) for s in range(50))} <= test_rooms


def test_room_bank_contents(bed):
    bank = RoomBank(bed["bank_path"])
    assert len(bank.room_ids("train")) == 4 and len(bank.room_ids("test")) == 2
    for r in bank.rooms.values():
        assert len(r["rirs"]) == 4 and 0.2 <= r["rt60"] <= 0.4
        for rir, peak in zip(r["rirs"], r["peaks"]):
            assert int(rir.abs().argmax()) == peak <= 40
    # same options: loaded, not re-simulated
    again = simulate_room_bank(bed["bank_path"], n_rooms=6, n_test_rooms=2, sources_per_room=4,
                               rt60_range=(0.2, 0.4), max_order=6, seed=1)
    assert torch.equal(again.rooms["sim0000"]["rirs"][0], bank.rooms["sim0000"]["rirs"][0])


def test_room_bank_workers_after_openmp_match_one_process(tmp_path):
    """Worker processes (forkserver) after the parent ran torch's OpenMP threads: no crash, same rooms."""
    torch.set_num_threads(2)
    (torch.randn(256, 256) @ torch.randn(256, 256)).sum()  # OpenMP threads alive in the parent
    opts = dict(n_rooms=4, n_test_rooms=1, sources_per_room=2, rt60_range=(0.2, 0.4), max_order=3, seed=5)
    one = simulate_room_bank(str(tmp_path / "one.pt"), num_workers=1, **opts)
    two = simulate_room_bank(str(tmp_path / "two.pt"), num_workers=2, **opts)
    assert all(torch.equal(a, b) for r in one.rooms for a, b in zip(one.rooms[r]["rirs"], two.rooms[r]["rirs"]))


def test_noise_loops_short_clips(bed):
    pool = NoisePool.from_csv(bed["noise_csv"], ids=["musicA_0"])
    clip = pool.audio[0]
    seg = pool.segment(0, len(clip) - 10, 3 * len(clip))
    assert len(seg) == 3 * len(clip) and np.allclose(seg[10:10 + len(clip)], clip / 32768.0)


def test_cache_dir_same_audio(bed, tmp_path):
    a = NoisePool.from_csv(bed["noise_csv"], ids=["talkA_1"])
    b = NoisePool.from_csv(bed["noise_csv"], ids=["talkA_1"], cache_dir=str(tmp_path))
    c = NoisePool.from_csv(bed["noise_csv"], ids=["talkA_1"], cache_dir=str(tmp_path))  # from the cache
    assert np.array_equal(a.audio[0], b.audio[0]) and np.array_equal(a.audio[0], c.audio[0])


# ---- bad input: clear errors naming the file -----------------------------------------------

def _noise_pool(tmp_path, audio=None, sr=SR, raw=None, **kw):
    p = tmp_path / "bad.wav"
    if raw is not None:
        p.write_bytes(raw)
    elif audio is not None:
        sf.write(p, audio, sr)
    return NoisePool([dict(ID="bad", path="bad.wav")], root=str(tmp_path), **kw)


def test_bad_noise_inputs(tmp_path):
    with pytest.raises(NoiseError, match="bad.wav.*cannot read"):
        _noise_pool(tmp_path, raw=b"RIFF garbage, not audio")
    (tmp_path / "bad.wav").unlink()
    with pytest.raises(NoiseError, match="bad.wav.*cannot read"):
        _noise_pool(tmp_path)  # missing file
    with pytest.raises(NoiseError, match="bad.wav.*5.0 ms.*min_duration_s"):
        _noise_pool(tmp_path, np.random.randn(80) * 0.1)
    with pytest.raises(NoiseError, match="bad.wav.*8000 Hz"):
        _noise_pool(tmp_path, np.random.randn(8000) * 0.1, sr=8000)
    assert len(_noise_pool(tmp_path, np.random.randn(8000) * 0.1, sr=8000, resample=True).audio[0]) == 16000
    with pytest.raises(NoiseError, match="bad.wav.*silent"):
        _noise_pool(tmp_path, np.zeros(8000))


def _rirs(tmp_path, audio=None, sr=SR, raw=None):
    p = tmp_path / "rr.flac"
    if raw is not None:
        p.write_bytes(raw)
    else:
        sf.write(p, audio, sr)
    write_csv(tmp_path / "rir.csv", [dict(ID="rr", duration=1, path=str(p), room="x")])
    return MeasuredRIRs(str(tmp_path / "rir.csv"))


def test_bad_rir_inputs(tmp_path):
    decay = np.exp(-np.arange(4000) / 500)
    with pytest.raises(RIRError, match="rr.flac.*cannot read"):
        _rirs(tmp_path, raw=b"not flac")
    with pytest.raises(RIRError, match="rr.flac.*peak at 0.500 s.*max_onset_s"):
        _rirs(tmp_path, np.r_[np.zeros(8000), decay * 0.9])
    with pytest.raises(RIRError, match="rr.flac.*8000 Hz"):
        _rirs(tmp_path, decay * 0.9, sr=8000)
    with pytest.raises(RIRError, match="rr.flac.*all zeros"):
        _rirs(tmp_path, np.zeros(100))
    rir, peak = _rirs(tmp_path, np.r_[np.zeros(1600), decay * 0.9]).rir("rr")  # 100 ms pre-delay: trimmed
    assert peak == 40 and len(rir) == 40 + 4000


def test_bad_settings(bed):
    with pytest.raises(NoiseError, match="n_noise_probs"):
        make(bed, n_noise_probs=(-1, 2))
    with pytest.raises(NoiseError, match="reserved_sources.*nope"):
        make(bed, reserved_sources=("nope",))
    with pytest.raises(RIRError, match="4 positions"):
        make(bed, n_noise_probs=(0, 0, 0, 0, 1)).plan(1000, 0)


def test_shared_measured_rirs_all_accepted_and_aligned():
    need((SHARED / "rir" / "rir.csv").is_file(), f"{SHARED} absent (the shared data beside the checkout)")
    rirs = MeasuredRIRs(str(SHARED / "rir" / "rir.csv"))
    assert len(rirs.rirs) == sum(1 for _ in open(SHARED / "rir" / "rir.csv")) - 1
    rir, peak = rirs.rir("sb-tests_rir1_ch0")  # the latest peak of the set (137 ms)
    clean = speechlike(16000)
    rows = list(csv.DictReader(open(SHARED / "noise" / "noise.csv")))
    assert split_noise_pool(rows)["reserved"]  # the default reserved sources exist
    c = Contaminator(NoisePool.from_csv(str(SHARED / "noise" / "noise.csv"), ids=["fillets-en_000"]),
                     rirs, snr_range=(10, 10), seed=0)
    plan = c.plan(len(clean), 0)
    plan["speech_rir"] = "sb-tests_rir1_ch0"
    assert lag(clean, c.render(clean, plan)) == 0


def test_clean_share(bed):
    """clean_share: about that share of examples comes back untouched; 0 keeps the default draws."""
    clean = speechlike(8000)
    c = make(bed, "bank", seed=3, clean_share=0.5)
    plans = [c.plan(8000, s) for s in range(200)]
    n_clean = sum(p["n_noises"] == 0 for p in plans)
    assert 70 <= n_clean <= 130, n_clean
    s = next(i for i, p in enumerate(plans) if p["n_noises"] == 0)
    assert torch.equal(c.contaminate(clean, s)[0], clean)
    t = next(i for i, p in enumerate(plans) if p["n_noises"] > 0)
    assert not torch.equal(c.contaminate(clean, t)[0], clean)
    default, zero = make(bed, "bank", seed=3), make(bed, "bank", seed=3, clean_share=0.0)
    assert [default.plan(8000, s) for s in range(5)] == [zero.plan(8000, s) for s in range(5)]
    with pytest.raises(NoiseError, match="clean_share"):
        make(bed, "bank", clean_share=1.0)
