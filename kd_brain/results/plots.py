"""Charts of breakdowns and ablations, written as PNG (matplotlib, Agg backend).

A *cell* is ``{"wer", "lo", "hi", ...}``: a WER (%) and its 95% interval, as
``kd_brain.results.breakdown.bucket_wer`` returns it; a *table* is ``{bucket: {model: cell}}``
(``kd_brain.results.breakdown.breakdown_table``). Interval bars are drawn from ``lo`` to ``hi``
(asymmetric around the WER); a cell without an interval gets none.

* ``snr_chart``: WER against SNR bucket, one line per model, one panel per condition.
* ``breakdown_bars``: grouped bars per bucket (one bar per model), one panel per breakdown.
* ``sweep_chart``: WER against an ablation parameter, one line per condition.
"""

import math

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on the training machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def interval_errors(wers, los, his):
    """``yerr`` for matplotlib, ``[[below], [above]]``, from WERs and interval ends (0 where unknown).

    Example
    -------
    >>> interval_errors([10.0, 20.0], [8.0, None], [13.0, None])
    [[2.0, 0.0], [3.0, 0.0]]
    """
    below = [max(0.0, w - lo) if _finite(lo) and _finite(w) else 0.0 for w, lo in zip(wers, los)]
    above = [max(0.0, hi - w) if _finite(hi) and _finite(w) else 0.0 for w, hi in zip(wers, his)]
    return [below, above]


def _models(table):
    """Models of a table in first-seen order."""
    return list(dict.fromkeys(m for row in table.values() for m in row))


def _panels(n, width=4.2, height=3.4, ncols=3):
    """A figure with ``n`` panels, at most ``ncols`` a row; unused grid cells are hidden."""
    plt = _pyplot()
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return plt, fig, axes.ravel()[:n]


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lines(ax, xs, series):
    """One line with interval bars per ``{label: (wers, los, his)}``; gaps where a WER is missing."""
    for k, (label, (wers, los, his)) in enumerate(series.items()):
        # a small horizontal offset per line keeps overlapping interval bars apart
        shift = (k - (len(series) - 1) / 2) * 0.06
        ys = [w if _finite(w) else np.nan for w in wers]
        ax.errorbar([x + shift for x in xs], ys, yerr=interval_errors(wers, los, his), marker="o",
                    markersize=3, capsize=3, linewidth=1.2, label=label)


def snr_chart(panels, path, ylabel="WER (%)"):
    """WER against SNR bucket, one line (with 95% interval bars) per model, one panel per condition.

    ``panels``: ``{condition: table}``, each table ``{snr bucket: {model: cell}}`` in x order.

    Example
    -------
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "snr.png")
    >>> t = {"0-5": {"a": {"wer": 40.0, "lo": 35.0, "hi": 46.0}}, "5-10": {"a": {"wer": 30.0, "lo": 26.0, "hi": 35.0}}}
    >>> snr_chart({"noisy_sim": t}, out)
    >>> os.path.getsize(out) > 1000
    True
    """
    plt, fig, axes = _panels(len(panels))
    for ax, (cond, table) in zip(axes, panels.items()):
        buckets = list(table)
        series = {m: tuple([table[b].get(m, {}).get(key) for b in buckets] for key in ("wer", "lo", "hi"))
                  for m in _models(table)}
        _lines(ax, list(range(len(buckets))), series)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_xlabel("effective SNR (dB)")
        ax.set_ylabel(ylabel)
        ax.set_title(cond, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def _bars(ax, table):
    """Grouped bars with interval whiskers on one axis: a group per bucket, a bar per model."""
    buckets, models = list(table), _models(table)
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        cells = [table[b].get(m) for b in buckets]
        wers = [c["wer"] if c else np.nan for c in cells]
        yerr = interval_errors(wers, [c.get("lo") if c else None for c in cells],
                               [c.get("hi") if c else None for c in cells])
        bars = ax.bar([j + i * width for j in range(len(buckets))], wers, width, yerr=yerr, capsize=2,
                      error_kw={"elinewidth": 0.8}, label=m)
        # upright labels collide when several models share a group
        ax.bar_label(bars, labels=[f"{w:.1f}" if _finite(w) else "" for w in wers], fontsize=5,
                     rotation=90 if len(models) > 3 else 0, padding=2)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(buckets))], buckets,
                  rotation=20 if max(map(len, buckets)) > 6 else 0)


def breakdown_bars(tables, path, title=None, ylabel="WER (%)"):
    """Grouped bars (WER per model, 95% interval whiskers) per bucket, one panel per breakdown.

    ``tables``: ``{breakdown name: {bucket: {model: cell}}}``; the names become the panel titles.

    Example
    -------
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "bars.png")
    >>> cell = {"wer": 20.0, "lo": 15.0, "hi": 25.0}
    >>> breakdown_bars({"noise kind": {"music": {"a": cell, "b": cell}, "talk": {"a": cell}}}, out, title="noisy")
    >>> open(out, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    plt, fig, axes = _panels(len(tables), width=4.6, height=3.2)
    for ax, (name, table) in zip(axes, tables.items()):
        _bars(ax, table)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)  # room for the bar labels
    # one legend for all panels, above them, so that no panel's bars hide under it
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_chart(rows, path, xlabel="value", conditions=None, ylabel="WER (%)"):
    """WER against an ablation parameter, one line (with 95% interval bars) per condition.

    ``rows``: one per value of the parameter, in x order::

        {"value": 20, "wer": {"clean": 22.3, "noisy_sim": 30.1},
         "interval": {"clean": [20.9, 23.8], "noisy_sim": [28.4, 31.9]}}

    ``value`` may be a number or a label (``"all"``): the x axis is categorical, equally spaced
    in row order, so ``k = 1, 5, 10, 20, 40, all`` or ``T = 1, 2, 4`` plot alike. ``interval``
    is optional (per condition too); ``conditions`` defaults to every condition of the rows.

    Example
    -------
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "k.png")
    >>> rows = [{"value": 5, "wer": {"clean": 24.0}, "interval": {"clean": [22.0, 26.0]}},
    ...         {"value": "all", "wer": {"clean": 22.0}}]
    >>> sweep_chart(rows, out, xlabel="k")
    >>> os.path.getsize(out) > 1000
    True
    """
    conditions = conditions or list(dict.fromkeys(c for r in rows for c in r["wer"]))
    series = {}
    for c in conditions:
        wers = [r["wer"].get(c) for r in rows]
        ends = [r.get("interval", {}).get(c) or (None, None) for r in rows]
        series[c] = (wers, [e[0] for e in ends], [e[1] for e in ends])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    _lines(ax, list(range(len(rows))), series)
    labels = [str(r["value"]) for r in rows]
    long = max((len(x) for x in labels), default=0) > 8  # e.g. "k=20, T=4": slanted so they do not overlap
    ax.set_xticks(range(len(rows)), labels, rotation=25 if long else 0, ha="right" if long else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a point
    _save(plt, fig, path)
