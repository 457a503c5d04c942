"""Ablation tables: one row per trained variant, each against the sequence-trained teacher.

The grids themselves (which overrides make a row, which stages it needs)
are recipe glue (``recipes/KD-Noise/ablations.py``); this module holds the
parts that need no paths: the table with its bootstrap intervals, the
choice of a setting on dev (never on a test condition), and the epochs that
give a randomly initialised student the wall time of teacher + student.
"""

import math

from kd_brain.results.report import comparisons, interval_cell
from kd_brain.results.selection import DEV_CONDITIONS, dev_score


def dev_best(results, candidates):
    """The candidate ``(value, model)`` with the lowest selection WER (the mean over the dev
    conditions, headline decoder: :mod:`kd_brain.results.selection`).

    Ties go to the earlier candidate; candidates without a dev score are
    skipped, and None is returned when none has one.

    Example
    -------
    >>> results = {"wer": {"a": {"dev": 20.0, "dev_noisy": 40.0}, "b": {"dev": 22.0, "dev_noisy": 35.0}, "c": {}}}
    >>> dev_best(results, [(5, "a"), (20, "b"), (40, "c")])
    (20, 'b')
    """
    scored = [(dev_score(results["wer"].get(m, {})), i, (v, m)) for i, (v, m) in enumerate(candidates)]
    scored = [s for s in scored if s[0] is not None]
    return min(scored)[2] if scored else None


def equal_time_epochs(teacher_seconds, student_seconds, student_epochs):
    """Epochs for a randomly initialised student to get the wall time of teacher + student.

    The student that starts from the teacher has also spent the teacher's
    training time; at equal wall time the student trained from scratch gets
    both, at the student's own time per epoch (same data, same model).

    Example
    -------
    >>> equal_time_epochs(1000.0, 180.0, 2)
    14
    """
    if student_seconds <= 0 or student_epochs <= 0:
        raise ValueError(f"student_seconds={student_seconds}, student_epochs={student_epochs}: must be > 0")
    return math.ceil(student_epochs * (teacher_seconds + student_seconds) / student_seconds - 1e-9)


def ablation_table(results, rows, conditions, reference="teacher_seq"):
    """Markdown: per row, the dev conditions' and the test conditions' WER, and the change against
    ``reference`` on each test condition with its interval.

    ``rows`` is a list of ``(label, model)``; models missing from
    ``results`` (a ``results.json``) are shown as not run. Returns
    ``(markdown, summary)`` with the numbers for a JSON file.

    Example
    -------
    >>> errs = lambda e: {"clean": {f"u{i}": [e, 10] for i in range(40)}}
    >>> results = {"wer": {"teacher_seq": {"clean": 20.0}, "s1": {"dev": 9.0, "dev_noisy": 21.0, "clean": 10.0}},
    ...            "utt_errors": {"teacher_seq": errs(2), "s1": errs(1)}}
    >>> md, _ = ablation_table(results, [("k=1", "s1"), ("k=5", "s5")], ["clean"])
    >>> print(md.splitlines()[0])
    | row | model | dev | dev_noisy | mean dev | clean | clean vs teacher_seq |
    >>> print(md.splitlines()[2])
    | k=1 | s1 | 9.00 | 21.00 | 15.00 | 10.00 | -50.0% [-50.0, -50.0] P=1.00 |
    >>> print(md.splitlines()[3])
    | k=5 | s5 | not run | - | - | - | - |
    """
    wer = results.get("wer", {})
    models = [m for _, m in rows if m in wer]
    comps = comparisons([results], models, conditions, [reference]) if reference in wer else {}
    shown = list(DEV_CONDITIONS) + list(conditions)
    head = ("| row | model | " + " | ".join(DEV_CONDITIONS) + " | mean dev | " + " | ".join(conditions) + " | "
            + " | ".join(f"{c} vs {reference}" for c in conditions) + " |\n|---|---|"
            + "---|" * (len(DEV_CONDITIONS) + 1 + 2 * len(conditions)))
    lines, summary = [head], {}
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for label, m in rows:
        if m not in wer:
            lines.append(f"| {label} | {m} | not run | "
                         + " | ".join("-" for _ in range(len(DEV_CONDITIONS) + 2 * len(conditions))) + " |")
            continue
        cells = comps.get((m, reference), {})
        w = wer[m]
        lines.append(f"| {label} | {m} | " + " | ".join(fmt(w.get(c)) for c in DEV_CONDITIONS) + f" | "
                     f"{fmt(dev_score(w))} | " + " | ".join(fmt(w.get(c)) for c in conditions) + " | "
                     + " | ".join(interval_cell(cells[c]) if c in cells else "-" for c in conditions) + " |")
        summary[label] = {"model": m, "wer": {c: w.get(c) for c in shown}, "mean_dev": dev_score(w),
                          "vs_" + reference: cells}
    return "\n".join(lines) + "\n", summary
