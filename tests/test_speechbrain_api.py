"""The SpeechBrain internals this project relies on are still there, with the parameters it expects.

kd_brain overrides three private ``Brain`` methods and, for one save at a
time, the Checkpointer's private metafile writer (each with a comment in
kd_brain/brains/ctc.py saying why no public hook does it), and loads
``InputNormalization`` statistics through its registered load hook. A
SpeechBrain upgrade that renames, re-signs or stops calling any of them must
fail here, not silently change training. Checked against SpeechBrain 1.1.2.
"""

import inspect
import re
import time
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, Checkpointer, get_default_hook

from kd_brain.brains.ctc import CTCBrain, TeacherBrain, WallClock, atomic_checkpoints
from kd_brain.brains.student import StudentBrain
from kd_brain.pipeline.modeldir import load_normalization


def params(function):
    return list(inspect.signature(function).parameters)


# (SpeechBrain class, private method, its parameters, our class that overrides it or None if we only call it,
#  a regex its caller in SpeechBrain must still match: the call our override relies on)
PRIVATE = [
    (sb.Brain, "_fit_valid", ["self", "valid_set", "epoch", "enable"], TeacherBrain,
     (sb.Brain.fit, r"self\._fit_valid\(\s*valid_set=valid_set,\s*epoch=epoch,\s*enable=enable\s*\)")),
    (sb.Brain, "_save_intra_epoch_ckpt", ["self"], TeacherBrain,
     (sb.Brain._fit_train, r"self\._save_intra_epoch_ckpt\(\)")),
    (sb.Brain, "_train_loader_specifics", ["self", "dataset", "loader_kwargs"], CTCBrain,
     (sb.Brain.make_dataloader, r"loader_kwargs = self\._train_loader_specifics\(dataset, loader_kwargs\)")),
    (Checkpointer, "_save_checkpoint_metafile", ["self", "fpath", "meta_to_include", "end_of_epoch"], None,
     (Checkpointer.save_checkpoint, r"saved_meta = self\._save_checkpoint_metafile\(\s*ckpt_dir / METAFNAME, meta, "
                                    r"end_of_epoch\s*\)")),
    (InputNormalization, "_load", ["self", "path", "end_of_epoch"], None, None),
]
IDS = [f"{cls.__name__}.{name}" for cls, name, *_ in PRIVATE]


@pytest.mark.parametrize("cls, name, expected, ours, caller", PRIVATE, ids=IDS)
def test_private_method_exists_with_the_parameters_we_expect(cls, name, expected, ours, caller):
    assert name in vars(cls), f"SpeechBrain's {cls.__name__}.{name} is gone: review the override in kd_brain"
    assert params(getattr(cls, name)) == expected, f"SpeechBrain's {cls.__name__}.{name} changed its signature"
    if ours is not None:  # our override takes exactly SpeechBrain's parameters
        assert params(getattr(ours, name)) == expected


@pytest.mark.parametrize("cls, name, expected, ours, caller", [p for p in PRIVATE if p[4]],
                         ids=[i for i, p in zip(IDS, PRIVATE) if p[4]])
def test_speechbrain_still_calls_it_where_we_rely_on_it(cls, name, expected, ours, caller):
    function, pattern = caller
    assert re.search(pattern, inspect.getsource(function)), \
        f"SpeechBrain's {function.__qualname__} no longer calls {name} as kd_brain expects"


@pytest.mark.parametrize("cls, name, ours", [(cls, name, ours) for cls, name, _, ours, _ in PRIVATE if ours],
                         ids=[i for i, p in zip(IDS, PRIVATE) if p[3]])
def test_our_brains_really_override_it(cls, name, ours):
    assert name in vars(ours) and getattr(ours, name) is not getattr(cls, name)


def test_the_student_inherits_the_teachers_overrides():
    for name in ("_fit_valid", "_save_intra_epoch_ckpt", "_train_loader_specifics"):
        assert getattr(StudentBrain, name) is getattr(TeacherBrain, name) is not getattr(sb.Brain, name)


def test_atomic_checkpoint_writes_speechbrains_metafile_last(tmp_path, monkeypatch):
    """Same CKPT.yaml bytes, same files and meta as SpeechBrain's own save; only the order differs."""
    monkeypatch.setattr(time, "time", lambda: 1234.5)  # the meta's unixtime
    metafile_there = {}

    def checkpointer(name):
        def record(obj, path):
            metafile_there[name] = (Path(path).parent / "CKPT.yaml").exists()
            Path(path).write_text("x")

        return Checkpointer(tmp_path / name, {"clock": WallClock(), "probe": object()},
                            custom_save_hooks={"probe": record})

    plain = checkpointer("plain")
    atomic = atomic_checkpoints(checkpointer("atomic"))
    saved = {c: c.save_checkpoint(meta={"WER": 12.5, "epoch": 3}, end_of_epoch=False) for c in (plain, atomic)}
    assert metafile_there == {"plain": True, "atomic": False}  # SpeechBrain writes it first, we write it last
    assert "_save_checkpoint_metafile" not in vars(atomic)  # the instance is SpeechBrain's again after the save
    a, b = saved[plain], saved[atomic]
    assert a.meta == b.meta == {"unixtime": 1234.5, "end-of-epoch": False, "WER": 12.5, "epoch": 3}
    assert (a.path / "CKPT.yaml").read_bytes() == (b.path / "CKPT.yaml").read_bytes()
    assert sorted(p.name for p in a.path.iterdir()) == sorted(p.name for p in b.path.iterdir())
    assert atomic.find_checkpoint().meta == b.meta


def test_normalisation_statistics_load_through_the_registered_hook(tmp_path):
    hook = get_default_hook(InputNormalization(), DEFAULT_LOAD_HOOKS)
    assert hook is not None and params(hook)[1:] == ["path", "end_of_epoch"]
    norm = InputNormalization(norm_type="global")
    norm.train()
    norm(torch.randn(2, 50, 4) * 3 + 1, torch.ones(2), epoch=0)  # statistics from one batch
    ckpt = Checkpointer(tmp_path, {"normalize": norm}).save_checkpoint()
    fresh = InputNormalization(norm_type="global")
    load_normalization(fresh, ckpt)
    assert fresh.count == norm.count and torch.equal(fresh.glob_mean, norm.glob_mean)
    assert torch.equal(fresh.glob_std, norm.glob_std)
