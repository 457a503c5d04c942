"""The paper's table: WER per model and condition, relative changes with bootstrap intervals.

Mošner et al. report each student against the sequence-trained teacher
(-10% / -29% / -20% relative WER on clean / simulated-noisy / re-recorded).
``paper_table`` does the same from one or several runs' ``results.json``
(one per seed): WER as mean ± std over runs, and every other model against
each reference teacher as the relative change of the errors pooled over runs,
with its 95% paired-bootstrap interval and the probability of improvement
(``kd_brain.results.bootstrap``). The headline comparison also gets a per-speaker
(block) interval, and each of its cells a verdict. ``bar_chart`` draws the WERs.
"""

import json
import os

import numpy as np

from kd_brain.results.bootstrap import compare, pooled_counts, verdict
from kd_brain.results.selection import DEV_CONDITIONS

# The paper table's rows, in print order: the teachers, the two baselines, the students
MODELS = ("teacher", "teacher_seq", "multicondition", "pseudo_label", "student", "student_seq")


def relative_change(wer, reference):
    """Relative WER change in percent (negative = better).

    Example
    -------
    >>> relative_change(9.0, 10.0)
    -10.0
    """
    return round(100.0 * (wer - reference) / reference, 1) if reference else float("nan")


def wer_cell(values):
    """One run: ``17.83``; several: ``17.83 ± 0.52`` (mean ± sample std).

    Example
    -------
    >>> wer_cell([10.0]), wer_cell([10.0, 12.0])
    ('10.00', '11.00 ± 1.41')
    """
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def interval_cell(c):
    """``-57.9% [-60.8, -55.0] P=1.00``: change, 95% interval, probability of improvement."""
    return f"{c['rel']:+.1f}% [{c['lo']:+.1f}, {c['hi']:+.1f}] P={c['p_better']:.2f}"


def comparisons(runs, models, conditions, references):
    """``{(model, reference): {condition: bootstrap result}}`` with errors pooled over ``runs``."""
    speakers = {}
    for r in runs:
        for cond, spk in r.get("speakers", {}).items():
            speakers.setdefault(cond, {}).update(spk)
    out = {}
    for ref in references:
        ref_runs = [r["utt_errors"][ref] for r in runs if ref in r.get("utt_errors", {})]
        for m in models:
            m_runs = [r["utt_errors"][m] for r in runs if m in r.get("utt_errors", {})]
            if m == ref or not ref_runs or not m_runs:
                continue
            if m in references and references.index(m) > references.index(ref):
                continue  # "teacher_seq vs teacher" is shown; its mirror "teacher vs teacher_seq" is not
            cells = {}
            for cond in conditions:
                a, b = pooled_counts(ref_runs, cond), pooled_counts(m_runs, cond)
                if a and b:
                    cells[cond] = compare(a, b, speakers.get(cond))
            out[(m, ref)] = cells
    return out


def paper_table(runs, models, conditions, references=("teacher_seq", "teacher"), headline=("student", "teacher_seq")):
    """Markdown: WER rows, then every model against each reference with intervals.

    ``runs`` is a list of ``results.json`` contents (one per seed). Returns
    ``(markdown, summary)``; ``summary`` holds the numbers for a JSON file.

    Example
    -------
    >>> run = {"wer": {"teacher_seq": {"clean": 20.0}, "student": {"clean": 10.0}},
    ...        "utt_errors": {"teacher_seq": {"clean": {f"u{i}": [2, 10] for i in range(50)}},
    ...                       "student": {"clean": {f"u{i}": [1, 10] for i in range(50)}}},
    ...        "speakers": {"clean": {f"u{i}": f"s{i % 5}" for i in range(50)}}}
    >>> md, summary = paper_table([run], ["teacher_seq", "student"], ["clean"])
    >>> print(md.splitlines()[3])
    | student | 10.00 |
    >>> print(md.splitlines()[4])
    | student vs teacher_seq | -50.0% [-50.0, -50.0] P=1.00 |
    """
    models = [m for m in models if any(m in r["wer"] for r in runs)]
    head = "| model | " + " | ".join(conditions) + " |\n|---|" + "---|" * len(conditions) + "\n"
    rows, summary = [], {"runs": len(runs), "wer": {}, "changes": {}}
    for m in models:
        cells = []
        for c in conditions:
            values = [r["wer"][m][c] for r in runs if c in r["wer"].get(m, {})]
            cells.append(wer_cell(values))
            summary["wer"].setdefault(m, {})[c] = {"mean": float(np.mean(values)) if values else None,
                                                   "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                                                   "runs": values}
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    comps = comparisons(runs, models, conditions, references)
    for ref in references:
        for m in models:
            if (m, ref) not in comps:
                continue
            cells = comps[(m, ref)]
            rows.append(f"| {m} vs {ref} | " + " | ".join(interval_cell(cells[c]) if c in cells else "-"
                                                          for c in conditions) + " |")
            summary["changes"][f"{m} vs {ref}"] = cells
    lines = [head + "\n".join(rows)]
    if tuple(headline) in comps:
        m, ref = headline
        cells = comps[(m, ref)]
        tests = [c for c in conditions if c not in DEV_CONDITIONS]  # dev decides; the verdict is on test
        block = [interval_cell(cells[c]["block"]) if "block" in cells.get(c, {}) else "-" for c in tests]
        lines.append(f"\n{m} vs {ref}, resampling whole speakers (block bootstrap): " + "; ".join(
            f"{c} {b}" for c, b in zip(tests, block)))
        lines.append(f"Verdict, {m} vs {ref}: " + "; ".join(
            f"{c}: {verdict(cells[c])}" for c in tests if c in cells) + ".")
    lines += claims_table(runs, [c for c in conditions if c not in DEV_CONDITIONS])
    pooled = f" (errors pooled over {len(runs)} seeds)" if len(runs) > 1 else ""
    lines.append(f"Changes: relative WER change, 95% paired-bootstrap interval over test utterances{pooled}, "
                 "P = probability of improvement.")
    return "\n".join(lines) + "\n", summary


# The target: the paper's claim (the sequence-trained student beats the better teacher everywhere) and the
# reviewer's (the student beats both baselines on noise, and is no worse on clean speech)
CLAIMS = (("student_seq", ("teacher", "teacher_seq"), "better"),
          ("student", ("multicondition",), "noisy"), ("student", ("pseudo_label",), "noisy"))


def claim_met(kind, condition, cell):
    """Whether a change meets its claim: ``better`` with 95% confidence everywhere, or (``noisy``) on
    every noisy condition, with clean speech no worse (not worse with 95% confidence).

    Example
    -------
    >>> claim_met("noisy", "clean", {"lo": -3.0, "hi": 4.0}), claim_met("better", "clean", {"lo": -3.0, "hi": 4.0})
    (True, False)
    """
    if kind == "noisy" and condition == "clean":
        return cell["lo"] <= 0
    return cell["hi"] < 0


def claims_table(runs, conditions):
    """Markdown lines: each claim of ``CLAIMS`` per test condition (pooled over ``runs``), met or not.
    Against two teachers, each condition's reference is the one with the lower mean WER there."""
    mean = lambda m, c: np.mean([r["wer"][m][c] for r in runs if c in r["wer"].get(m, {})])  # noqa: E731
    have = lambda m: all(m in r["wer"] for r in runs)  # noqa: E731
    rows = []
    for model, refs, kind in CLAIMS:
        if not have(model) or not all(have(ref) for ref in refs):
            continue
        comps = comparisons(runs, [model], conditions, list(refs))
        cells, met = [], True
        for c in conditions:
            ref = min(refs, key=lambda r: mean(r, c))
            cell = comps.get((model, ref), {}).get(c)
            if cell is None:
                cells.append("-")
                continue
            ok = claim_met(kind, c, cell)
            met &= ok
            cells.append(f"{interval_cell(cell)}{'' if len(refs) == 1 else f' vs {ref}'} {'met' if ok else 'NOT met'}")
        target = "better everywhere" if kind == "better" else "better on noise, clean no worse"
        rows.append(f"| {model} vs {' / '.join(refs)}: {target} | " + " | ".join(cells)
                    + f" | {'**met**' if met else '**not met**'} |")
    if not rows:
        return []
    head = "| target | " + " | ".join(conditions) + " | |\n|---|" + "---|" * (len(conditions) + 1)
    return ["\nThe target, with 95% confidence:\n", head] + rows


def bar_chart(runs, models, conditions, path, title="WER (%)"):
    """Grouped bars (mean over runs, std as error bar): one group per condition; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in models if any(m in r["wer"] for r in runs)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = [j + i * width for j in range(len(conditions))]
        vals = [[r["wer"][m][c] for r in runs if c in r["wer"].get(m, {})] for c in conditions]
        ys = [float(np.mean(v)) if v else 0.0 for v in vals]
        err = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
        bars = ax.bar(xs, ys, width, yerr=err if len(runs) > 1 else None, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(conditions))], conditions)
    ax.set_ylabel(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_curve(model_dir):
    """A model's ``curve.csv`` (written after every validation) as a list of dicts of floats."""
    import csv

    path = os.path.join(model_dir, "curve.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} has no learning curve (train it first)")
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def curve_chart(curves, path, x="elapsed_s", y="dev_wer"):
    """Dev WER against training wall time (or epoch), one line per ``{label: curve}``; written as PNG.

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "c.png")
    >>> curve_chart({"a": [{"epoch": 1, "elapsed_s": 50.0, "dev_wer": 90.0}, {"epoch": 2, "elapsed_s": 99.0, "dev_wer": 70.0}]}, out)
    >>> os.path.getsize(out) > 1000
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, rows in curves.items():
        ax.plot([r[x] / (60 if x == "elapsed_s" else 1) for r in rows], [r[y] for r in rows], marker=".", label=label)
    ax.set_xlabel("training wall time (min)" if x == "elapsed_s" else x)
    ax.set_ylabel("mean dev WER (%, headline decoder)" if y == "dev_wer" else y)
    ax.set_ylim(0, min(110, max(r[y] for rows in curves.values() for r in rows) + 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(exp_folder, missing_ok=False):
    """An experiment's ``results.json``; with ``missing_ok``, an empty one (``{"wer": {}}``) when it is absent."""
    path = os.path.join(exp_folder, "results.json")
    if missing_ok and not os.path.isfile(path):
        return {"wer": {}}
    with open(path) as f:
        return json.load(f)
