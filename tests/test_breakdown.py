"""Breakdowns (kd_brain.results.breakdown), their charts (kd_brain.results.plots) and the recipe script, on toy data."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from kd_brain.noise import acoustics
from kd_brain.results import breakdown as bd
from kd_brain.results import plots
from kd_brain.results.bootstrap import _resample_weights
from tests.conftest import load_recipe, need_module, write_rows

PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = ["ID", "duration", "wav", "spk_id", "wrd", "condition", "playback", "seed", "n_noises", "noise_ids",
          "noise_offsets", "snrs", "room", "speech_rir", "noise_rirs"]
KINDS = {"m1": "music", "m2": "music", "t1": "talk", "t2": "talk"}
RT60S = {"sim0001": 0.25, "house_a": 0.7}  # house_b: unknown


def row(utt, snrs, noises, room, speech_rir):
    return {"ID": utt, "duration": "1.0", "wav": f"{utt}.wav", "spk_id": "s", "wrd": "A B", "condition": "c",
            "playback": "simulated", "seed": "1", "n_noises": str(len(snrs)), "noise_ids": ";".join(noises),
            "noise_offsets": ";".join("0" for _ in snrs), "snrs": ";".join(str(s) for s in snrs), "room": room,
            "speech_rir": speech_rir, "noise_rirs": ";".join(f"{room}/9" for _ in snrs)}


# u1: 3 dB music; u2: two 12-dB talks (effective 8.99 dB); u3: 16 dB talk; u4: 2 and 14 dB, music + talk
# (effective 1.73 dB). u1, u2 in a simulated room (RT60 0.25 s), u3, u4 in measured house RIRs.
ROWS = [row("u1", [3.0], ["m1"], "sim0001", "sim0001/0"), row("u2", [12.0, 12.0], ["t1", "t2"], "sim0001", "sim0001/1"),
        row("u3", [16.0], ["t1"], "house", "house_a"), row("u4", [2.0, 14.0], ["m2", "t2"], "house", "house_b")]
COUNTS = {"teacher": {"u1": [2, 10], "u2": [3, 5], "u3": [0, 8], "u4": [4, 6]},
          "student": {"u1": [1, 10], "u2": [1, 5], "u3": [2, 8], "u4": [3, 6]}}


def decay_rir(rt60, seconds=2.0, sample_rate=16000, noise=0.0, seed=0):
    """Gaussian noise under an exponential envelope that falls 60 dB in ``rt60``, plus a noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rir = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    rir[0] = 5.0  # the direct path
    return rir + noise * rng.standard_normal(len(t))


def test_effective_snr_of_two_noises():
    # 6 and 9 dB: noise powers 10^-0.6 + 10^-0.9 = 0.377 of the speech's, so 4.24 dB, below both
    assert bd.effective_snr([6.0, 9.0]) == pytest.approx(-10 * math.log10(10 ** -0.6 + 10 ** -0.9))
    assert bd.effective_snr([6.0, 9.0]) == pytest.approx(4.2356, abs=1e-3)
    assert bd.effective_snr([12.0, 12.0]) == pytest.approx(12.0 - 10 * math.log10(2))
    two_noises = row("x", [6.0, 9.0], ["m1", "m2"], "r", "r/0")
    assert bd.utterance_labels(two_noises, KINDS, {})["snr"] == "0-5"


def test_snr_and_rt60_bucket_edges():
    labels = [bd.bucket(v, bd.SNR_EDGES, bd.SNR_BUCKETS) for v in (-4.77, 0.0, 4.99, 5.0, 10.0, 15.0, 20.0)]
    assert labels == ["0-5", "0-5", "0-5", "5-10", "10-15", "15-20", "15-20"]
    rt = [bd.bucket(v, bd.RT60_EDGES, bd.RT60_BUCKETS) for v in (0.1, 0.3, 0.59, 0.6, 1.0, 2.6)]
    assert rt == ["<0.3", "0.3-0.6", "0.3-0.6", "0.6-1.0", ">1.0", ">1.0"]


def test_noise_kind():
    assert bd.noise_kind(["m1", "m2"], KINDS) == "music"
    assert bd.noise_kind(["t1", "t2", "t1"], KINDS) == "talk"
    assert bd.noise_kind(["t1", "m1"], KINDS) == "mixed"
    assert bd.noise_kind(["t1", "nope"], KINDS) == bd.UNKNOWN
    assert bd.noise_kind([], KINDS) == bd.UNKNOWN


def test_labels_of_rows():
    labels = {r["ID"]: bd.utterance_labels(r, KINDS, RT60S) for r in ROWS}
    assert labels["u2"] == {"snr": "5-10", "n_noises": "2", "kind": "talk", "room": "simulated", "rt60": "<0.3"}
    assert labels["u4"] == {"snr": "0-5", "n_noises": "2", "kind": "mixed", "room": "house", "rt60": "unknown"}
    assert labels["u3"]["rt60"] == "0.6-1.0"  # the speech RIR's own value
    clean = dict(ROWS[0], n_noises="", noise_ids="", snrs="", room="", speech_rir="")
    assert bd.utterance_labels(clean, KINDS, RT60S) is None


def wers(table, model):
    return {b: cells[model]["wer"] for b, cells in table.items() if model in cells}


def test_bucket_wers_by_hand():
    out = bd.breakdowns(COUNTS, ROWS, KINDS, RT60S, reference="teacher")
    # 0-5: u1 + u4 = (2 + 4) / (10 + 6); 5-10: u2 = 3 / 5; 15-20: u3 = 0 / 8
    assert wers(out["snr"], "teacher") == {"0-5": 37.5, "5-10": 60.0, "15-20": 0.0}
    assert wers(out["snr"], "student") == {"0-5": 25.0, "5-10": 20.0, "15-20": 25.0}
    assert list(out["snr"]) == ["0-5", "5-10", "15-20"]  # the empty 10-15 bucket has no row
    assert wers(out["n_noises"], "teacher") == {"1": round(100 * 2 / 18, 2), "2": round(100 * 7 / 11, 2)}
    assert wers(out["kind"], "student") == {"music": 10.0, "talk": round(100 * 3 / 13, 2), "mixed": 50.0}
    assert wers(out["room"], "teacher") == {"simulated": 33.33, "house": 28.57}
    assert list(out["rt60"]) == ["<0.3", "0.6-1.0", "unknown"]
    # cells carry n and an interval; one utterance gives a degenerate one
    low = out["snr"]["0-5"]["student"]
    assert low["n"] == 2 and low["lo"] <= low["wer"] <= low["hi"]
    assert out["snr"]["5-10"]["student"]["lo"] == out["snr"]["5-10"]["student"]["hi"] == 20.0
    # relative change vs the teacher: (4 - 6) / 6 and (1 - 3) / 3; none where the teacher made no error
    assert out["snr"]["0-5"]["student"]["vs"]["rel"] == -33.3
    assert out["snr"]["5-10"]["student"]["vs"]["rel"] == -66.7
    assert "vs" not in out["snr"]["15-20"]["student"] and "vs" not in out["snr"]["0-5"]["teacher"]


def test_interval_is_the_bootstrap_of_the_wer():
    rng = np.random.default_rng(3)
    counts = {f"u{i}": [int(rng.integers(0, 6)), int(rng.integers(3, 9))] for i in range(60)}
    utts = sorted(counts)
    cell = bd.bucket_wer(counts, utts, replicates=2000, seed=5)
    w = _resample_weights(len(utts), 2000, 5)
    e, n = (np.array([counts[u][k] for u in utts], dtype=float) for k in (0, 1))
    lo, hi = np.percentile(100 * (w @ e) / (w @ n), [2.5, 97.5])
    assert cell["lo"] == pytest.approx(lo, abs=0.11) and cell["hi"] == pytest.approx(hi, abs=0.11)
    assert cell["wer"] == round(100 * e.sum() / n.sum(), 2) and cell["n"] == 60
    assert bd.wer_interval([counts[u] for u in utts], replicates=2000, seed=5) == (cell["lo"], cell["hi"])


def test_markdown_table():
    out = bd.breakdowns(COUNTS, ROWS, KINDS, RT60S, reference="teacher")
    md = bd.markdown_table(out["snr"], "teacher").splitlines()
    assert md[0] == "| bucket | model | WER [95% CI] (n) | vs teacher [95% CI] |"
    assert "| 5-10 | student | 20.00 [20.0, 20.0] (1) | -66.7% [-66.7, -66.7] P=1.00 |" in md
    assert "| 15-20 | student | 25.00 [25.0, 25.0] (1) | - |" in md
    plain = bd.markdown_table(out["snr"]).splitlines()  # no reference: no change column
    assert plain[0] == "| bucket | model | WER [95% CI] (n) |"
    assert plain[2].startswith("| 0-5 | teacher | 37.50 [") and plain[2].endswith("] (2) |")


@pytest.mark.parametrize("rt60", [0.25, 0.6, 1.5])
def test_schroeder_rt60_of_exponential_decay(rt60):
    assert acoustics.schroeder_rt60(decay_rir(rt60, seconds=max(1.0, 2 * rt60)), 16000) == pytest.approx(rt60, rel=0.05)


def test_schroeder_rt60_with_noise_floor():
    # a floor 40 dB under the direct sound: plain backward integration of the whole file reads
    # T20 as ~4 s; truncated where the decay meets the floor, floor subtracted, it is 0.5 s
    noisy = decay_rir(0.5, noise=0.01, seed=1)
    assert acoustics.schroeder_rt60(noisy, 16000) == pytest.approx(0.5, rel=0.05)
    assert acoustics.schroeder_rt60(np.r_[1.0, 0.01 * np.random.default_rng(0).standard_normal(8000)], 16000) is None


def test_sabine_inverts_pyroomacoustics():
    pra = need_module("pyroomacoustics")
    dims = [6.0, 4.0, 2.8]
    absorption, _ = pra.inverse_sabine(0.55, dims)
    assert acoustics.sabine_rt60(dims, absorption) == pytest.approx(0.55, rel=1e-3)


def check_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG and len(data) > 2000


def test_plots_write_png(tmp_path):
    out = bd.breakdowns(COUNTS, ROWS, KINDS, RT60S, reference="teacher")
    plots.snr_chart({"noisy_sim": out["snr"], "rerecorded": out["snr"]}, tmp_path / "snr.png")
    plots.breakdown_bars({bd.TITLES[k]: t for k, t in out.items()}, tmp_path / "bars.png", title="toy")
    rows = [{"value": k, "wer": {"clean": 20.0 + i, "noisy_sim": 30.0 - i},
             "interval": {"clean": [19.0 + i, 21.5 + i]}} for i, k in enumerate([1, 5, 10, 20, 40, "all"])]
    rows[2]["wer"].pop("noisy_sim")  # a missing point leaves a gap
    plots.sweep_chart(rows, tmp_path / "k.png", xlabel="k")
    plots.sweep_chart([{"value": t, "wer": {"clean": w}} for t, w in [(1, 25.0), (2, 22.0), (4, 23.0)]],
                      tmp_path / "t.png", xlabel="T")
    for name in ("snr.png", "bars.png", "k.png", "t.png"):
        check_png(tmp_path / name)


def test_interval_errors():
    assert plots.interval_errors([10.0, float("nan")], [8.0, 1.0], [11.0, 2.0]) == [[2.0, 0.0], [1.0, 0.0]]


def fabricate_experiment(root):
    """root/exp/toy with scores, manifests, a two-room bank, a saved config; root/data with noise and RIRs."""
    exp = root / "exp" / "toy"
    (exp / "conditions").mkdir(parents=True)
    (exp / "student").mkdir()
    (root / "data" / "noise").mkdir(parents=True)
    (root / "data" / "rir" / "house").mkdir(parents=True)
    noises = [{"ID": k, "duration": "9", "path": f"noise/{k}.ogg", "kind": v, "source": "x", "licence": "x"}
              for k, v in KINDS.items()]
    write_rows(root / "data" / "noise" / "noise.csv", noises)
    for rid, rt60 in (("house_a", 0.8), ("house_b", 0.4)):
        sf.write(str(root / "data" / "rir" / "house" / f"{rid}.wav"), 0.1 * decay_rir(rt60), 16000)
    write_rows(root / "data" / "rir" / "rir.csv", [{"ID": r, "duration": "2", "path": f"rir/house/{r}.wav",
                                                     "room": "house", "licence": "x"} for r in ("house_a", "house_b")])
    rooms = [{"id": "sim0001", "split": "test", "rt60": 0.25, "rirs": [], "peaks": []},
             {"id": "sim0002", "split": "test", "dims": [6.0, 4.0, 2.8], "absorption": 0.15, "rirs": [], "peaks": []}]
    torch.save({"version": 1, "options": {"sample_rate": 16000}, "rooms": rooms}, str(exp / "rooms.pt"))
    (exp / "student" / "hyperparams.yaml").write_text(
        "noise_csv: data/noise/noise.csv   # ID, kind\nroom_bank: exp/toy/rooms.pt\nrir_csv: data/rir/rir.csv\n"
        "contaminator: !name:kd_brain.noise.contamination.Contaminator.from_files\n")
    sim = ROWS[:2] + [row("u5", [18.0], ["m1"], "sim0002", "sim0002/0")]
    write_rows(exp / "conditions" / "noisy_sim.csv", [{k: r[k] for k in FIELDS} for r in sim])
    write_rows(exp / "conditions" / "rerecorded.csv", ROWS)
    clean = [dict(r, n_noises="", noise_ids="", noise_offsets="", snrs="", room="", speech_rir="", noise_rirs="")
             for r in ROWS]
    write_rows(exp / "conditions" / "clean.csv", clean)
    counts = {m: dict(c, u5=[1, 4]) for m, c in COUNTS.items()}
    scores = {m: {c: {"n_utts": 5, "beam": 1.0, "lm": 1.0, "utt_errors": {"beam": {}, "lm": counts[m]}}
                  for c in ("clean", "noisy_sim", "rerecorded")} for m in COUNTS}
    (exp / "scores.json").write_text(json.dumps(scores))
    return exp


def test_script_end_to_end(tmp_path, capsys):
    exp = fabricate_experiment(tmp_path)
    markdown, pngs = load_recipe("breakdown").main(["--exp", str(exp), "--models", "teacher", "student", "ghost",
                                                    "--reference", "teacher"])
    assert (exp / "breakdown.md").read_text() == markdown and markdown in capsys.readouterr().out
    assert "Not in scores.json (skipped): ghost." in markdown
    assert "Headline decoders: teacher lm; student lm." in markdown
    assert "### clean" not in markdown  # no noise in its manifest
    sections = markdown.split("### ")
    sim_rt60 = next(s for s in sections if s.startswith("noisy_sim: RT60"))
    assert "| <0.3 | teacher | 33.33 [" in sim_rt60 and "(2) |" in sim_rt60
    assert "| 0.6-1.0 | student | 25.00 [25.0, 25.0] (1) |" in sim_rt60  # sim0002: Sabine, 0.69 s
    rec_rt60 = next(s for s in sections if s.startswith("rerecorded: RT60"))
    assert "| 0.6-1.0 | teacher | 0.00 [0.0, 0.0] (1) |" in rec_rt60  # house_a, measured 0.8 s
    assert "| 0.3-0.6 | student | 50.00 [50.0, 50.0] (1) | -25.0% [-25.0, -25.0] P=1.00 |" in rec_rt60  # house_b
    rec_kind = next(s for s in sections if s.startswith("rerecorded: noise kind"))
    assert "| mixed | student | 50.00 [50.0, 50.0] (1) |" in rec_kind
    assert [p.rsplit("/", 1)[1] for p in pngs] == ["breakdown_snr.png", "breakdown_bars_noisy_sim.png",
                                                   "breakdown_bars_rerecorded.png"]
    for p in pngs:
        check_png(p)
