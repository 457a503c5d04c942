"""Student: frame-count checks, a short run learns, the criterion is one command-line key."""

import csv
import types

import pytest
import speechbrain as sb
import torch

from kd_brain.brains.evaluate import headline
from kd_brain.brains.student import FrameMismatchError, StudentBrain
from tests.conftest import load_recipe, student_argv, student_brain

def curve(exp, model):
    with open(exp / model / "curve.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("criterion", ["frame", "sequence"])
def test_criterion_switch_from_command_line(kd_exp, criterion):
    name = f"st_{criterion}"
    scores = load_recipe("train").main(student_argv(kd_exp, f"--criterion={criterion}", f"--model_name={name}",
                                                    "--number_of_epochs=1"))
    saved = (kd_exp / name / "hyperparams.yaml").read_text()
    assert f"criterion: {criterion}" in saved
    assert len(curve(kd_exp, name)) == 1 and scores["clean"]["n_utts"] == 12
    # both dev conditions selected the checkpoint and are scored: with one epoch the best checkpoint is
    # that epoch's, so the mean of their headline WERs is the curve's dev WER (the selection rule)
    with open(kd_exp / name / "curve.csv") as f:
        dev_wer = float(next(csv.DictReader(f))["dev_wer"])
    assert scores["dev_noisy"]["n_utts"] == scores["dev"]["n_utts"] > 0
    decoder = headline(scores["dev"])
    assert (scores["dev"][decoder] + scores["dev_noisy"][decoder]) / 2 == pytest.approx(dev_wer, abs=0.011)
    # the two criteria are different numbers on the same model, data and seed
    if criterion == "sequence":
        assert curve(kd_exp, "st_sequence")[0] != pytest.approx(curve(kd_exp, "st_frame")[0], rel=1e-3)


def test_unknown_criterion_refused(kd_exp):
    with pytest.raises(ValueError, match="criterion='bogus': choose one of"):
        load_recipe("train").main(student_argv(kd_exp, "--criterion=bogus", "--model_name=st_bogus",
                                               "--number_of_epochs=1"))


def test_student_frame_kd_loss_decreases(kd_exp):
    hparams_file, run_opts, overrides = sb.parse_arguments(student_argv(kd_exp, "--model_name=st_steps",
                                                                        "--lr=0.003", "--warmup_steps=1"))
    from hyperpyyaml import load_hyperpyyaml

    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, overrides)
    brain, train_set = student_brain(hp)
    batch = next(iter(sb.dataio.dataloader.make_dataloader(train_set, batch_size=8)))
    assert batch.noisy_sig.data.shape == batch.sig.data.shape  # contaminated copy, same length
    assert not torch.equal(batch.noisy_sig.data, batch.sig.data)
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    losses = [brain.fit_batch(batch).item() for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_frame_count_mismatch_names_the_utterance():
    brain = StudentBrain.__new__(StudentBrain)
    brain.hparams = types.SimpleNamespace(frame_tolerance=0)
    idx = torch.zeros(2, 10, 3, dtype=torch.long)
    batch = types.SimpleNamespace(id=["u1", "u2"], kd_idx=(idx, torch.tensor([1.0, 0.9])),
                                  kd_logp=(torch.zeros(2, 10, 3), torch.tensor([1.0, 0.9])))
    log_probs = torch.zeros(2, 10, 30).log_softmax(-1)
    with pytest.raises(FrameMismatchError, match="utterance u2: student has 8 output frames, the stored teacher labels 9"):
        brain._loss_frame(None, log_probs, torch.tensor([1.0, 0.8]), batch)
