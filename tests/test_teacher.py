"""Teacher training: the loss goes down, runs resume (mid-epoch too), the recipe runs end to end."""

import csv
import json
import os

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from kd_brain.brains.ctc import TeacherBrain
from kd_brain.data.dataio import make_dataset
from kd_brain.pipeline.experiment import prepare
from kd_brain.pipeline import experiment
from tests.conftest import REPO, TINY_ARCH, TINY_OVERRIDES, load_recipe, overrides_argv




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
    tok, _ = experiment.prepare(hp)
    brain = cls(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                run_opts={"device": "cpu", "noprogressbar": True, **run_opts}, checkpointer=hp["checkpointer"],
                tokenizer=tok)
    train = make_dataset(os.path.join(hp["data_folder"], "labelled.csv"), tok)
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
    tok, _ = experiment.prepare(hp)
    before = [p.clone() for p in hp["model"].parameters()]
    experiment.init_from(hp, tok)
    best = hp["checkpointer"].__class__(str(tiny_teacher / "teacher" / "save")).find_checkpoint(min_key="WER")
    saved = torch.load(best.paramfiles["model"], map_location="cpu")
    loaded = hp["model"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(not torch.equal(a, b) for a, b in zip(before, hp["model"].parameters()))


def test_init_from_a_model_with_other_units_starts_a_new_output_layer(tiny_teacher, tiny_corpus, tmp_path):
    """Sub-words of another corpus: everything but the output layer comes from the source model."""
    hp = tiny_hparams(tiny_corpus, tmp_path, init_from=str(tiny_teacher / "teacher"), token_type="unigram")
    tok, _ = experiment.prepare(hp)
    head_before = hp["model"].head.weight.clone()
    experiment.init_from(hp, tok)
    best = hp["checkpointer"].__class__(str(tiny_teacher / "teacher" / "save")).find_checkpoint(min_key="WER")
    saved = torch.load(best.paramfiles["model"], map_location="cpu")
    loaded = hp["model"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if not k.startswith("head."))
    assert torch.equal(loaded["head.weight"], head_before)  # units differ: not the source's head
    assert not torch.equal(saved["head.weight"], head_before)


def test_init_from_another_architecture_is_an_error(tiny_teacher, tiny_corpus, tmp_path):
    hp = tiny_hparams(tiny_corpus, tmp_path, init_from=str(tiny_teacher / "teacher"),
                      arch={**TINY_ARCH, "num_layers": 2})
    tok, _ = experiment.prepare(hp)
    with pytest.raises(ValueError, match="another architecture .*unexpected \\[\\]"):
        experiment.init_from(hp, tok)


def test_init_from_a_missing_model_names_both_places(tiny_corpus, tmp_path):
    hp = tiny_hparams(tiny_corpus, tmp_path, init_from="no_such_teacher")
    with pytest.raises(FileNotFoundError, match=f"init_from=no_such_teacher: .*{tmp_path}/no_such_teacher or no_such_teacher"):
        experiment.init_from(hp, None)


def test_extra_test_manifest_scored_as_a_condition(tiny_teacher, tiny_corpus, tmp_path):
    from kd_brain.data.prepare import read_csv, write_csv

    rows = read_csv(tiny_teacher / "data" / "test_clean.csv")[:3]
    extra = tmp_path / "mine.csv"
    write_csv(str(extra), [{"ID": r["ID"], "wav": os.path.abspath(r["wav"]), "wrd": r["wrd"]} for r in rows],
              ["ID", "wav", "wrd"])
    scores = load_recipe("train").main([str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}",
                                        f"--exp_folder={tiny_teacher}", "--noprogressbar",
                                        f"--extra_test={{mine: {extra}}}"] + overrides_argv(number_of_epochs=1))
    assert scores["mine"]["n_utts"] == 3 and "clean" in scores
    assert (tiny_teacher / "teacher" / "wer_mine_beam.txt").is_file()


SUBWORD_AUX = {"arch": {**TINY_ARCH, "num_layers": 2, "aux_vocab_size": 30, "aux_layer": 1},
               "vocab_size": 50, "token_type": "unigram"}


def test_subword_teacher_with_auxiliary_character_ctc(tiny_corpus, tmp_path):
    """Sub-word units + character CTC on layer 1: both heads learn, the char tokenizer sees labelled text only."""
    hp = tiny_hparams(tiny_corpus, tmp_path, lr=0.003, warmup_steps=1, spec_augment=None, aux_ctc_weight=0.5,
                      **SUBWORD_AUX)
    tokenizer, aux = prepare(hp)
    assert tokenizer.vocab_size == 50 and aux.vocab_size == 30 and aux.hash != tokenizer.hash
    with open(tmp_path / "data" / "tokenizer_char30" / "tokenizer.json") as f:
        assert json.load(f)["manifest"].endswith("labelled.csv")
    brain = TeacherBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                         run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=hp["checkpointer"],
                         tokenizer=tokenizer)
    train = make_dataset(os.path.join(hp["data_folder"], "labelled.csv"), tokenizer, aux_tokenizer=aux)
    batch = next(iter(sb.dataio.dataloader.make_dataloader(train, batch_size=8)))
    assert batch.aux_tokens.data.shape[1] > batch.tokens.data.shape[1]  # characters outnumber sub-words
    brain.on_fit_start()
    aux_before = hp["model"].aux_head.weight.clone()
    preds = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert len(preds) == 3 and preds[0].shape[-1] == 50 and preds[2].shape[-1] == 30
    assert len(brain.compute_forward(batch, sb.Stage.VALID)) == 2  # decoding reads the main head only
    losses = [brain.fit_batch(batch).item() for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert not torch.equal(aux_before, hp["model"].aux_head.weight)


def test_aux_head_frozen_where_no_criterion_trains_it(tiny_corpus, tmp_path):
    for weight, trainable in ((0.0, False), (0.5, True)):
        hp = tiny_hparams(tiny_corpus, tmp_path / str(weight), aux_ctc_weight=weight, **SUBWORD_AUX)
        experiment.freeze_unused_aux_head(hp)
        assert all(p.requires_grad == trainable for p in hp["model"].aux_head.parameters())
        assert all(p.requires_grad for p in hp["model"].head.parameters())


def test_aux_weight_without_aux_head_is_an_error(tiny_corpus, tmp_path):
    argv = [str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}", f"--exp_folder={tmp_path}",
            "--noprogressbar"] + overrides_argv(number_of_epochs=1, aux_ctc_weight=0.3)
    with pytest.raises(ValueError, match="aux_ctc_weight=0.3 but the model has no auxiliary head"):
        load_recipe("train").main(argv)


def test_tune_lm_grid_on_dev_only(tiny_teacher):
    tune = load_recipe("tune_lm")
    res = tune.main([str(tiny_teacher / "teacher"), "1.0,0.0", "2.0,-1.0"])
    assert set(res) == {(1.0, 0.0), (2.0, -1.0)} and all(0 <= w <= 1000 for w in res.values())
    cache = next((tiny_teacher / "teacher").glob("dev_logprobs.*.pt"))  # keyed by the checkpoint's hash
    stamp = cache.stat().st_mtime_ns
    assert tune.main([str(tiny_teacher / "teacher"), "1.0,0.0"]) == {(1.0, 0.0): res[(1.0, 0.0)]}
    assert cache.stat().st_mtime_ns == stamp  # the model ran once
    # the other decoder, a piece n-gram without a lexicon, on the same cached dev log-probs
    piece = tune.main([str(tiny_teacher / "teacher"), "--lm_units=piece", "--lm_order=5", "1.0,0.0"])
    assert set(piece) == {(1.0, 0.0)} and 0 <= piece[(1.0, 0.0)] <= 1000
    assert cache.stat().st_mtime_ns == stamp
    assert any(p.name.endswith("_piece") for p in (tiny_teacher / "data").glob("lm_5gram_*")), \
        sorted(p.name for p in (tiny_teacher / "data").iterdir())
    with pytest.raises(SystemExit, match="--lm_weights: not a decoding key"):
        tune.main([str(tiny_teacher / "teacher"), "--lm_weights=1", "1.0,0.0"])
