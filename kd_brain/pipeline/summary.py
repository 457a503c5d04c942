"""An experiment's reports: the paper table of its seed runs and ``report.md`` (grids, breakdowns).

``paper_table.md`` / ``.json`` / ``.png`` hold the WER per model and condition with
bootstrap intervals, every stage's command, commit and seconds; ``report.md``
adds every ablation grid run so far (rows, intervals, commands, sweep plots) and
the WER breakdowns by SNR, number of noises, noise kind and room.
"""

import json
import os

from kd_brain.noise.conditions import CONDITIONS
from kd_brain.pipeline.atomic import write_json, write_text
from kd_brain.pipeline.grids import GRIDS, K_GRID, SCALES, Grid
from kd_brain.pipeline.runner import commit, done_path, stage_log
from kd_brain.results.ablation import ablation_table
from kd_brain.results.breakdown import wer_interval, write_breakdown
from kd_brain.results.plots import sweep_chart
from kd_brain.results.report import MODELS, bar_chart, load_results, paper_table
from kd_brain.results.selection import DEV_CONDITIONS


def write_paper_table(root, exp, runs, order):
    """Prints and writes the paper's table (mean ± std over seed runs, bootstrap intervals) and its chart."""
    results = [load_results(os.path.join(root, r)) for r in runs if os.path.isfile(os.path.join(root, r, "results.json"))]
    conds = [c for c in DEV_CONDITIONS + CONDITIONS if any(c in m for r in results for m in r["wer"].values())]
    table, summary = paper_table(results, MODELS, conds)
    logs = {r: stage_log(root, r, order) for r in runs}
    lines = ["\nStage wall times (s), commands and commits:"]
    for r, log in logs.items():
        total = sum(v["seconds"] for v in log.values())
        lines.append(f"- {r}: total {total} s")
        lines += [f"  - {name} ({v['seconds']} s, commit {v.get('commit', '?')}): `{v['command']}`"
                  for name, v in log.items()]
    name = "paper_table" if len(runs) == 1 else f"paper_table_{len(runs)}seeds"
    write_text(os.path.join(root, exp, name + ".md"), table + "\n".join(lines) + "\n")
    write_json(os.path.join(root, exp, name + ".json"), {**summary, "stages": logs, "report_commit": commit(root)},
               indent=1)
    bar_chart(results, MODELS, conds, os.path.join(root, exp, name + ".png"))
    seeds = f", {len(results)} seeds" if len(results) > 1 else ""
    print(f"\nWER (%) on {exp}{seeds} (headline decoder: the LM decoder if configured, else beam; "
          f"{exp}/{name}.md, .json, .png):\n{table}")
    for r, log in logs.items():
        print(f"Stage wall times (s), {r}: {({k: v['seconds'] for k, v in log.items()})}; "
              f"total {sum(v['seconds'] for v in log.values())} s")


def row_commands(root, exp, rows):
    """Markdown list: each row's training command (from its stage record), commit and seconds."""
    lines = []
    for row in rows:
        names = [name for name, _ in row.stages]  # the stage that trains the row's model, else the last
        stage = row.model if row.model in names else names[-1]
        done = done_path(root, row.exp or exp, stage)
        if os.path.isfile(done):
            with open(done) as f:
                d = json.load(f)
            lines.append(f"- {row.label} ({d['seconds']} s, commit {d.get('commit', '?')}): `{d['command']}`")
    return lines


def sweep_rows(results, rows, values):
    """Rows of ``kd_brain.results.plots.sweep_chart``: WER per condition and its 95% bootstrap interval."""
    out = []
    for value, row in zip(values, rows):
        errs = results.get("utt_errors", {}).get(row.model)
        if not errs:
            continue
        wer = {c: results["wer"][row.model][c] for c in DEV_CONDITIONS + CONDITIONS if c in results["wer"][row.model]}
        out.append({"value": value, "wer": wer,
                    "interval": {c: list(wer_interval(errs[c].values())) for c in wer if c in errs}})
    return out


def write_report(root, exp, corpus="synthetic", units="subword", vocab_size=256, shared=""):
    """``<exp>/report.md``: the main table, every grid run so far at either scale (rows, intervals,
    commands), the sweep plots, and the WER breakdowns by SNR, noises, noise kind and room.
    Returns its path."""
    results = load_results(os.path.join(root, exp), missing_ok=True)
    parts = [f"# Report: {exp}\n"]
    main = os.path.join(root, exp, "paper_table.md")
    if os.path.isfile(main):
        with open(main) as f:
            parts.append("## Main job\n\n" + f.read())
    grids = [Grid(root, exp, scale, corpus, units, vocab_size, shared=shared) for scale in SCALES]
    for grid, name in [(g, n) for g in grids for n in GRIDS]:
        try:
            rows = grid.rows(name, results)
        except RuntimeError:  # the temperature grid before the k grid
            continue
        base = grid.base().model
        res_of = {e: results if e == exp else load_results(os.path.join(root, e), missing_ok=True)
                  for e in dict.fromkeys(r.exp or exp for r in rows)}
        if not any(r.model in res_of[r.exp or exp]["wer"] for r in rows if r.exp or r.model != base):
            continue  # only the base row (the main job's, or shared with another grid) has run
        tables = []  # rows of another experiment: its results, against its own teacher_seq
        for row_exp, res in res_of.items():
            group = [r for r in rows if (r.exp or exp) == row_exp]
            tables.append(ablation_table(res, [(r.label, r.model) for r in group], CONDITIONS)[0])
        table = tables[0] + "".join(t.split("\n", 2)[2] for t in tables[1:])  # one header
        parts.append(f"## Ablation: {name} ({grid.scale} scale)\n\n{table}\nCommands:\n"
                     + "\n".join(row_commands(root, exp, rows)) + "\n")
        if name in ("k", "temperature"):
            values = (K_GRID + ["all"]) if name == "k" else [r.label for r in rows]
            points = sweep_rows(results, rows, values)
            png = f"ablation_{name}_{grid.scale}.png"
            sweep_chart(points, os.path.join(root, exp, png), xlabel=name)
            parts.append(f"![WER vs {name}]({png})\n")
    try:
        md, _ = write_breakdown(os.path.join(root, exp), MODELS, "teacher_seq")
        # its headings one level below the report's
        parts.append("## Breakdowns\n\n" + "\n".join("#" + line if line.startswith("#") else line
                                                        for line in md.splitlines()) + "\n")
    except FileNotFoundError as e:  # no test condition written yet
        parts.append(f"## Breakdowns\n\nnot available: {e}\n")
    path = os.path.join(root, exp, "report.md")
    write_text(path, "\n".join(parts))
    print(f"\nReport: {os.path.relpath(path, root)}", flush=True)
    return path
