"""Model files load without executing code: weights_only everywhere, nothing of ours unpickled."""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("kd_brain", "recipes", "bench") for p in (REPO / d).rglob("*.py")]


def calls(text, name="torch.load("):
    """Every ``name...)`` call in ``text``, parentheses balanced."""
    out, start = [], text.find(name)
    while start >= 0:
        depth, i = 0, start + len(name) - 1
        while True:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(text[start:i + 1])
        start = text.find(name, i)
    return out


def test_every_torch_load_of_ours_is_weights_only_and_nothing_is_pickled():
    assert len(SOURCES) > 30
    assert calls("torch.load(f(a), weights_only=True) x") == ["torch.load(f(a), weights_only=True)"]
    for path in SOURCES:
        text = path.read_text()
        for call in calls(text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"^\s*(import pickle|from pickle|import dill)", text, re.M), path
        assert "allow_pickle=True" not in text, path


def test_checkpoints_recover_with_weights_only_loads(tiny_teacher, monkeypatch):
    """SpeechBrain's own loaders (model, normaliser, LR scheduler; the optimiser is registered by the Brain) under weights_only."""
    from kd_brain.pipeline.modeldir import saved_config

    real, calls = torch.load, []

    def strict_load(*args, **kwargs):
        assert kwargs.get("weights_only") is not False, f"torch.load{args} with weights_only=False"
        calls.append(args[0])
        return real(*args, **{**kwargs, "weights_only": True})

    monkeypatch.setattr(torch, "load", strict_load)
    cfg = saved_config(str(tiny_teacher / "teacher"))
    assert cfg["checkpointer"].recover_if_possible() is not None
    assert {os.path.basename(str(c)) for c in calls} >= {"model.ckpt", "normalize.ckpt", "lr_scheduler.ckpt"}


def test_a_checkpoint_that_would_run_code_is_refused(tiny_teacher, tmp_path):
    """A model file holding a pickled callable is an error, and the callable never runs."""
    import pickle

    from kd_brain.decode.transcribe import load_model

    folder = tmp_path / "teacher"
    shutil.copytree(tiny_teacher / "teacher", folder)
    # the copied config still points at the original checkpoint folder: point it at the copy
    cfg = (folder / "hyperparams.yaml").read_text().replace(str(tiny_teacher / "teacher"), str(folder))
    (folder / "hyperparams.yaml").write_text(cfg)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for ckpt in folder.glob("save/*/model.ckpt"):
        torch.save({"head.weight": Payload()}, ckpt, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        load_model(str(folder))
    assert not marker.exists()
