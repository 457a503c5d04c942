"""The stage plan: which command each stage of the chain runs, for a corpus, a seed and units.

A stage is ``(name, argv)``; ``argv`` runs from the repository root
(``root``), starting with a script of ``recipes/KD-Noise``. The plan is data:
``kd_brain.pipeline.runner`` runs it, the ablation grids
(``kd_brain.pipeline.grids``) derive their rows from it, and a user can read
every command before it runs.
"""

import os

from kd_brain.pipeline import config

R = "recipes/KD-Noise"
CORPORA = ["synthetic", "speechocean762", "librispeech"]
# Sequence training: one MWER epoch at a fifth of the student's LR (dev grid, RESULTS.md)
SEQ_EPOCHS = ["--number_of_epochs=1", "--lr=0.0001"]
# Baselines: the student's initialisation (init_from), contaminator and epochs; only the targets differ.
MULTICONDITION = ["--criterion=ctc", "--model_name=multicondition", "--train_splits=[labelled]"]
# The configs' units are 256 sub-words with the auxiliary character CTC; characters change
# these keys together (the decoder values from the character dev grid, RESULTS.md).
CHAR_UNITS = ["--vocab_size=30", "--token_type=char", "--aux_ctc_weight=0.0", "--lm_units=word", "--lm_order=3",
              "--lm_weight=2.0", "--word_score=-1.0", "--lm_blank_penalty=0.0", "--lm_token_beam=0"]


def merge(argv, extra):
    """argv + extra, where an extra ``--key=value`` replaces the stage's own setting of that key.

    Example
    -------
    >>> merge(["train.py", "s.yaml", "--lr=1", "--k=20"], ["--k=5"])
    ['train.py', 's.yaml', '--lr=1', '--k=5']
    """
    keys = {e.split("=", 1)[0] for e in extra if "=" in e}
    return [a for a in argv if a.split("=", 1)[0] not in keys] + extra


def seq_training(model, init_from, contaminate=True):
    """The overrides that sequence-train ``init_from`` into ``model`` (MWER on the labelled data).

    Example
    -------
    >>> seq_training("teacher_seq", "teacher", contaminate=False)[1:]
    ['--model_name=teacher_seq', '--init_from=teacher', '--train_splits=[labelled]', '--contaminate=False', \
'--number_of_epochs=1', '--lr=0.0001']
    """
    clean = [] if contaminate else ["--contaminate=False"]
    return ["--criterion=mwer", f"--model_name={model}", f"--init_from={init_from}", "--train_splits=[labelled]"] \
        + clean + SEQ_EPOCHS


def default_exp(corpus, units):
    return f"exp/{corpus}" + ("_char" if units == "char" else "")


def unit_overrides(units, extra):
    """The overrides of ``--units`` ahead of the user's own (which win on a shared key)."""
    return list(extra) if units == "subword" else merge(CHAR_UNITS, extra)


def pseudo_label_args(run):
    return ["--criterion=ctc", "--model_name=pseudo_label",
            f"--train_splits=[labelled,{run}/pseudo_labels/unlabelled.csv]"]


def yaml_value(root, path, key):
    """A top-level value of a config of this checkout (``path`` relative to ``root``)."""
    return config.value(os.path.join(root, path), key)


def vocab_size(root, extra):
    """The students' units: ``--vocab_size`` among the overrides, else student.yaml's."""
    return next((int(e.split("=", 1)[1]) for e in reversed(extra) if e.startswith("--vocab_size=")),
                int(yaml_value(root, "hparams/student.yaml", "vocab_size")))


def large_overrides(root, section):
    """``--key=value`` of one section of hparams/large.yaml (the full-scale student or extraction)."""
    return [f"--{k}={config.flow(v)}" for k, v in config.value(os.path.join(root, "hparams", "large.yaml"),
                                                                 section).items()]


def librispeech_plan(root, exp, data_root):
    """The full-scale export stages and the teacher's and students' arguments.
    Without ``data_root`` (the report's model names only), the exports' paths are placeholders."""
    data_root = data_root or "<data_root>"
    kaldi, public = f"{exp}/kaldi", f"{exp}/public"
    voices = os.path.join(data_root, "VOiCES_devkit")
    voices = voices if os.path.isdir(voices) else None
    first = [("corpus", [f"{R}/prepare_librispeech.py", os.path.join(data_root, "LibriSpeech"), kaldi]
              + (["--voices", voices] if voices else [])),
             ("noise", [f"{R}/prepare_noise.py", "musan", os.path.join(data_root, "musan"), public]),
             ("rooms", [f"{R}/prepare_noise.py", "rirs_noises", os.path.join(data_root, "RIRS_NOISES"), public])]
    teacher = ["hparams/teacher_large.yaml", f"--corpus_dir={kaldi}"]
    tests = {"test_other": f"{exp}/data/test_other.csv"}
    noise = [f"--noise_csv={public}/noise/musan.csv", "--reserved_sources=[jamendo,us-gov]",
             f"--train_rooms={public}/rir/simulated_rirs.csv", f"--rir_csv={public}/rir/real_rirs.csv"]
    if voices:  # VOiCES as the clean and the (real) rerecorded test set; its speakers out of training
        tests["test_librispeech"] = f"{exp}/data/test_librispeech.csv"
        teacher += ['--splits={test: [voices-test], test_librispeech: [test-clean]}',
                    f"--exclude_csv={kaldi}/voices_librispeech.csv",
                    f"--extra_test={config.flow({'test_librispeech': tests['test_librispeech']})}"]
        noise.append(f"--recorded_csv={kaldi}/voices-test_recorded.csv")
    students = noise + large_overrides(root, "student") + [f"--extra_test={config.flow(tests)}"]
    return first, teacher, students, noise


def corpus_args(root, corpus, hours, exp, run, units, data_root, shared):
    """(first stages, teacher argv, student argv, noise overrides of prepare, extraction overrides)."""
    if corpus == "synthetic":
        teacher = ["hparams/teacher.yaml", f"--exp_folder={run}", f"--corpus_dir={exp}/corpus"]
        noise = [] if os.path.isdir(shared) else [  # no real media: the corpus's own TTS talk and synth music
            f"--noise_csv={exp}/corpus/noise/noise.csv", "--reserved_sources=[]"]
        first = [("corpus", [f"{R}/make_synthetic.py", "--out", f"{exp}/corpus", "--hours", str(hours),
                             "--train-speakers", "165"])]
        return first, teacher, ["hparams/student.yaml", f"--exp_folder={run}"] + noise, noise, []
    if corpus == "librispeech":
        first, teacher, large, noise = librispeech_plan(root, exp, data_root)
        teacher.insert(1, f"--exp_folder={run}")
        return (first, teacher, ["hparams/student.yaml", f"--exp_folder={run}"] + large, noise,
                large_overrides(root, "extract"))
    # From scratch the bed teacher stays at the CTC plateau on 2 cores; it starts from the
    # synthetic-corpus teacher of the main job (run that first).
    teacher = ["hparams/teacher_bed.yaml", f"--exp_folder={run}", f"--init_from={default_exp('synthetic', units)}/teacher"]
    return [], teacher, ["hparams/student.yaml", f"--exp_folder={run}"], [], []


def stages(root, corpus, hours, exp, seed_index=0, units="subword", data_root=None, teacher_epochs=None,
           student_epochs=None, shared=""):
    """([(name, argv)], run folder) of a corpus; argv runs from ``root``.

    Seed 0 is the default run in ``exp``; seed i > 0 trains every model again
    in ``exp/seed<i>`` with seeds offset by i, on the corpus, manifests,
    tokenizer, LM and test conditions of ``exp`` (``prep_folder``).
    ``teacher_epochs`` / ``student_epochs`` (None: the YAML's) set the teacher's and
    the frame-level students' epochs (student and both baselines, which share them);
    the sequence-training stages keep their one epoch. ``shared`` is the folder of
    real noise and rooms (without it the synthetic corpus brings its own noise).

    Example
    -------
    >>> import os
    >>> root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    >>> plan, run = stages(root, "synthetic", 3.3, "exp/s", seed_index=1)
    >>> run, [name for name, _ in plan][:3]
    ('exp/s/seed1', ['teacher', 'teacher_seq', 'extract'])
    """
    run = exp if seed_index == 0 else f"{exp}/seed{seed_index}"
    first, teacher, student, noise, extract = corpus_args(root, corpus, hours, exp, run, units, data_root, shared)
    if seed_index:
        teacher += [f"--prep_folder={exp}", f"--seed={yaml_value(root, teacher[0], 'seed') + seed_index}"]
        student += [f"--prep_folder={exp}", f"--seed={yaml_value(root, student[0], 'seed') + seed_index}"]
        first = []
    plan = first if seed_index else first + [
        ("prepare", [f"{R}/prepare.py", teacher[0], "hparams/student.yaml"] + teacher[1:] + noise)]
    teacher += [f"--number_of_epochs={teacher_epochs}"] if teacher_epochs else []  # training only, not prepare
    student += [f"--number_of_epochs={student_epochs}"] if student_epochs else []
    return plan + [
        ("teacher", [f"{R}/train.py"] + teacher),
        ("teacher_seq", [f"{R}/train.py"] + merge(student, seq_training("teacher_seq", "teacher", contaminate=False))),
        ("extract", [f"{R}/extract.py", "hparams/extract.yaml", f"--exp_folder={run}"] + extract),
        ("student", [f"{R}/train.py"] + student),
        ("student_seq", [f"{R}/train.py"] + merge(student, seq_training("student_seq", "student"))),
        ("multicondition", [f"{R}/train.py"] + merge(student, MULTICONDITION)),
        ("pseudo_labels", [f"{R}/pseudo_label.py", "hparams/extract.yaml", f"--exp_folder={run}"] + extract),
        ("pseudo_label", [f"{R}/train.py"] + merge(student, pseudo_label_args(run))),
    ], run
