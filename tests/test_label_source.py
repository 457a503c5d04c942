"""Label sources and targets: the best checkpoint labels, any model folder teaches, transcripts are real.

The first three tests guard against, in turn: extraction reading the most
recent checkpoint instead of the best; CTC / MWER training on the unlabelled
rows' placeholder token; a model trained with the student config failing as
``teacher_dir`` (KeyError: data_folder).
"""

import json
import os
import types

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_brain.brains.ctc import TeacherBrain
from kd_brain.data.prepare import read_csv
from kd_brain.pipeline.modeldir import load_tokenizer, origin_config, saved_config
from kd_brain.store import SoftLabelStore
from kd_brain.brains.student import StudentBrain
from kd_brain.pipeline import experiment
from tests.conftest import REPO, load_recipe, overrides_argv, student_argv

EXTRACT = ["--noprogressbar", "--k=5", "--nbest=2", "--beam_size=2"]


def run_extract(exp, out, *extra):
    load_recipe("extract").main([str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={exp}",
                                 f"--output_folder={out}", *EXTRACT, *extra])
    return SoftLabelStore(str(out))


def test_extraction_reads_the_best_checkpoint_not_the_last(tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    load_recipe("train").main([str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}",
                               f"--exp_folder={exp}", "--noprogressbar"] + overrides_argv(number_of_epochs=1))
    reference = run_extract(exp, tmp_path / "one_checkpoint")
    # A later checkpoint of a much worse model (the bed teacher: best epoch 11, last epoch 15)
    thp = saved_config(exp / "teacher")
    best = thp["checkpointer"].find_checkpoint(min_key="WER")
    thp["checkpointer"].load_checkpoint(best)
    TeacherBrain(modules=thp["modules"], hparams=thp, run_opts={"device": "cpu"},
                 checkpointer=thp["checkpointer"])  # a complete checkpoint: the Brain is a recoverable too
    with torch.no_grad():
        for p in thp["model"].parameters():
            p.add_(torch.randn_like(p))
    thp["checkpointer"].save_checkpoint(meta={"WER": 1000.0, "epoch": 2})
    assert thp["checkpointer"].find_checkpoint().path != best.path  # the most recent is the bad one
    store = run_extract(exp, tmp_path / "two_checkpoints")
    assert store.meta["teacher_checkpoint"] == os.path.relpath(best.path, exp / "teacher")
    assert store.meta["teacher_checkpoint_hash"] == reference.meta["teacher_checkpoint_hash"]
    assert store.meta["teacher_dev_wer"] == best.meta["WER"]
    for u in reference:
        assert torch.equal(store[u].indices, reference[u].indices), u
        assert torch.equal(store[u].log_probs, reference[u].log_probs), u


def student_hparams(exp, *extra):
    hparams_file, _, overrides = sb.parse_arguments(student_argv(exp, *extra))
    with open(hparams_file) as f:
        return load_hyperpyyaml(f, overrides)


def ids(path):
    return {r["ID"] for r in read_csv(path)}


@pytest.mark.parametrize("criterion", ["ctc", "mwer", "frame"])
def test_transcript_criteria_leave_out_the_unlabelled_rows(kd_exp, criterion):
    hp = student_hparams(kd_exp, f"--criterion={criterion}")  # default train_splits: labelled + unlabelled
    thp = origin_config(hp["teacher_dir"])
    train_set, _, _ = experiment.student_data(hp, load_tokenizer(thp), thp["data_folder"])
    labelled, unlabelled = ids(kd_exp / "data" / "labelled.csv"), ids(kd_exp / "data" / "unlabelled.csv")
    assert labelled and unlabelled
    expected = labelled | unlabelled if criterion == "frame" else labelled
    assert set(train_set.data_ids) == expected


def test_transcript_criterion_refuses_a_batch_without_transcripts():
    brain = StudentBrain.__new__(StudentBrain)
    brain.hparams = types.SimpleNamespace(criterion="ctc")
    batch = types.SimpleNamespace(id=["lab1", "unl1"], labelled=types.SimpleNamespace(data=torch.tensor([[True], [False]])))
    with pytest.raises(ValueError, match="criterion=ctc: utterance unl1 has no transcript"):
        brain._loss_ctc(None, torch.zeros(2, 5, 30), torch.ones(2), batch)


def test_sequence_trained_model_and_student_are_label_sources(kd_exp, tmp_path):
    """teacher_seq (a student-config model) labels data and teaches; so does a student (generation 2)."""
    train = load_recipe("train")
    train.main(student_argv(kd_exp, "--criterion=mwer", "--model_name=src_seq", "--init_from=teacher",
                            "--train_splits=[labelled]", "--contaminate=False", "--number_of_epochs=1"))
    store = run_extract(kd_exp, tmp_path / "from_seq", f"--teacher_dir={kd_exp / 'src_seq'}")
    assert store.meta["teacher_dir"] == str(kd_exp / "src_seq")
    assert sorted(store) == sorted(ids(kd_exp / "data" / "labelled.csv") | ids(kd_exp / "data" / "unlabelled.csv"))
    scores = train.main(student_argv(kd_exp, f"--teacher_dir={kd_exp / 'src_seq'}", f"--store_dir={tmp_path / 'from_seq'}",
                                     "--model_name=gen1", "--init_from=src_seq", "--number_of_epochs=1"))
    assert scores["clean"]["n_utts"] == 12 and "lm" in scores["clean"]  # decoded with the origin teacher's LM
    gen2 = run_extract(kd_exp, tmp_path / "from_student", f"--teacher_dir={kd_exp / 'gen1'}")
    assert sorted(gen2) == sorted(store)
    assert gen2.meta["teacher_checkpoint_hash"] != store.meta["teacher_checkpoint_hash"]


def test_pseudo_labels_then_the_pseudo_label_baseline(kd_exp, tmp_path, monkeypatch):
    recipe = load_recipe("pseudo_label")
    unlabelled = read_csv(kd_exp / "data" / "unlabelled.csv")
    first = unlabelled[0]["ID"]

    def stand_in(origin, tokenizer, beam_size):
        # the tiny teacher decodes nothing yet: a stand-in decoder says "HELLO" for all but one utterance
        lm, name = real(origin, tokenizer, beam_size)
        assert name == "lm"  # the teacher config has an n-gram LM: its headline decoder
        return (lambda lp, lens: [["HELLO"] if i else [] for i in range(len(lens))]), name

    real = recipe.headline_decoder
    monkeypatch.setattr(recipe, "headline_decoder", stand_in)
    out = tmp_path / "pseudo" / "unlabelled.csv"
    argv = [str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={kd_exp}", f"--pseudo_csv={out}", "--noprogressbar",
            "--batch_size=100"]
    recipe.main(argv)
    rows = read_csv(out)
    info = json.loads((tmp_path / "pseudo" / "unlabelled.csv.json").read_text())
    assert info["utterances"] == len(rows) == len(unlabelled) - 1 and info["empty"] == 1
    assert {r["ID"] for r in rows} < {r["ID"] for r in unlabelled} and all(r["wrd"] == "HELLO" for r in rows)
    assert first in {r["ID"] for r in unlabelled}
    mtime = out.stat().st_mtime_ns
    recipe.main(argv)  # same checkpoint: skipped
    assert out.stat().st_mtime_ns == mtime
    hp = student_hparams(kd_exp, "--criterion=ctc", f"--train_splits=[labelled,{out}]")
    thp = origin_config(hp["teacher_dir"])
    train_set, _, _ = experiment.student_data(hp, load_tokenizer(thp), thp["data_folder"])
    assert set(train_set.data_ids) == ids(kd_exp / "data" / "labelled.csv") | {r["ID"] for r in rows}
