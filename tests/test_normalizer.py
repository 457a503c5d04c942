"""One normaliser policy: a model initialised from another keeps that model's input statistics.

``init_normalizer: frozen`` (the default) leaves the teacher's statistics as
they are through the student's training, so the student hears its noisy audio
normalised the way the teacher's soft labels were made; ``reestimate``
estimates them anew from the student's own training data in its first
epoch. Before the policy existed the student blended a full epoch of noisy
features into the teacher's statistics: both tests below failed then.
"""

import torch
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.checkpoints import Checkpointer

from kd_brain.pipeline.modeldir import best_checkpoint, load_normalization
from tests.conftest import load_recipe, student_argv


def statistics(model_dir):
    """(count, mean, std) of the best checkpoint of a trained model folder."""
    norm = InputNormalization()
    load_normalization(norm, best_checkpoint(Checkpointer(str(model_dir / "save")), str(model_dir)))
    return norm.count, norm.glob_mean, norm.glob_std


def test_student_keeps_the_teachers_statistics_unless_told(kd_exp):
    teacher = statistics(kd_exp / "teacher")
    load_recipe("train").main(student_argv(kd_exp, "--model_name=norm_frozen", "--number_of_epochs=1"))
    frozen = statistics(kd_exp / "norm_frozen")
    assert frozen[0] == teacher[0]
    assert torch.equal(frozen[1], teacher[1]) and torch.equal(frozen[2], teacher[2])

    load_recipe("train").main(student_argv(kd_exp, "--model_name=norm_re", "--number_of_epochs=1",
                                           "--init_normalizer=reestimate"))
    count, mean, std = statistics(kd_exp / "norm_re")
    # estimated from the student's epoch only (its noisy frames), not blended into the teacher's count
    assert 0 < count and count != teacher[0]
    assert (mean - teacher[1]).abs().max() > 1e-3


def test_unknown_policy_is_refused():
    import pytest

    from kd_brain.pipeline.experiment import init_normalizer

    assert init_normalizer({"init_from": None}) is None
    assert init_normalizer({"init_from": "teacher"}) == "frozen"
    with pytest.raises(ValueError, match="init_normalizer=blend"):
        init_normalizer({"init_from": "teacher", "init_normalizer": "blend"})
