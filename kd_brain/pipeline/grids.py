"""The ablation grids: one student per row, each a stage of the main job's experiment.

    python recipes/KD-Noise/run.py --ablation k                  # k = 1, 5, 10, 20, 40, all V
    python recipes/KD-Noise/run.py --ablation temperature        # T = 1, 2, 4 at the dev-best k and at k = 20
    python recipes/KD-Noise/run.py --ablation all                # every grid
    python recipes/KD-Noise/run.py --ablation k --scale main     # the main job's epochs
    python recipes/KD-Noise/run.py --ablation headline --scale main   # one row of each finding
    python recipes/KD-Noise/run.py --ablation smooth             # k and T grids from a smooth teacher

Each row is a student trained with the main job's teacher, test conditions and
soft-label store; only what the row varies is an override. A row is a stage
(``<exp>/stages/<model>.done``: printed before it runs, skipped when done from the same inputs), so
a grid resumes after an interruption and rows shared by grids train once.
Settings are chosen on dev only, by the selection rule (the mean WER over the dev
conditions, :mod:`kd_brain.results.selection`; the temperature grid runs at the
k it chooses). ``report.md`` in the experiment gathers the tables, plots and
commands (:func:`kd_brain.pipeline.summary.write_report`).

Scales: ``ablation`` (default) trains each row for 2 epochs instead of the
default student's 4, so a whole grid fits a few hours on 2 cores; ``main``
uses the main job's epochs, and its base row is the main job's ``student``.
"""

import os

from kd_brain.pipeline.plan import R, merge, seq_training, stages, yaml_value
from kd_brain.pipeline.runner import run_stage
from kd_brain.results.report import load_results

SCALES = {"ablation": ["--number_of_epochs=2"], "main": []}
PREFIX = {"ablation": "abl", "main": "main"}
K_GRID = [1, 5, 10, 20, 40]
T_GRID = [1.0, 2.0, 4.0]
SIDE_T = "[1.0,2.0,4.0]"
CLEAN_SHARES = (0.0, 0.1, 0.2, 0.3)  # the clean_share grid
MAIN_FRACTION, LABELLED = 0.8, 0.1  # teacher.yaml's labelled share; the paper's (800 h of 8,000 h)
SMOOTH_WEIGHT = 0.2  # the smooth teacher's confidence penalty (EnCTC's weight, Liu et al. 2018)


class Row:
    """One table row: its label, the model it trains, its stages ``[(name, argv)]`` and its experiment
    (the main job's, but for the labelled-fraction rows, whose teacher is another one)."""

    def __init__(self, label, model, stage_list, exp=None):
        self.label, self.model, self.stages, self.exp = label, model, stage_list, exp


class Grid:
    """Builds a grid's rows for an experiment (``exp``) at a scale, from the main job's stages."""

    def __init__(self, root, exp, scale, corpus="synthetic", units="subword", vocab_size=256, hours=3.3, shared=""):
        self.root, self.exp, self.scale, self.vocab, self.corpus, self.units = root, exp, scale, vocab_size, corpus, units
        self.hours, self.shared = hours, shared
        plan, _ = stages(root, corpus, hours, exp, units=units, shared=shared)
        self.main = dict(plan)
        self.student = self.main["student"][1:]  # hparams/student.yaml --exp_folder=... (+ noise)

    def name(self, suffix):
        return f"{PREFIX[self.scale]}_{suffix}"

    def train(self, suffix, *overrides):
        """A student row: the main student's command, the scale's epochs, its own name and overrides."""
        model = self.name(suffix)
        # the row's own overrides last, replacing the scale's (the equal-time row sets its epochs)
        argv = merge(merge([f"{R}/train.py"] + self.student, SCALES[self.scale] + [f"--model_name={model}"]),
                     list(overrides))
        return model, (model, argv)

    def extract(self, folder, *overrides):
        """An extraction stage (no N-best: frame targets only) into ``<exp>/<folder>``."""
        return (f"extract_{folder}", [f"{R}/extract.py", "hparams/extract.yaml", f"--exp_folder={self.exp}",
                                      f"--output_folder={self.exp}/{folder}", "--nbest=0"] + list(overrides))

    def base(self):
        """k = 20, T = 2, frame KD on top-k, all frames, all examples noisy, teacher init (the paper)."""
        if self.scale == "main":
            return Row("base (k=20, T=2)", "student", [("student", [f"{R}/train.py"] + self.student)])
        model, stage = self.train("k20")
        return Row("base (k=20, T=2)", model, [stage])

    def k_row(self, k, temperature=None):
        if k == 20 and temperature in (None, 2.0):
            return self.base()
        extra, label, suffix = [f"--k={k}"], f"k={k}", f"k{k}"
        if k == "all":
            extra, pre = [f"--k={self.vocab}", f"--store_dir={self.exp}/softlabels_all"], [
                self.extract("softlabels_all", f"--k={self.vocab}")]
            label = f"k=all ({self.vocab})"
        else:
            pre = []
        if temperature is not None:  # T = 2 is the k grid's own row: same model
            label = f"{label}, T={temperature:g}"
        if temperature not in (None, 2.0):
            extra.append(f"--temperature={temperature}")
            suffix = f"{suffix}_T{temperature:g}"
        model, stage = self.train(suffix, *extra)
        return Row(label, model, pre + [stage])

    def rows(self, grid, results=None):
        """The rows of ``grid``; ``results`` (the experiment's results.json) for dev-chosen settings."""
        b = self.base()
        if grid == "k":
            return [self.k_row(k) for k in K_GRID + ["all"]]
        if grid == "temperature":  # at the dev-best k, and at the paper's k = 20 when that is another
            return [self.k_row(k, t) for k in dict.fromkeys([self.best_k(results), 20]) for t in T_GRID]
        if grid == "criterion":
            seq_model, seq = self.train("sequence", "--criterion=sequence")
            then_model = b.model + "_seq"
            then = (then_model, merge([f"{R}/train.py"] + self.student, seq_training(then_model, b.model)))
            ctc_model, ctc = self.train("frame_ctc", "--ctc_weight=0.3")
            return [Row("frame", b.model, b.stages), Row("sequence (teacher N-best)", seq_model, [seq]),
                    Row("frame, then sequence training (MWER)", then_model, b.stages + [then]),
                    Row("frame + 0.3 CTC on labelled", ctc_model, [ctc])]
        if grid == "label_source":
            ts_model, ts = self.train("from_teacher_seq", f"--store_dir={self.exp}/softlabels_teacher_seq")
            g2_model, g2 = self.train("generation2", f"--store_dir={self.exp}/softlabels_gen2")
            return [Row("teacher", b.model, b.stages),
                    Row("teacher_seq", ts_model, [self.extract("softlabels_teacher_seq", f"--teacher_dir={self.exp}/"
                                                               "teacher_seq"), ts]),
                    Row("generation 2 (the base student labels)", g2_model,
                        b.stages + [self.extract("softlabels_gen2", f"--teacher_dir={self.exp}/{b.model}"), g2])]
        if grid == "target":
            pre = self.extract("softlabels_targets", f"--side_temperatures={SIDE_T}", "--sampled_k=20",
                               f"--sampled_folder={self.exp}/softlabels_sampled")
            tail_model, tail = self.train("tail", "--target=tail", f"--store_dir={self.exp}/softlabels_targets")
            smp_model, smp = self.train("sampled", "--target=sampled", "--k=20",
                                        f"--store_dir={self.exp}/softlabels_sampled")
            return [Row("top-k renormalised", b.model, b.stages), Row("top-k + tail bucket", tail_model, [pre, tail]),
                    Row("20 sampled units, importance-weighted", smp_model, [pre, smp])]
        if grid == "blank":  # the default (student.yaml) is the base row; the other weights against it
            w0 = default_value(self.root, "blank_weight")
            return [Row(f"{blank_label(w0)} (the default)", b.model, b.stages)] + self.one_key_rows(
                "blank_weight", tuple(w for w in (1.0, 0.5, 0.0) if w != w0), lambda w: f"blank{w:g}", blank_label)
        if grid == "clean_share":  # the default (student.yaml) is the base row; the other shares against it
            c0 = default_value(self.root, "clean_share")
            return [Row(f"{clean_label(c0)} (the default)", b.model, b.stages)] + self.one_key_rows(
                "clean_share", tuple(v for v in CLEAN_SHARES if v != c0), lambda v: f"clean{v:g}", clean_label)
        if grid == "smooth":
            return self.smooth_rows()
        if grid == "normalizer":  # the initialised student's input statistics: the teacher's, or its own
            return [Row("teacher's statistics, frozen (the default)", b.model, b.stages)] + self.one_key_rows(
                "init_normalizer", ("reestimate",), lambda v: "norm_reestimate",
                lambda v: "re-estimated on the student's noisy data")
        if grid == "init":
            rnd_model, rnd = self.train("random_init", "--init_from=null")
            return [Row("from the teacher", b.model, b.stages),
                    Row("random, equal epochs", rnd_model, [rnd]),
                    Row("random, equal wall time (teacher + student)", self.name("random_init_time"),
                        b.stages + [(self.name("random_init_time"), lambda: self.equal_time(b.model))])]
        if grid == "headline":  # the rows behind the findings, the same models as in their own grids
            other = 1.0 if default_value(self.root, "blank_weight") != 1.0 else 0.5
            share = 0.2 if default_value(self.root, "clean_share") == 0.0 else 0.0
            return [b, self.k_row("all"), self.k_row(20, 1.0)] + self.one_key_rows(
                "blank_weight", (other,), lambda w: f"blank{w:g}", blank_label
            ) + self.one_key_rows("clean_share", (share,), lambda v: f"clean{v:g}", clean_label)
        if grid == "labelled_fraction":
            return [Row(f"{MAIN_FRACTION:.0%} labelled (the main job)", b.model, b.stages)] + self.fraction_rows()
        raise ValueError(f"--ablation {grid}: choose one of {GRIDS} or all")

    def smooth_rows(self):
        """A teacher trained with a confidence penalty (``entropy_weight``: its posteriors not peaky), then the
        k grid (1, 5, 20, all) at T = 2 and the T grid (1, 2, 4) at k = 20 of students distilled from it."""
        t_dir = f"{self.exp}/teacher_smooth"
        teacher = ("teacher_smooth", merge(self.main["teacher"], ["--model_name=teacher_smooth",
                                                                   f"--entropy_weight={SMOOTH_WEIGHT}"]))
        folders = {"topk": ("softlabels_smooth", []), "all": ("softlabels_smooth_all", [f"--k={self.vocab}"])}
        b = self.base()
        rows = [Row(f"the default teacher, k=20, T=2 ({b.model})", b.model, b.stages),
                Row(f"smooth teacher (entropy_weight={SMOOTH_WEIGHT:g})", "teacher_smooth", [teacher])]
        for k, t in [(1, 2.0), (5, 2.0), (20, 2.0), ("all", 2.0), (20, 1.0), (20, 4.0)]:
            folder, extra = folders["all" if k == "all" else "topk"]
            store = self.extract(folder, f"--teacher_dir={t_dir}", *extra)
            model, stage = self.train(f"smooth_k{k}" + ("" if t == 2.0 else f"_T{t:g}"), f"--teacher_dir={t_dir}",
                                      "--init_from=teacher_smooth", f"--store_dir={self.exp}/{folder}",
                                      f"--k={self.vocab if k == 'all' else k}", f"--temperature={t}")
            rows.append(Row(f"from the smooth teacher, k={k}, T={t:g}", model, [teacher, store, stage]))
        return rows

    def fraction_rows(self):
        """The paper's 1 : 9 split: a new teacher on 10% of the training speakers (same corpus and
        test sets), trained for the main teacher's number of updates (8x the epochs), then its student."""
        lab = f"{self.exp}_lab{round(LABELLED * 100)}"
        plan = dict(stages(self.root, self.corpus, self.hours, lab, units=self.units, shared=self.shared)[0])
        epochs = round(yaml_value(self.root, "hparams/teacher.yaml", "number_of_epochs") * MAIN_FRACTION / LABELLED)
        same_corpus = [f"--corpus_dir={self.exp}/corpus"] if self.corpus == "synthetic" else []
        fraction = [f"--labelled_fraction={LABELLED}"] + same_corpus
        pre = [("prepare", merge(plan["prepare"], fraction)),
               ("teacher", merge(plan["teacher"], fraction + [f"--number_of_epochs={epochs}"])),
               ("teacher_seq", plan["teacher_seq"]), ("extract", plan["extract"])]
        # the scales' students live side by side in that experiment: the main scale's is main_student
        # (the ablation scale's is its "student", the name its first runs recorded)
        if self.scale == "main":
            name, student = "main_student", merge(plan["student"], ["--model_name=main_student"])
        else:
            name, student = "student", merge(plan["student"], SCALES[self.scale])
        return [Row(f"{LABELLED:.0%} labelled: teacher_seq", "teacher_seq", pre, exp=lab),
                Row(f"{LABELLED:.0%} labelled: student", name, pre + [(name, student)], exp=lab)]

    def one_key_rows(self, key, values, suffix, label):
        """One row per value of one student key (``--key=value``), named and labelled by the value."""
        rows = []
        for v in values:
            model, stage = self.train(suffix(v), f"--{key}={v}")
            rows.append(Row(label(v), model, [stage]))
        return rows

    def equal_time(self, base_model):
        """The equal-wall-time row's command, from the teacher's and the base row's learning curves."""
        from kd_brain.results.ablation import equal_time_epochs
        from kd_brain.results.report import read_curve

        teacher = read_curve(os.path.join(self.root, self.exp, "teacher"))[-1]["elapsed_s"]
        base = read_curve(os.path.join(self.root, self.exp, base_model))
        epochs = equal_time_epochs(teacher, base[-1]["elapsed_s"], len(base))
        return self.train("random_init_time", "--init_from=null", f"--number_of_epochs={epochs}")[1][1]

    def best_k(self, results):
        from kd_brain.results.ablation import dev_best

        rows = [self.k_row(k) for k in K_GRID + ["all"]]
        best = dev_best(results or {"wer": {}}, [(k, r.model) for k, r in zip(K_GRID + ["all"], rows)])
        if best is None:
            raise RuntimeError("--ablation temperature needs the k grid's dev WERs: run --ablation k first")
        return best[0]


def default_value(root, key):
    """student.yaml's ``key`` (of the checkout ``root``) as a float: the base row's setting."""
    return float(yaml_value(root, "hparams/student.yaml", key))


def clean_label(v):
    """A clean_share row's label."""
    return "all noisy (the paper)" if v == 0.0 else f"{v:.0%} clean"


def blank_label(w):
    """A blank_weight row's label."""
    return "all frames alike (blank weight 1)" if w == 1.0 else f"blank-dominated frames x {w:g}"


# headline: k = all, T = 1, the other blank weight and clean share (0.2 from all noisy, else 0)
# against the base (also run at the main scale)
GRIDS = ["k", "temperature", "criterion", "label_source", "target", "blank", "clean_share", "normalizer", "init",
         "labelled_fraction", "headline", "smooth"]


def run_rows(root, exp, rows, extra, main=()):
    """Runs every stage of ``rows`` (done ones are skipped); a callable argv is built when its turn comes.
    A row stage of ``main`` (the main job's stage names: its student, at the main scale) is reused as the
    main job ran it (``run_stage``'s ``reuse``)."""
    for row in rows:
        for name, argv in row.stages:
            run_stage(root, row.exp or exp, name, argv() if callable(argv) else argv, extra, force=False,
                      reuse=row.exp is None and name in main)


def run_ablations(grid, names, extra):
    """Runs the main job's stages the rows need (teacher, teacher_seq, conditions, store), then the grids.
    The main job's stages count as it ran them (its --teacher_epochs ... are not the grid's); one that is out
    of date stops the run."""
    root, exp = grid.root, grid.exp
    for name in ("corpus", "prepare", "teacher", "teacher_seq", "extract"):
        if name in grid.main:
            run_stage(root, exp, name, grid.main[name], extra, force=False, reuse=True)
    for name in (GRIDS if "all" in names else names):
        if name == "temperature":  # its k is the k grid's dev-best
            run_rows(root, exp, grid.rows("k"), extra, grid.main)
        print(f"\n##### ablation {name} ({grid.scale} scale)", flush=True)
        run_rows(root, exp, grid.rows(name, load_results(os.path.join(root, exp), missing_ok=True)), extra, grid.main)
