"""Peakiness statistics: exact on known posteriors, and the script on a trained tiny teacher."""

import json

import pytest
import torch

from kd_brain.kd.peakiness import peakiness
from tests.conftest import load_recipe


def test_statistics_match_a_direct_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    lens = torch.tensor([1.0, 4 / 7, 2 / 7])
    stats = peakiness([(torch.log_softmax(logits, -1), lens)], ks=(1, 5, 11))
    frames = torch.cat([logits[0, :7], logits[1, :4], logits[2, :2]])  # the valid frames only
    p2 = torch.softmax(frames / 2, -1)
    assert stats["frames"] == 13
    assert stats["top1_T4"] == pytest.approx(float(torch.softmax(frames / 4, -1).max(-1).values.mean()), rel=1e-5)
    assert stats["topk_T2_k5"] == pytest.approx(float(p2.topk(5, -1).values.sum(-1).mean()), rel=1e-5)
    assert stats["topk_T2_k11"] == pytest.approx(1.0, rel=1e-5)
    assert stats["blank_p90"] == pytest.approx(float((torch.softmax(frames, -1)[:, 0] >= 0.9).float().mean()))
    assert stats["top1_T1"] >= stats["top1_T2"] >= stats["top1_T4"]
    uniform = peakiness([(torch.full((1, 5, 8), -torch.log(torch.tensor(8.0))), torch.tensor([1.0]))])
    assert uniform["top1_T1"] == pytest.approx(1 / 8) and uniform["entropy"] == pytest.approx(float(torch.log(torch.tensor(8.0))))


def test_script_on_a_trained_teacher_shares_the_dev_cache(tiny_teacher, capsys):
    model = tiny_teacher / "teacher"
    out = load_recipe("peakiness").main([str(model)])[str(model)]
    assert out["frames"] > 0 and all(0.0 <= v <= 1.0 for k, v in out.items() if k not in ("frames", "entropy"))
    assert out["topk_T2_k1"] == pytest.approx(out["top1_T2"])
    assert out["topk_T2_k1"] <= out["topk_T2_k5"] <= out["topk_T2_k20"] <= out["topk_T2_k40"] <= 1.0 + 1e-6
    assert len(list(model.glob("dev_logprobs.*.pt"))) == 1  # the decoder grid's cache, by checkpoint
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["peakiness"][str(model)]["frames"] == out["frames"]
