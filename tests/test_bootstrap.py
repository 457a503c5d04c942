"""Paired bootstrap intervals: agree with kaldialign, widen with speaker blocks, turn into verdicts."""

import numpy as np
import pytest

from kd_brain.results.bootstrap import compare, paired_bootstrap, pooled_counts, verdict
from kd_brain.results.report import paper_table
from tests.conftest import need_module


def random_systems(seed, n=300, speakers=15):
    """Two systems' per-utterance errors; b makes ~20% fewer errors, more so for some speakers."""
    rng = np.random.default_rng(seed)
    spk = rng.integers(0, speakers, size=n)
    difficulty = rng.gamma(2.0, 0.5, size=speakers)[spk]  # some speakers are much harder
    ref = rng.integers(10, 30, size=n)
    a = rng.binomial(ref, np.clip(0.15 * difficulty, 0, 0.9))
    gain = rng.uniform(0.2, 1.4, size=speakers)[spk]  # how much b helps depends on the speaker
    b = rng.binomial(ref, np.clip(0.15 * difficulty * gain, 0, 0.9))
    return a, b, ref, spk


def test_probability_of_improvement_matches_kaldialign():
    kaldialign = need_module("kaldialign")
    rng = np.random.default_rng(1)
    refs, hyps_a, hyps_b = [], [], []
    for _ in range(120):
        ref = [f"w{x}" for x in rng.integers(0, 30, size=rng.integers(3, 10))]
        refs.append(ref)
        hyps_a.append([w if rng.random() > 0.25 else "x" for w in ref])
        hyps_b.append([w if rng.random() > 0.2 else "x" for w in ref])
    ours = paired_bootstrap([kaldialign.edit_distance(r, h)["total"] for r, h in zip(refs, hyps_a)],
                            [kaldialign.edit_distance(r, h)["total"] for r, h in zip(refs, hyps_b)],
                            [len(r) for r in refs])
    theirs = kaldialign.bootstrap_wer_ci(refs, hyps_a, hyps_b, replications=10000, seed=0)
    assert ours["p_better"] == pytest.approx(theirs["p_s2_improv_over_s1"], abs=0.02)
    wer_a = theirs["system1"]["wer"] * 100  # kaldialign's point estimate is a bootstrap mean
    assert 100 * sum(kaldialign.edit_distance(r, h)["total"] for r, h in zip(refs, hyps_a)) / sum(
        len(r) for r in refs) == pytest.approx(wer_a, rel=0.02)


def test_interval_contains_the_point_and_is_seeded():
    a, b, ref, _ = random_systems(0)
    r = paired_bootstrap(a, b, ref)
    assert r["lo"] <= r["rel"] <= r["hi"] and r["rel"] < 0
    assert paired_bootstrap(a, b, ref) == r
    assert paired_bootstrap(a, b, ref, seed=1) != r


def test_speaker_blocks_widen_the_interval_when_errors_cluster_by_speaker():
    a, b, ref, spk = random_systems(2)
    utt = paired_bootstrap(a, b, ref)
    block = paired_bootstrap(a, b, ref, groups=spk)
    assert block["blocks"] == len(set(spk)) and utt["blocks"] == len(a)
    assert block["rel"] == utt["rel"]
    assert block["hi"] - block["lo"] > utt["hi"] - utt["lo"]


def test_identical_systems_show_no_significant_difference():
    a, _, ref, _ = random_systems(3)
    r = paired_bootstrap(a, a, ref)
    assert (r["rel"], r["lo"], r["hi"], r["p_better"]) == (0.0, 0.0, 0.0, 0.0)
    assert verdict(r) == "no significant difference"


def test_compare_refuses_different_references():
    with pytest.raises(ValueError, match="different references"):
        compare({"u": [1, 5]}, {"u": [1, 6]})


def test_pooled_over_seeds_and_table_with_mean_and_std():
    runs = []
    for seed in range(3):
        a, b, ref, spk = random_systems(10 + seed)
        utts = [f"u{i}" for i in range(len(a))]
        runs.append({
            "wer": {"teacher_seq": {"clean": 100 * a.sum() / ref.sum()}, "student": {"clean": 100 * b.sum() / ref.sum()}},
            "utt_errors": {"teacher_seq": {"clean": {u: [int(e), int(n)] for u, e, n in zip(utts, a, ref)}},
                           "student": {"clean": {u: [int(e), int(n)] for u, e, n in zip(utts, b, ref)}}},
            "speakers": {"clean": {u: f"s{s}" for u, s in zip(utts, spk)}}})
    pooled = pooled_counts([r["utt_errors"]["student"] for r in runs], "clean")
    assert pooled["u0"][1] == sum(r["utt_errors"]["student"]["clean"]["u0"][1] for r in runs)
    md, summary = paper_table(runs, ["teacher_seq", "student"], ["clean"])
    wers = [r["wer"]["student"]["clean"] for r in runs]
    assert f"| student | {np.mean(wers):.2f} ± {np.std(wers, ddof=1):.2f} |" in md
    change = summary["changes"]["student vs teacher_seq"]["clean"]
    assert change["n"] == 300 and "block" in change and "resampling whole speakers" in md
    assert f"Verdict, student vs teacher_seq: clean: {verdict(change)}." in md


def test_the_target_is_checked_against_the_better_teacher_and_both_baselines():
    """student_seq must beat, per condition, whichever teacher is better there; the student must beat both
    baselines on noise and be no worse on clean speech. Errors per utterance are drawn so that each claim's
    outcome is known."""
    rng = np.random.default_rng(0)
    utts = [f"u{i}" for i in range(200)]
    rate = {"teacher": {"clean": 0.20, "noisy_sim": 0.9}, "teacher_seq": {"clean": 0.15, "noisy_sim": 0.95},
            "multicondition": {"clean": 0.20, "noisy_sim": 0.45}, "pseudo_label": {"clean": 0.30, "noisy_sim": 0.50},
            "student": {"clean": 0.30, "noisy_sim": 0.35}, "student_seq": {"clean": 0.10, "noisy_sim": 0.30}}
    run = {"wer": {}, "utt_errors": {}, "speakers": {}}
    for m, conds in rate.items():
        for c, p in conds.items():
            errs = {u: [int(rng.binomial(20, p)), 20] for u in utts}
            run["utt_errors"].setdefault(m, {})[c] = errs
            run["wer"].setdefault(m, {})[c] = 100 * sum(e for e, _ in errs.values()) / (20 * len(utts))
            run["speakers"][c] = {u: f"s{i % 10}" for i, u in enumerate(utts)}
    md, _ = paper_table([run], list(rate), ["dev", "clean", "noisy_sim"])
    lines = {line.split(":")[0]: line for line in md.splitlines() if line.startswith("| student")}
    seq = lines["| student_seq vs teacher / teacher_seq"]
    # clean against teacher_seq (the better there), noisy_sim against teacher
    assert "vs teacher_seq met" in seq.split("|")[2] and "vs teacher met" in seq.split("|")[3]
    assert seq.endswith("| **met** |")
    # the student is better on noise than both baselines; on clean it is worse than multicondition (not met)
    # and level with pseudo_label (met)
    assert lines["| student vs multicondition"].endswith("| **not met** |")
    assert "NOT met" in lines["| student vs multicondition"].split("|")[2]
    assert lines["| student vs pseudo_label"].endswith("| **met** |")
    assert "| target | clean | noisy_sim | |" in md  # decisions on dev, claims on test conditions only
