"""MUSAN and RIRS_NOISES exporters, on tiny replicas of their on-disk layouts written here."""

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kd_brain.noise.conditions import write_conditions
from kd_brain.noise.contamination import Contaminator
from kd_brain.noise.pool import NoisePool, read_noise_manifest, split_noise_pool
from kd_brain.noise.musan import MUSAN_RESERVED, NOISE_FIELDS, PublicCorpusError, export_musan
from kd_brain.noise.rirs_noises import export_real_rirs, export_simulated_rirs, read_kaldi_list
from kd_brain.noise.rooms import GUARD, MeasuredRIRs, RIRError

from tests.conftest import write_rows

SR = 16000
REPO = Path(__file__).resolve().parents[1]
MUSIC_ANN = {"fma": "music-fma-0000 pop,electronica Y Quiet_Music_for_Tiny_Robots\n"
                    "music-fma-0001 classical N Some_Composer\n",
             "jamendo": "music-jamendo-0000 rock Y Band\n"}
SPEECH_ANN = {"librivox": "speech-librivox-0000 m english\nspeech-librivox-0001 f german\n",
              "us-gov": "speech-us-gov-0000 f english\n"}


def noise(seconds, seed):
    return np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1


def rir(delay, length=SR // 4, seed=0):
    """A direct path at ``delay`` samples, then a decaying tail (all of ``length`` samples)."""
    n = length - delay - 1
    tail = np.random.default_rng(seed).standard_normal(n) * np.exp(-np.arange(n) / 600) * 0.2
    return np.r_[np.zeros(delay), 1.0, tail]


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_musan(base):
    root = base / "musan"
    k = 0
    for category, anns in (("music", MUSIC_ANN), ("speech", SPEECH_ANN)):
        for subset, text in anns.items():
            d = root / category / subset
            d.mkdir(parents=True)
            (d / "ANNOTATIONS").write_text(text)
            (d / "LICENSE").write_text("licence text\n")
            for line in text.splitlines():
                k += 1
                sf.write(d / f"{line.split()[0]}.wav", noise(0.5 + 0.1 * k, k), SR)
    d = root / "noise" / "free-sound"
    d.mkdir(parents=True)
    (d / "LICENSE").write_text("licence text\n")
    sf.write(d / "noise-free-sound-0000.wav", noise(0.6, 99), SR)  # no ANNOTATIONS: allowed for noise
    return root


def write_rirs_noises(base):
    root = base / "RIRS_NOISES"
    real = root / "real_rirs_isotropic_noises"
    real.mkdir(parents=True)
    sf.write(real / "RVB2014_type1_rir_largeroom1_far_angla.wav", np.stack([rir(800), rir(830, seed=1)], 1), SR)
    sf.write(real / "air_type1_air_binaural_meeting_1_1.wav", rir(300, seed=2), SR)
    sf.write(real / "RVB2014_type1_noise_largeroom1_1.wav", noise(1.0, 5), SR)
    loc = "RIRS_NOISES/real_rirs_isotropic_noises"
    (real / "rir_list").write_text(
        f"--rir-id 00001 --room-id RVB2014_largeroom1 {loc}/RVB2014_type1_rir_largeroom1_far_angla.wav\n"
        f"--rir-id 00002 --room-id air_meeting {loc}/air_type1_air_binaural_meeting_1_1.wav\n")
    (real / "noise_list").write_text(f"--noise-id 00001 --noise-type isotropic --room-linkage RVB2014_largeroom1 "
                                     f"{loc}/RVB2014_type1_noise_largeroom1_1.wav\n")
    point = root / "pointsource_noises"
    point.mkdir()
    sf.write(point / "noise-free-sound-0000.wav", noise(0.5, 6), SR)
    (point / "noise_list").write_text("--noise-id noise-free-sound-0000 --noise-type point-source --bg-fg-type "
                                      "foreground RIRS_NOISES/pointsource_noises/noise-free-sound-0000.wav\n")
    for size, prefix, n_rooms in (("smallroom", "small", 5), ("mediumroom", "medium", 3), ("largeroom", "large", 2)):
        d = root / "simulated_rirs" / size
        lines, info = [], []
        for r in range(1, n_rooms + 1):
            room = f"Room{r:03d}"
            (d / room).mkdir(parents=True)
            info.append(f"{room} 4.10 3.20 2.50 1.00 1.50 1.20 0.{r}0\n")
            for m in range(1, 5):
                name = f"{room}-{m:05d}"
                sf.write(d / room / f"{name}.wav", rir(10 + 5 * m, SR // 8, seed=r * 10 + m), SR)
                lines.append(f"--rir-id {prefix}-{name} --room-id {prefix}-{room} "
                             f"RIRS_NOISES/simulated_rirs/{size}/{room}/{name}.wav\n")
        (d / "rir_list").write_text("".join(lines))
        (d / "room_info").write_text("".join(info))
    return root


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("public")
    out = base / "out"
    musan, rirs = write_musan(base), write_rirs_noises(base)
    return dict(base=base, musan=musan, rirs=rirs, out=out, musan_out=export_musan(musan, out),
                real=export_real_rirs(rirs, out), sim=export_simulated_rirs(rirs, out, rirs_per_room=3, seed=1))


def test_musan_rows_columns_kinds_annotations(corpora):
    out = corpora["musan_out"]
    rows = {r["ID"]: r for r in read_noise_manifest(out["csv"])}
    assert list(csv_rows(out["csv"])[0]) == NOISE_FIELDS
    assert len(rows) == out["rows"] == 6  # noise/ left out by default
    assert {r["kind"] for r in rows.values() if r["category"] == "music"} == {"music"}
    assert {r["kind"] for r in rows.values() if r["category"] == "speech"} == {"talk"}
    assert {r["source"] for r in rows.values()} == {"fma", "jamendo", "librivox", "us-gov"}
    fma = rows["music-fma-0000"]
    assert (fma["genre"], fma["vocals"], fma["artist"]) == ("pop;electronica", "Y", "Quiet_Music_for_Tiny_Robots")
    assert rows["music-fma-0001"]["vocals"] == "N"
    assert (rows["speech-librivox-0001"]["gender"], rows["speech-librivox-0001"]["language"]) == ("f", "german")
    assert fma["licence"] == "MUSAN (OpenSLR 17): see music/fma/LICENSE"
    assert Path(fma["path"]).is_absolute()  # noise_root does not matter
    assert float(fma["duration"]) == pytest.approx(sf.info(fma["path"]).duration, abs=1e-3)
    assert out["sources"]["us-gov"]["kind"] == "talk" and out["sources"]["fma"]["clips"] == 2


def test_musan_noise_by_setting_and_vocals(corpora, tmp_path):
    out = export_musan(corpora["musan"].parent, tmp_path, categories=("music", "speech", "noise"))
    rows = read_noise_manifest(out["csv"])
    assert [r["source"] for r in rows if r["kind"] == "noise"] == ["free-sound"]
    out = export_musan(corpora["musan"], tmp_path / "iv", categories=("music",), reserved_sources=[],
                       use_vocals=False)
    assert [r["ID"] for r in read_noise_manifest(out["csv"])] == ["music-fma-0001"]


def test_musan_reserved_sources(corpora, tmp_path):
    rows = read_noise_manifest(corpora["musan_out"]["csv"])
    pools = split_noise_pool(rows, 0.2, 0, reserved_sources=MUSAN_RESERVED)
    source = {r["ID"]: r["source"] for r in rows}
    assert {source[i] for i in pools["reserved"]} == set(MUSAN_RESERVED)
    assert {source[i] for i in pools["train"]} == {source[i] for i in pools["test"]} == {"fma", "librivox"}
    assert not set(pools["train"]) & set(pools["test"])
    with pytest.raises(PublicCorpusError, match="reserved_sources.*hd-classical"):
        export_musan(corpora["musan"], tmp_path, reserved_sources=["hd-classical"])


def test_contaminator_from_musan_and_simulated_rirs(corpora):
    kw = dict(reserved_sources=MUSAN_RESERVED, seed=3)
    c = Contaminator.from_files(corpora["musan_out"]["csv"], corpora["sim"]["csv"], pool="train", **kw)
    wav = torch.from_numpy(noise(1.0, 7).astype(np.float32))
    noisy, plan = c.contaminate(wav, 11)
    assert noisy.shape == wav.shape and torch.isfinite(noisy).all() and not torch.equal(noisy, wav)
    assert torch.equal(noisy, c.contaminate(wav, 11)[0])
    assert torch.equal(c(wav, "utt1", epoch=0), c(wav, "utt1", epoch=0))
    split = {r["room"]: r["split"] for r in csv_rows(corpora["sim"]["csv"])}
    train_rooms = {c.plan(SR, s)["room"] for s in range(40)}
    test = Contaminator.from_files(corpora["musan_out"]["csv"], corpora["sim"]["csv"], pool="test", **kw)
    test_rooms = {test.plan(SR, s)["room"] for s in range(40)}
    assert {split[r] for r in train_rooms} == {"train"} and {split[r] for r in test_rooms} == {"test"}
    assert set(c.noises.ids) <= {"music-fma-0000", "music-fma-0001", "speech-librivox-0000", "speech-librivox-0001"}


def test_conditions_from_exports(corpora, tmp_path):
    """write_conditions, unchanged, takes the simulated-rooms CSV where a room bank goes."""
    utts = []
    for i in range(2):
        sf.write(tmp_path / f"u{i}.wav", noise(1.0, 20 + i).astype(np.float32), SR)
        utts.append(dict(ID=f"u{i}", duration=1.0, wav=str(tmp_path / f"u{i}.wav"), spk_id="s", wrd="A B"))
    paths = write_conditions(write_rows(tmp_path / "test.csv", utts), str(tmp_path / "cond"), corpora["musan_out"]["csv"],
                             corpora["sim"]["csv"], corpora["real"]["csv"], conditions=("noisy_sim", "rerecorded"),
                             reserved_sources=MUSAN_RESERVED)
    split = {r["room"]: r["split"] for r in csv_rows(corpora["sim"]["csv"])}
    source = {r["ID"]: r["source"] for r in csv_rows(corpora["musan_out"]["csv"])}
    noisy, rerec = csv_rows(paths["noisy_sim"]), csv_rows(paths["rerecorded"])
    assert {split[r["room"]] for r in noisy} == {"test"}
    assert {r["room"] for r in rerec} <= {"RVB2014_largeroom1", "air_meeting"}
    assert {source[n] for r in rerec for n in r["noise_ids"].split(";")} <= set(MUSAN_RESERVED)


def test_simulated_rirs_split_and_subset(corpora, tmp_path):
    rows = csv_rows(corpora["sim"]["csv"])
    assert len(rows) == 10 * 3  # 10 rooms, 3 of the 4 RIRs each
    by_size = {}
    for r in rows:
        by_size.setdefault(r["size"], {}).setdefault(r["split"], set()).add(r["room"])
    assert {s: {k: len(v) for k, v in d.items()} for s, d in by_size.items()} == {
        "smallroom": {"train": 4, "test": 1}, "mediumroom": {"train": 2, "test": 1},
        "largeroom": {"train": 1, "test": 1}}
    assert corpora["sim"]["train_rooms"] == 7 and corpora["sim"]["test_rooms"] == 3
    r = next(r for r in rows if r["room"] == "small-Room002")
    assert (r["room_dims"], r["mic"], r["absorption"]) == ("4.10;3.20;2.50", "1.00;1.50;1.20", "0.20")
    assert r["ID"].startswith("small-Room002-") and Path(r["path"]).is_absolute()
    again = export_simulated_rirs(corpora["rirs"], tmp_path, rirs_per_room=3, seed=1)
    assert csv_rows(again["csv"]) == rows  # seeded
    large = export_simulated_rirs(corpora["rirs"], tmp_path / "l", sizes=("largeroom",), rirs_per_room=3, seed=1)
    assert csv_rows(large["csv"]) == [r for r in rows if r["size"] == "largeroom"]  # a size's split is its own
    full = csv_rows(export_simulated_rirs(corpora["rirs"], tmp_path / "all", rirs_per_room=None)["csv"])
    assert len(full) == 40
    trained = MeasuredRIRs(corpora["sim"]["csv"], split="train")
    assert set(trained.groups) == {r["room"] for r in rows if r["split"] == "train"}
    for r in rows:  # direct path of RIR m at 10 + 5 m samples: kept whole (< GUARD), as the bank's
        if r["split"] == "train":
            assert trained.rir(r["ID"])[1] == 10 + 5 * int(r["ID"][-5:])


def test_real_rirs_as_measured_rooms(corpora):
    real = corpora["real"]
    rows = csv_rows(real["csv"])
    assert [r["ID"] for r in rows] == ["RVB2014_type1_rir_largeroom1_far_angla_ch0",
                                      "RVB2014_type1_rir_largeroom1_far_angla_ch1",
                                      "air_type1_air_binaural_meeting_1_1"]
    assert [r["room"] for r in rows] == ["RVB2014_largeroom1"] * 2 + ["air_meeting"]
    assert [r["rir_id"] for r in rows] == ["00001", "00001", "00002"] and real["skipped"] == []
    for r in rows:
        info = sf.info(corpora["out"] / r["path"])
        assert (info.channels, info.samplerate, info.format) == (1, SR, "FLAC")
    assert real["bytes"] == sum((corpora["out"] / r["path"]).stat().st_size for r in rows)
    m = MeasuredRIRs(real["csv"])  # root: the csv's parent's parent, i.e. the output folder
    assert set(m.groups) == {"RVB2014_largeroom1", "air_meeting"}
    ch0, peak = m.rir(rows[0]["ID"])
    assert peak == GUARD and float(ch0[peak]) == 1.0  # onset trimmed, peak-normalised as before
    two = np.stack([rir(800), rir(830, seed=1)], 1)
    assert np.allclose(sf.read(corpora["out"] / rows[1]["path"])[0] / 0.99, two[:, 1] / np.abs(two[:, 1]).max(),
                       atol=1e-4)  # the replica is 16-bit: a few LSB
    with pytest.raises(RIRError, match="no split column"):
        MeasuredRIRs(real["csv"], split="train")


def test_real_rirs_leave_out_refused_channels(corpora, tmp_path):
    root = tmp_path / "RIRS_NOISES"
    shutil.copytree(corpora["rirs"] / "real_rirs_isotropic_noises", root / "real_rirs_isotropic_noises")
    sf.write(root / "real_rirs_isotropic_noises" / "air_type1_air_binaural_meeting_1_1.wav",
             np.stack([rir(300), np.zeros(SR // 4)], 1), SR)
    out = export_real_rirs(tmp_path, tmp_path / "out")
    assert out["rows"] == 3 and len(out["skipped"]) == 1 and "channel 1" in out["skipped"][0]


def test_bad_input_names_the_file(corpora, tmp_path):
    musan = tmp_path / "musan"
    shutil.copytree(corpora["musan"], musan)
    sf.write(musan / "music" / "fma" / "music-fma-0002.wav", noise(0.3, 1), SR)
    with pytest.raises(PublicCorpusError, match=r"music/fma/ANNOTATIONS: no line for music-fma-0002"):
        export_musan(musan, tmp_path / "o")
    (musan / "music" / "fma" / "music-fma-0002.wav").unlink()
    (musan / "speech" / "us-gov" / "speech-us-gov-0000.wav").write_bytes(b"not audio at all")
    with pytest.raises(PublicCorpusError, match=r"speech-us-gov-0000\.wav: cannot read audio"):
        export_musan(musan, tmp_path / "o")
    (musan / "speech" / "us-gov" / "ANNOTATIONS").unlink()
    with pytest.raises(PublicCorpusError, match=r"us-gov/ANNOTATIONS: missing"):
        export_musan(musan, tmp_path / "o")
    (musan / "music" / "fma" / "ANNOTATIONS").write_text("music-fma-0000 pop Y A\nmusic-fma-0001 pop maybe\n")
    with pytest.raises(PublicCorpusError, match=r"fma/ANNOTATIONS:2: expected"):
        export_musan(musan, tmp_path / "o")

    rirs = tmp_path / "RIRS_NOISES"
    shutil.copytree(corpora["rirs"], rirs)
    lst = rirs / "simulated_rirs" / "mediumroom" / "rir_list"
    lst.write_text(lst.read_text() + "--rir-id medium-x RIRS_NOISES/simulated_rirs/mediumroom/Room001/x.wav\n")
    with pytest.raises(PublicCorpusError, match=r"mediumroom/rir_list:13: expected '--rir-id"):
        export_simulated_rirs(rirs, tmp_path / "o")
    lst.write_text(lst.read_text().splitlines(True)[0].replace("00001.wav", "00009.wav"))
    with pytest.raises(PublicCorpusError, match=r"Room001-00009\.wav \(.*mediumroom/rir_list:1\): cannot read audio"):
        export_simulated_rirs(rirs, tmp_path / "o")
    info = rirs / "simulated_rirs" / "smallroom" / "room_info"
    info.write_text("Room001 4.1 3.2\n")
    with pytest.raises(PublicCorpusError, match=r"smallroom/room_info:1: expected"):
        export_simulated_rirs(rirs, tmp_path / "o")
    real = rirs / "real_rirs_isotropic_noises" / "rir_list"
    real.write_text("--rir-id 00001 --room-id r sox a.wav -t wav - |\n")
    with pytest.raises(PublicCorpusError, match=r"real_rirs_isotropic_noises/rir_list:1: .*one plain file"):
        export_real_rirs(rirs, tmp_path / "o")
    assert read_kaldi_list(lst)[0][1] == {"rir-id": "medium-Room001-00001", "room-id": "medium-Room001"}


def test_prepare_noise_entry(corpora, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_noise", REPO / "recipes" / "KD-Noise" / "prepare_noise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["musan", str(corpora["musan"]), str(tmp_path)])
    mod.main(["rirs_noises", str(corpora["rirs"].parent), str(tmp_path), "--rirs-per-room", "2"])
    printed = capsys.readouterr().out
    assert f"--noise_csv={tmp_path}/noise/musan.csv --reserved_sources=[jamendo,us-gov]" in printed
    assert f"--train_rooms={tmp_path}/rir/simulated_rirs.csv --rir_csv={tmp_path}/rir/real_rirs.csv" in printed
    assert len(csv_rows(tmp_path / "rir" / "simulated_rirs.csv")) == 20
    assert len(NoisePool.from_csv(str(tmp_path / "noise" / "musan.csv"))) == 6
