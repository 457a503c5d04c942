"""Shared fixtures: a tiny Kaldi-layout corpus cut from the real bed."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SPEECH = SHARED / "speech" / "speechocean762"

# With CI=true a test never skips for a missing resource (../shared/data, a TTS engine, a test extra): CI has
# them all, so such a skip would be a test that silently did not run. It fails instead. Only skips made with
# skip_by_design (the test cannot run on any machine of that kind: no GPU, not root) stay skips.
BY_DESIGN = "by design: "


def in_ci():
    return os.environ.get("CI") == "true"


def need(condition, reason):
    """Skips the calling test unless ``condition`` holds; with ``CI=true`` it fails instead."""
    if not condition:
        if in_ci():
            pytest.fail(f"{reason} (CI=true: a missing resource fails, it does not skip)", pytrace=False)
        pytest.skip(reason)


def need_module(name):
    """``pytest.importorskip`` through :func:`need`: the imported module."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    need(False, f"needs the Python package {name} (pip install -e '.[test]')")


def skip_by_design(reason):
    """A skip that stays one under CI: the test cannot run on any machine like this one."""
    pytest.skip(BY_DESIGN + reason)


def _fail_skip_under_ci(report):
    # any skip not made by skip_by_design (a skipif marker, a bare pytest.skip or importorskip, in a test,
    # a fixture or at module level) fails under CI=true; expected failures (xfail) are left alone
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.startswith("Skipped: " + BY_DESIGN):
            report.outcome, report.longrepr = "failed", f"skipped under CI=true: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_skip_under_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_skip_under_ci((yield).get_result())


def write_rows(path, rows):
    """A CSV with the first row's keys as header; returns the path as str."""
    from kd_brain.data.prepare import write_csv

    write_csv(str(path), rows, list(rows[0]))
    return str(path)


def write_kaldi_dir(path, utts):
    """utts: list of (utt_id, wav_path, spk, text)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "wav.scp").write_text("".join(f"{u} {w}\n" for u, w, _, _ in utts))
    (path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, _, s, _ in utts))
    (path / "text").write_text("".join(f"{u} {t}\n" for u, _, _, t in utts))


def _subset(split, n_spk, n_utt):
    lines = (SPEECH / split / "wav.scp").read_text().splitlines()
    text = dict(line.split(maxsplit=1) for line in (SPEECH / split / "text").read_text().splitlines())
    spk = dict(line.split() for line in (SPEECH / split / "utt2spk").read_text().splitlines())
    by_spk = {}
    for line in lines:
        u, w = line.split()
        by_spk.setdefault(spk[u], []).append((u, str(SPEECH / w), spk[u], text[u]))
    return [x for s in sorted(by_spk)[:n_spk] for x in by_spk[s][:n_utt]]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """8 training and 2 test speakers of the real bed, 6 utterances each (absolute paths)."""
    need(SPEECH.is_dir(), f"{SPEECH} not present (the shared data beside the checkout)")
    root = tmp_path_factory.mktemp("tiny_corpus")
    write_kaldi_dir(root / "train", _subset("train", 8, 6))
    write_kaldi_dir(root / "test", _subset("test", 2, 6))
    return root


@pytest.fixture(scope="session")
def tiny_prepared(tiny_corpus, tmp_path_factory):
    from kd_brain.data.prepare import prepare_corpus

    out = tmp_path_factory.mktemp("tiny_prepared")
    paths = prepare_corpus(tiny_corpus, out, labelled_fraction=0.5, n_dev_speakers=2, seed=3, num_workers=1)
    return out, paths


# Overrides that shrink the CPU teacher config to seconds (the model's sizes go inside
# ``arch``, the include of hparams/model.yaml).
TINY_ARCH = {"d_model": 32, "num_layers": 1, "nhead": 2, "d_ffn": 64, "frontend_channels": 4, "n_mels": 40,
             "aux_vocab_size": 0}
# Characters: the tiny corpus supports at most 68 unigram pieces (tests/test_teacher.py
# runs its sub-word teacher with the auxiliary head).
TINY_OVERRIDES = {
    "arch": TINY_ARCH, "vocab_size": 30, "token_type": "char", "aux_ctc_weight": 0.0, "batch_seconds": 20, "num_buckets": 2, "num_workers": 0,
    "labelled_fraction": 0.5, "n_dev_speakers": 2, "prep_workers": 1, "beam_size": 2, "test_batch_size": 4,
    "ckpt_interval_minutes": 0, "warmup_steps": 5,
}


def tiny_noise(tmp):
    """A manifest of 8 of the real noise clips (3 music, 3 talk, 2 reserved), as overrides: the conditions
    decode 4, not 72."""
    from kd_brain.data.prepare import read_csv, write_csv

    rows = read_csv(str(SHARED / "noise" / "noise.csv"))
    keep = {"warzone2100": 3, "asterisk-en": 3, "fillets-en": 1, "singularity": 1}
    rows = [r for r in rows if keep.get(r["source"], 0) > sum(x["source"] == r["source"] for x in rows[:rows.index(r)])]
    write_csv(str(tmp / "noise.csv"), rows, list(rows[0]))
    return [f"--noise_csv={tmp / 'noise.csv'}", f"--noise_root={SHARED}"]


def prepare_tiny(exp, corpus, teacher_yaml="teacher_bed.yaml"):
    """prepare.py on a tiny corpus into ``exp``: manifests, tokenizer, a 6-room bank, the test conditions and
    dev_noisy (8 real noise clips)."""
    import functools

    module = load_recipe("prepare")
    module.simulate_room_bank = functools.partial(module.simulate_room_bank, n_rooms=6, n_test_rooms=2)
    module.main([str(REPO / "hparams" / teacher_yaml), str(REPO / "hparams" / "student.yaml"),
                 f"--corpus_dir={corpus}", f"--exp_folder={exp}"] + overrides_argv() + tiny_noise(Path(exp)))


def flow(value):
    """A command-line override value: YAML flow style for a mapping (``{d_model: 32}``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return value


def overrides_argv(**kw):
    return [f"--{k}={flow(v)}" for k, v in {**TINY_OVERRIDES, **kw}.items()]


def load_recipe(name):
    """Imports recipes/KD-Noise/<name>.py (the folder name is not a package name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"kd_recipe_{name}", REPO / "recipes" / "KD-Noise" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_teacher(tiny_corpus, tmp_path_factory):
    """A 1-epoch teacher on the tiny corpus; returns its exp folder."""
    exp = tmp_path_factory.mktemp("tiny_exp")
    load_recipe("train").main([str(REPO / "hparams" / "teacher_bed.yaml"), f"--corpus_dir={tiny_corpus}",
                               f"--exp_folder={exp}", "--noprogressbar"] + overrides_argv(number_of_epochs=1))
    return exp


# Model and batch settings of the tiny teacher, for student configs.
MODEL_KEYS = ["arch", "vocab_size",
              "beam_size", "num_workers", "test_batch_size", "batch_seconds", "num_buckets"]


@pytest.fixture(scope="session")
def kd_exp(tiny_teacher):
    """The tiny teacher's folder with a soft-label store and a small room bank."""
    from kd_brain.noise.rooms import simulate_room_bank

    load_recipe("extract").main([str(REPO / "hparams" / "extract.yaml"), f"--exp_folder={tiny_teacher}",
                                 "--noprogressbar", "--k=5", "--nbest=2", "--beam_size=2"])
    simulate_room_bank(str(tiny_teacher / "rooms.pt"), n_rooms=6, n_test_rooms=2, num_workers=1)
    write_dev_noisy(tiny_teacher)
    return tiny_teacher


def write_dev_noisy(exp):
    """The prepare stage's dev_noisy of ``exp`` (student.yaml's noise, rooms and seed), no test condition."""
    from kd_brain.noise.conditions import write_conditions

    need((SHARED / "noise" / "noise.csv").is_file(), f"{SHARED}/noise (real noise clips) not found")
    write_conditions(str(exp / "data" / "test_clean.csv"), str(exp / "conditions"), str(SHARED / "noise" / "noise.csv"),
                     str(exp / "rooms.pt"), str(SHARED / "rir" / "rir.csv"), conditions=(),
                     cache_dir=str(exp / "noise_cache"), dev_csv=str(exp / "data" / "dev.csv"))


def student_argv(exp, *extra):
    """A student config shrunk like the tiny teacher, in ``exp``."""
    tiny = [f"--{k}={flow(TINY_OVERRIDES[k])}" for k in MODEL_KEYS]
    return [str(REPO / "hparams" / "student.yaml"), f"--exp_folder={exp}", "--noprogressbar", "--k=5",
            "--mwer_nbest=2", *tiny, *extra]


def student_brain(hp):
    """A StudentBrain on CPU over a student config's training data, as train.py builds them: (brain, train set)."""
    from kd_brain.brains.student import StudentBrain
    from kd_brain.pipeline.experiment import student_data
    from kd_brain.pipeline.modeldir import load_tokenizer, origin_config

    thp = origin_config(hp["teacher_dir"])
    tok = load_tokenizer(thp)
    train_set, _, contaminator = student_data(hp, tok, thp["data_folder"])
    brain = StudentBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                         run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=None, tokenizer=tok,
                         contaminator=contaminator)
    return brain, train_set
