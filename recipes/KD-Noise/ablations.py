"""The paper's ablations and what came after it, one command per row (``run.py --ablation NAME``).

    python recipes/KD-Noise/run.py --ablation k                  # k = 1, 5, 10, 20, 40, all V
    python recipes/KD-Noise/run.py --ablation temperature        # T = 1, 2, 4 at the dev-best k and at k = 20
    python recipes/KD-Noise/run.py --ablation all                # every grid
    python recipes/KD-Noise/run.py --ablation k --scale main     # the main job's epochs
    python recipes/KD-Noise/run.py --ablation headline --scale main   # one row of each finding

Each row is a student trained with the main job's teacher, test conditions and
soft-label store; only what the row varies is an override. A row is a stage
(``<exp>/stages/<model>.done``: printed before it runs, skipped when done), so
a grid resumes after an interruption and rows shared by grids train once.
Settings are chosen on dev only (the temperature grid runs at the k with the
lowest dev WER). ``report.md`` in the experiment gathers the tables, plots and
commands (:func:`write_report`).

Scales: ``ablation`` (default) trains each row for 2 epochs instead of 6, so
the whole grid fits a few hours on 2 cores (about 5 min per row: 3 min of
training, 2 min of decoding dev and the three test conditions); ``main`` uses
the main job's epochs, and its base row is the main job's ``student``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run.py beside it (a folder, not a package)
from run import REPO, R, merge, run_stage, stages, yaml_int  # noqa: E402

SCALES = {"ablation": ["--number_of_epochs=2"], "main": []}
PREFIX = {"ablation": "abl", "main": "main"}
K_GRID = [1, 5, 10, 20, 40]
T_GRID = [1.0, 2.0, 4.0]
SIDE_T = "[1.0,2.0,4.0]"
CONDITIONS = ["clean", "noisy_sim", "rerecorded"]
MAIN_FRACTION, LABELLED = 0.8, 0.1  # teacher.yaml's labelled share; the paper's (800 h of 8,000 h)


class Row:
    """One table row: its label, the model it trains, its stages ``[(name, argv)]`` and its experiment
    (the main job's, but for the labelled-fraction rows, whose teacher is another one)."""

    def __init__(self, label, model, stage_list, exp=None):
        self.label, self.model, self.stages, self.exp = label, model, stage_list, exp


class Grid:
    """Builds a grid's rows for an experiment (``exp``) at a scale, from the main job's stages."""

    def __init__(self, exp, scale, corpus="synthetic", units="subword", vocab_size=256, hours=3.3):
        self.exp, self.scale, self.vocab, self.corpus, self.units = exp, scale, vocab_size, corpus, units
        self.hours = hours
        plan, _ = stages(corpus, hours, exp, units=units)
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
            then = (then_model, merge([f"{R}/train.py"] + self.student, [
                "--criterion=mwer", f"--model_name={then_model}", f"--init_from={b.model}",
                "--train_splits=[labelled]", "--number_of_epochs=1", "--lr=0.0001"]))
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
            w0 = default_blank_weight()
            return [Row(f"{blank_label(w0)} (the default)", b.model, b.stages)] + self.one_key_rows(
                "blank_weight", tuple(w for w in (1.0, 0.5, 0.0) if w != w0), lambda w: f"blank{w:g}", blank_label)
        if grid == "clean_share":
            return [Row("all noisy (the paper)", b.model, b.stages)] + self.one_key_rows(
                "clean_share", (0.2, 0.5), lambda v: f"clean{v:g}", lambda v: f"{v:.0%} clean")
        if grid == "init":
            rnd_model, rnd = self.train("random_init", "--init_from=null")
            return [Row("from the teacher", b.model, b.stages),
                    Row("random, equal epochs", rnd_model, [rnd]),
                    Row("random, equal wall time (teacher + student)", self.name("random_init_time"),
                        b.stages + [(self.name("random_init_time"), lambda: self.equal_time(b.model))])]
        if grid == "headline":  # the rows behind the findings, the same models as in their own grids
            other = 1.0 if default_blank_weight() != 1.0 else 0.5
            return [b, self.k_row("all"), self.k_row(20, 1.0)] + self.one_key_rows(
                "blank_weight", (other,), lambda w: f"blank{w:g}", blank_label
            ) + self.one_key_rows("clean_share", (0.2,), lambda v: f"clean{v:g}", lambda v: f"{v:.0%} clean")
        if grid == "labelled_fraction":
            return [Row(f"{MAIN_FRACTION:.0%} labelled (the main job)", b.model, b.stages)] + self.fraction_rows()
        raise ValueError(f"--ablation {grid}: choose one of {GRIDS} or all")

    def fraction_rows(self):
        """The paper's 1 : 9 split: a new teacher on 10% of the training speakers (same corpus and
        test sets), trained for the main teacher's number of updates (8x the epochs), then its student."""
        lab = f"{self.exp}_lab{round(LABELLED * 100)}"
        plan = dict(stages(self.corpus, self.hours, lab, units=self.units)[0])
        epochs = round(yaml_int("hparams/teacher.yaml", "number_of_epochs") * MAIN_FRACTION / LABELLED)
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
        from kd_brain.ablation import equal_time_epochs
        from kd_brain.report import read_curve

        teacher = read_curve(os.path.join(REPO, self.exp, "teacher"))[-1]["elapsed_s"]
        base = read_curve(os.path.join(REPO, self.exp, base_model))
        epochs = equal_time_epochs(teacher, base[-1]["elapsed_s"], len(base))
        return self.train("random_init_time", "--init_from=null", f"--number_of_epochs={epochs}")[1][1]

    def best_k(self, results):
        from kd_brain.ablation import dev_best

        rows = [self.k_row(k) for k in K_GRID + ["all"]]
        best = dev_best(results or {"wer": {}}, [(k, r.model) for k, r in zip(K_GRID + ["all"], rows)])
        if best is None:
            raise RuntimeError("--ablation temperature needs the k grid's dev WERs: run --ablation k first")
        return best[0]


def default_blank_weight():
    """student.yaml's ``blank_weight``, the base row's (run.py's REPO: the checkout, whatever the experiment)."""
    import run

    return run.yaml_int("hparams/student.yaml", "blank_weight", cast=float)


def blank_label(w):
    """A blank_weight row's label."""
    return "all frames alike (blank weight 1)" if w == 1.0 else f"blank-dominated frames x {w:g}"


# headline: k = all, T = 1, the other blank weight (1 against the default 0.5) and 20% clean against the base, the rows run at the main scale too
GRIDS = ["k", "temperature", "criterion", "label_source", "target", "blank", "clean_share", "init",
         "labelled_fraction", "headline"]


def run_rows(exp, rows, extra):
    """Runs every stage of ``rows`` (done ones are skipped); a callable argv is built when its turn comes."""
    for row in rows:
        for name, argv in row.stages:
            run_stage(row.exp or exp, name, argv() if callable(argv) else argv, extra, force=False)


def load_results(exp):
    import json

    path = os.path.join(REPO, exp, "results.json")
    if not os.path.isfile(path):
        return {"wer": {}}
    with open(path) as f:
        return json.load(f)


def run_ablations(names, exp, scale, corpus, units, extra, vocab_size, hours=3.3):
    """Runs the main job's stages the rows need (teacher, teacher_seq, conditions, store), then the grids."""
    grid = Grid(exp, scale, corpus, units, vocab_size, hours)
    for name in ("corpus", "prepare", "teacher", "teacher_seq", "extract"):
        if name in grid.main:
            run_stage(exp, name, grid.main[name], extra, force=False)
    for name in (GRIDS if "all" in names else names):
        if name == "temperature":  # its k is the k grid's dev-best
            run_rows(exp, grid.rows("k"), extra)
        print(f"\n##### ablation {name} ({scale} scale)", flush=True)
        run_rows(exp, grid.rows(name, load_results(exp)), extra)
    return write_report(exp, corpus, units, vocab_size)


def row_commands(exp, rows):
    """Markdown list: each row's training command (from its stage record), commit and seconds."""
    import json

    lines = []
    for row in rows:
        names = [name for name, _ in row.stages]  # the stage that trains the row's model, else the last
        stage = row.model if row.model in names else names[-1]
        done = os.path.join(REPO, row.exp or exp, "stages", f"{stage}.done")
        if os.path.isfile(done):
            with open(done) as f:
                d = json.load(f)
            lines.append(f"- {row.label} ({d['seconds']} s, commit {d.get('commit', '?')}): `{d['command']}`")
    return lines


def sweep_rows(results, rows, values):
    """Rows of ``kd_brain.plots.sweep_chart``: WER per condition and its 95% bootstrap interval."""
    from kd_brain.breakdown import wer_interval

    out = []
    for value, row in zip(values, rows):
        errs = results.get("utt_errors", {}).get(row.model)
        if not errs:
            continue
        wer = {c: results["wer"][row.model][c] for c in CONDITIONS if c in results["wer"][row.model]}
        out.append({"value": value, "wer": wer,
                    "interval": {c: list(wer_interval(errs[c].values())) for c in wer if c in errs}})
    return out


def write_report(exp, corpus="synthetic", units="subword", vocab_size=256):
    """``<exp>/report.md``: the main table, every grid run so far at either scale (rows, intervals,
    commands), the sweep plots, and the WER breakdowns by SNR, noises, noise kind and room.
    Returns its path."""
    from kd_brain.ablation import ablation_table
    from kd_brain.plots import sweep_chart

    results = load_results(exp)
    parts = [f"# Report: {exp}\n"]
    main = os.path.join(REPO, exp, "paper_table.md")
    if os.path.isfile(main):
        with open(main) as f:
            parts.append("## Main job\n\n" + f.read())
    for grid, name in [(Grid(exp, scale, corpus, units, vocab_size), n) for scale in SCALES for n in GRIDS]:
        try:
            rows = grid.rows(name, results)
        except RuntimeError:  # the temperature grid before the k grid
            continue
        base = grid.base().model
        res_of = {e: results if e == exp else load_results(e) for e in dict.fromkeys(r.exp or exp for r in rows)}
        if not any(r.model in res_of[r.exp or exp]["wer"] for r in rows if r.exp or r.model != base):
            continue  # only the base row (the main job's, or shared with another grid) has run
        tables = []  # rows of another experiment: its results, against its own teacher_seq
        for row_exp, res in res_of.items():
            group = [r for r in rows if (r.exp or exp) == row_exp]
            tables.append(ablation_table(res, [(r.label, r.model) for r in group], CONDITIONS)[0])
        table = tables[0] + "".join(t.split("\n", 2)[2] for t in tables[1:])  # one header
        parts.append(f"## Ablation: {name} ({grid.scale} scale)\n\n{table}\nCommands:\n"
                     + "\n".join(row_commands(exp, rows)) + "\n")
        if name in ("k", "temperature"):
            values = (K_GRID + ["all"]) if name == "k" else [r.label for r in rows]
            points = sweep_rows(results, rows, values)
            png = f"ablation_{name}_{grid.scale}.png"
            sweep_chart(points, os.path.join(REPO, exp, png), xlabel=name)
            parts.append(f"![WER vs {name}]({png})\n")
    try:
        from kd_brain.breakdown import write_breakdown

        md, _ = write_breakdown(os.path.join(REPO, exp), ["teacher", "teacher_seq", "student", "student_seq",
                                                          "multicondition", "pseudo_label"], "teacher_seq")
        # its headings one level below the report's
        parts.append("## Breakdowns\n\n" + "\n".join("#" + line if line.startswith("#") else line
                                                        for line in md.splitlines()) + "\n")
    except FileNotFoundError as e:  # no test condition written yet
        parts.append(f"## Breakdowns\n\nnot available: {e}\n")
    path = os.path.join(REPO, exp, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    print(f"\nReport: {os.path.relpath(path, REPO)}", flush=True)
    return path
