"""Teacher training: the loss goes down, runs resume (mid-epoch too), the recipe runs end to end."""

import csv
import os

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_brain.brain import TeacherBrain
from kd_brain.dataio import make_dataset
from tests.conftest import REPO, TINY_OVERRIDES, load_recipe, overrides_argv




def tiny_hparams(tiny_corpus, exp, **extra):
    overrides = {**TINY_OVERRIDES, "corpus_dir": str(tiny_corpus), "exp_folder": str(exp), **extra}
    with open(REPO / "hparams" / "teacher_bed.yaml") as f:
        return load_hyperpyyaml(f, overrides)


class Interrupt(Exception):
    pass


class RecordingBrain(TeacherBrain):
    """Records the utterance IDs of every training batch; can be told to die."""

    die_after = None

    def fit_batch(self, batch):
        if self.die_after is not None and len(self.seen) == self.die_after:
            raise Interrupt()
        self.seen.append(list(batch.id))
        return super().fit_batch(batch)


def make_brain(hp, cls=TeacherBrain, **run_opts):
    hp["tokenizer"] = load_recipe("train").prepare(hp)
    brain = cls(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                run_opts={"device": "cpu", "noprogressbar": True, **run_opts}, checkpointer=hp["checkpointer"])
    train = make_dataset(os.path.join(hp["data_folder"], "labelled.csv"), hp["tokenizer"])
    return brain, train


def test_teacher_ctc_loss_decreases(tiny_corpus, tmp_path):
    hp = tiny_hparams(tiny_corpus, tmp_path, lr=0.003, warmup_steps=1, spec_augment=None)
    brain, train = make_brain(hp)
    brain.train_sampler = None
    loader = sb.dataio.dataloader.make_dataloader(train, batch_size=8)
    batch = next(iter(loader))
    brain.on_fit_start()
    losses = [brain.fit_batch(batch).item() for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_mid_epoch_resume_sees_every_utterance_once(tiny_corpus, tmp_path):
    hp = tiny_hparams(tiny_corpus, tmp_path, number_of_epochs=1)
    brain, train = make_brain(hp, RecordingBrain, ckpt_interval_steps=1)
    sampler = sb.dataio.sampler.DynamicBatchSampler(train, max_batch_length=hp["batch_seconds"], num_buckets=2,
                                                    length_func=lambda x: x["duration"], shuffle=True, seed=1)
    brain.seen, brain.die_after, brain.train_sampler = [], 2, sampler
    with pytest.raises(Interrupt):
        brain.fit(hp["epoch_counter"], train, train_loader_kwargs={"batch_sampler": sampler})
    first = brain.seen
    assert len(first) == 2 and len(list(sampler)) > 3

    hp2 = tiny_hparams(tiny_corpus, tmp_path, number_of_epochs=1)  # a fresh process would rebuild everything
    brain2, train2 = make_brain(hp2, RecordingBrain, ckpt_interval_steps=1)
    sampler2 = sb.dataio.sampler.DynamicBatchSampler(train2, max_batch_length=hp2["batch_seconds"], num_buckets=2,
                                                     length_func=lambda x: x["duration"], shuffle=True, seed=1)
    brain2.seen, brain2.train_sampler = [], sampler2
    brain2.fit(hp2["epoch_counter"], train2, train_loader_kwargs={"batch_sampler": sampler2})
    ids = [u for b in first + brain2.seen for u in b]
    assert sorted(ids) == sorted(train.data_ids), "resumed epoch must finish the interrupted one exactly"


def test_recipe_end_to_end_then_resume(tiny_corpus, tmp_path):
    train = load_recipe("train")
    argv = [str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}", f"--exp_folder={tmp_path}",
            "--noprogressbar"]
    scores = train.main(argv + overrides_argv(number_of_epochs=2))
    assert set(scores) == {"dev", "clean"}
    assert scores["clean"]["n_utts"] == 12 and 0 <= scores["clean"]["beam"] <= 1000
    out = tmp_path / "teacher"
    for name in ("wer_clean_greedy.txt", "wer_clean_beam.txt", "wer_dev_beam.txt"):
        assert (out / name).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "| teacher | beam |" in md and "clean (n=12)" in md
    # Asking for one more epoch resumes at epoch 3 instead of starting over.
    train.main(argv + overrides_argv(number_of_epochs=3))
    with open(out / "curve.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [1, 2, 3]


def test_init_from_another_models_checkpoint(tiny_teacher, tiny_corpus, tmp_path):
    hp = tiny_hparams(tiny_corpus, tmp_path, init_from=str(tiny_teacher / "teacher"))
    before = [p.clone() for p in hp["model"].parameters()]
    load_recipe("train").init_from(hp)
    best = hp["checkpointer"].__class__(str(tiny_teacher / "teacher" / "save")).find_checkpoint(min_key="WER")
    saved = torch.load(best.paramfiles["model"], map_location="cpu")
    loaded = hp["model"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(not torch.equal(a, b) for a, b in zip(before, hp["model"].parameters()))


def test_extra_test_manifest_scored_as_a_condition(tiny_teacher, tiny_corpus, tmp_path):
    from kd_brain.data import read_csv, write_csv

    rows = read_csv(tiny_teacher / "data" / "test_clean.csv")[:3]
    extra = tmp_path / "mine.csv"
    write_csv(str(extra), [{"ID": r["ID"], "wav": os.path.abspath(r["wav"]), "wrd": r["wrd"]} for r in rows],
              ["ID", "wav", "wrd"])
    scores = load_recipe("train").main([str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}",
                                        f"--exp_folder={tiny_teacher}", "--noprogressbar",
                                        f"--extra_test={{mine: {extra}}}"] + overrides_argv(number_of_epochs=1))
    assert scores["mine"]["n_utts"] == 3 and "clean" in scores
    assert (tiny_teacher / "teacher" / "wer_mine_beam.txt").is_file()
