"""The paper's table: WER per model and condition, relative change vs the reference teacher.

Mošner et al. report each student against the sequence-trained teacher
(-10% / -29% / -20% relative WER on clean / simulated-noisy / re-recorded);
``paper_table`` does the same from ``results.json`` (model -> condition ->
WER) and ``bar_chart`` draws it.
"""

import json
import os


def relative_change(wer, reference):
    """Relative WER change in percent (negative = better).

    Example
    -------
    >>> relative_change(9.0, 10.0)
    -10.0
    """
    return round(100.0 * (wer - reference) / reference, 1) if reference else float("nan")


def paper_table(results, models, conditions, reference):
    """Markdown: a row per model (WER), then a row per student with the change vs ``reference``.

    Example
    -------
    >>> r = {"teacher_seq": {"clean": 10.0}, "student": {"clean": 9.0}}
    >>> print(paper_table(r, ["teacher_seq", "student"], ["clean"], "teacher_seq").splitlines()[-1])
    | student vs teacher_seq | -10.0% |
    """
    models = [m for m in models if m in results]
    head = "| model | " + " | ".join(conditions) + " |\n|---|" + "---|" * len(conditions) + "\n"
    rows = ["| " + m + " | " + " | ".join(_cell(results[m].get(c)) for c in conditions) + " |" for m in models]
    ref = results.get(reference, {})
    for m in models:
        if m.startswith("student") and ref:
            cells = [f"{relative_change(results[m][c], ref[c]):+.1f}%" if c in results[m] and c in ref else "-"
                     for c in conditions]
            rows.append(f"| {m} vs {reference} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def _cell(x):
    return "-" if x is None else f"{x:.2f}"


def bar_chart(results, models, conditions, path, title="WER (%)"):
    """Grouped bars: one group per condition, one bar per model; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in models if m in results]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = [j + i * width for j in range(len(conditions))]
        ys = [results[m].get(c, 0.0) for c in conditions]
        bars = ax.bar(xs, ys, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(conditions))], conditions)
    ax.set_ylabel(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(exp_folder):
    with open(os.path.join(exp_folder, "results.json")) as f:
        return json.load(f)
