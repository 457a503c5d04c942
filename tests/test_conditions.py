"""Test conditions: written once, held-out pools, manifests that reproduce the audio, resume."""

import csv
import os

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from kd_brain.noise.conditions import FIELDS, PlaybackChain, write_conditions
from kd_brain.noise.contamination import Contaminator, NoisePool, split_noise_pool
from kd_brain.noise.rooms import MeasuredRIRs, RoomBank, simulate_room_bank

from tests.conftest import write_rows as write_csv

SR = 16000


def read(path):
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    rng = np.random.default_rng(0)
    for sub in ("noise", "rir", "speech"):
        (d / sub).mkdir()
    noise_rows = []
    for src, n in {"musicA": 5, "talkA": 5, "fillets-en": 2, "singularity": 2}.items():
        for i in range(n):
            sf.write(d / "noise" / f"{src}{i}.wav", rng.standard_normal(SR) * 0.1, SR)
            noise_rows.append(dict(ID=f"{src}{i}", duration=1.0, path=f"noise/{src}{i}.wav", kind="music", source=src))
    rir_rows = []
    for i in range(4):
        rir = np.r_[np.zeros(300 * i), 1.0, rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300) * 0.3]
        sf.write(d / "rir" / f"r{i}.flac", rir, SR)
        rir_rows.append(dict(ID=f"r{i}", duration=0.1, path=f"rir/r{i}.flac", room=f"room{i // 2}"))
    test_rows = []
    for i in range(9):  # u0-u4 test, d5-d8 dev
        n = int(SR * rng.uniform(0.5, 1.2))
        audio = rng.standard_normal(n) * 0.1 * (0.5 + 0.5 * np.sin(np.arange(n) / 600) ** 2)
        utt = f"u{i}" if i < 5 else f"d{i}"
        sf.write(d / "speech" / f"{utt}.wav", audio, SR, subtype="PCM_16")
        test_rows.append(dict(ID=utt, duration=n / SR, wav=f"speech/{utt}.wav", spk_id=f"s{i % 3}", wrd="HELLO"))
    bed = dict(test_csv=write_csv(d / "test.csv", test_rows[:5]), dev_csv=write_csv(d / "dev.csv", test_rows[5:]),
               noise_csv=write_csv(d / "noise" / "noise.csv", noise_rows),
               rir_csv=write_csv(d / "rir" / "rir.csv", rir_rows), room_bank=str(d / "rooms.pt"), dir=d)
    simulate_room_bank(bed["room_bank"], n_rooms=5, n_test_rooms=2, sources_per_room=4, rt60_range=(0.2, 0.3),
                       max_order=5, seed=0)
    bed["out"] = str(d / "conditions")
    # the test manifest's paths are relative to its own folder (not the working directory)
    bed["paths"] = write_conditions(bed["test_csv"], bed["out"], bed["noise_csv"], bed["room_bank"], bed["rir_csv"],
                                    dev_csv=bed["dev_csv"])
    return bed


def test_manifests_and_pools(bed):
    rows = {name: read(p) for name, p in bed["paths"].items()}
    assert set(rows) == {"clean", "noisy_sim", "rerecorded", "dev_noisy"}
    pools = split_noise_pool(read(bed["noise_csv"]))
    test_rooms = set(RoomBank(bed["room_bank"]).room_ids("test"))
    rir_ids = {r["ID"] for r in read(bed["rir_csv"])}
    for name, rs in rows.items():
        ids = [f"d{i}" for i in range(5, 9)] if name == "dev_noisy" else [f"u{i}" for i in range(5)]
        assert list(rs[0]) == FIELDS and [r["ID"] for r in rs] == ids
        for r in rs:
            clean = sf.read(os.path.join(bed["dir"], "speech", f"{r['ID']}.wav"))[0]
            audio = sf.read(r["wav"])[0]
            assert len(audio) == len(clean) and r["condition"] == name
            if name == "clean":
                assert np.array_equal(audio, clean) and r["noise_ids"] == ""
                continue
            ids = r["noise_ids"].split(";")
            assert len(ids) == int(r["n_noises"]) == len(r["snrs"].split(";")) == len(r["noise_rirs"].split(";"))
            if name == "noisy_sim":
                assert set(ids) <= set(pools["test"]) and r["room"] in test_rooms
            elif name == "dev_noisy":  # the training pool and rooms: nothing a test condition holds out
                assert set(ids) <= set(pools["train"]) and r["room"] in RoomBank(bed["room_bank"]).room_ids("train")
                assert not {r["speech_rir"], *r["noise_rirs"].split(";")} & rir_ids
            else:
                assert set(ids) <= set(pools["reserved"]) and r["playback"] == "simulated"
                assert {r["speech_rir"], *r["noise_rirs"].split(";")} <= rir_ids


def test_manifest_reproduces_audio(bed):
    """The recorded seed and draws rebuild the written audio (to 16-bit precision)."""
    c = Contaminator.from_files(bed["noise_csv"], bed["room_bank"], pool="test")
    for r in read(bed["paths"]["noisy_sim"]):
        clean = torch.from_numpy(sf.read(os.path.join(bed["dir"], "speech", f"{r['ID']}.wav"), dtype="float32")[0])
        plan = c.plan(len(clean), int(r["seed"]))
        assert ";".join(plan["noise_ids"]) == r["noise_ids"] and plan["room"] == r["room"]
        assert ";".join(str(s) for s in plan["snrs"]) == r["snrs"]
        assert np.abs(c.render(clean, plan).numpy() - sf.read(r["wav"], dtype="float32")[0]).max() < 2e-4


def test_rerun_skips_and_resumes(bed):
    wavs = [r["wav"] for r in read(bed["paths"]["noisy_sim"])]
    before = {w: os.stat(w).st_mtime_ns for w in wavs}
    content = sf.read(wavs[2])[0]
    write_conditions(bed["test_csv"], bed["out"], bed["noise_csv"], bed["room_bank"], bed["rir_csv"])
    assert {w: os.stat(w).st_mtime_ns for w in wavs} == before  # skipped
    os.remove(wavs[2])  # an interrupted run: one file missing, condition not marked done
    os.remove(os.path.join(bed["out"], "noisy_sim.done.json"))
    write_conditions(bed["test_csv"], bed["out"], bed["noise_csv"], bed["room_bank"], bed["rir_csv"],
                     conditions=["noisy_sim"])
    assert np.array_equal(sf.read(wavs[2])[0], content)
    assert all(os.stat(w).st_mtime_ns == before[w] for w in wavs if w != wavs[2])


def test_options_change_rewrites(bed, tmp_path):
    out = str(tmp_path / "c")
    a = write_conditions(bed["test_csv"], out, bed["noise_csv"], bed["room_bank"], bed["rir_csv"],
                         conditions=["noisy_sim"], seed=1)
    first = read(a["noisy_sim"])
    b = write_conditions(bed["test_csv"], out, bed["noise_csv"], bed["room_bank"], bed["rir_csv"],
                         conditions=["noisy_sim"], seed=2)
    assert [r["seed"] for r in read(b["noisy_sim"])] != [r["seed"] for r in first]


def test_recorded_manifest(bed, tmp_path):
    rows = [dict(ID=r["ID"], duration=r["duration"], wav=r["wav"], spk_id=r["spk_id"], wrd=r["wrd"])
            for r in read(bed["paths"]["rerecorded"])]
    rec = write_csv(tmp_path / "voices.csv", rows)
    out = write_conditions(bed["test_csv"], str(tmp_path / "c"), bed["noise_csv"], bed["room_bank"],
                           bed["rir_csv"], conditions=["rerecorded"], recorded_csv=rec)
    assert {r["playback"] for r in read(out["rerecorded"])} == {"real"}
    bad = write_csv(tmp_path / "bad.csv", [dict(rows[0], wav=str(tmp_path / "missing.wav"))])
    with pytest.raises(ValueError, match="missing.wav"):
        write_conditions(bed["test_csv"], str(tmp_path / "d"), bed["noise_csv"], bed["room_bank"],
                         bed["rir_csv"], conditions=["rerecorded"], recorded_csv=bad)


def test_rerecorded_chain_zero_lag(bed):
    """Loudspeaker/microphone models and measured RIRs with pre-delays keep the speech in place."""
    rng = np.random.default_rng(1)
    clean = torch.from_numpy((rng.standard_normal(12001) * 0.1).astype(np.float32))
    chain = PlaybackChain(150.0, 7000.0, drive=1.0)
    c = Contaminator(NoisePool.from_csv(bed["noise_csv"], ids=["fillets-en0"]), MeasuredRIRs(bed["rir_csv"]),
                     snr_range=(15, 15), source_transform=chain, output_transform=PlaybackChain(60.0, 7500.0, 0.0))
    for s in range(4):
        noisy, _ = c.contaminate(clean, s)
        xc = scipy.signal.correlate(noisy.numpy(), clean.numpy(), mode="full")[len(clean) - 301:len(clean) + 300]
        assert noisy.shape == clean.shape and int(np.argmax(xc)) - 300 == 0
