"""WER per bucket of the test mixtures: SNR, number of noises, noise kind, room, RT60.

The test manifests (``conditions/<condition>.csv``) record what was mixed into every utterance
and ``scores.json`` keeps each model's word errors per utterance, so every WER can be split by
how hard the mixture was. Definitions:

* **WER of a bucket**: summed word errors / summed reference words of its utterances, with a
  95% bootstrap interval over them and, against a reference model, the paired relative change.
* **SNR** (``snr``): the *effective* SNR of the speech against all its noises together. Each
  noise has its own SNR against the speech (``kd_brain.noise.contamination``) and uncorrelated noise
  powers add: ``SNR_eff = -10 log10(sum_i 10^(-SNR_i / 10))``. Buckets ``0-5 ... 15-20`` dB are
  ``[low, high)``; several noises can push SNR_eff below 0 dB, which counts in ``0-5``.
* **Noises** (``n_noises``): 1, 2, 3. **Kind**: ``music`` / ``talk`` (all noises of that kind),
  ``mixed``; ``unknown`` when a noise ID is not in the noise manifest.
* **Room**: ``simulated`` (the bank's RIR IDs are ``<room>/<k>``), else the measured room group.
* **RT60** of the speech's room, ``<0.3, 0.3-0.6, 0.6-1.0, >1.0`` s: the bank's stored value
  (Sabine from dimensions and absorption if absent); for measured rooms the speech RIR's T30
  (else T20) by Schroeder backward integration; ``unknown`` when the RIR cannot be read.

Everything above the "reading an experiment folder" section is a pure function of plain dicts and rows.
"""

import bisect
import csv
import json
import os

import numpy as np

from kd_brain.noise.acoustics import bank_rt60s, measured_rt60s
from kd_brain.pipeline import config
from kd_brain.results.bootstrap import REPLICATES, compare, paired_bootstrap
from kd_brain.results.report import MODELS, interval_cell

SNR_EDGES, SNR_BUCKETS = (5.0, 10.0, 15.0), ("0-5", "5-10", "10-15", "15-20")
RT60_EDGES, RT60_BUCKETS = (0.3, 0.6, 1.0), ("<0.3", "0.3-0.6", "0.6-1.0", ">1.0")
KINDS = ("music", "talk", "mixed")
UNKNOWN = "unknown"
BREAKDOWNS = ("snr", "n_noises", "kind", "room", "rt60")
TITLES = {"snr": "effective SNR (dB)", "n_noises": "number of noises", "kind": "noise kind",
          "room": "room", "rt60": "RT60 of the speech's room (s)"}
ORDERS = {"snr": SNR_BUCKETS, "n_noises": ("1", "2", "3"), "kind": KINDS, "room": ("simulated",),
          "rt60": RT60_BUCKETS}


def _split(field):
    """A manifest list (``a;b;c``) as a list of strings; empty field: []."""
    return [x for x in (field or "").split(";") if x]


def effective_snr(snrs):
    """SNR (dB) of the speech against the sum of its noises, from the per-noise SNRs.

    Example
    -------
    >>> round(effective_snr([10.0, 10.0]), 2), effective_snr([7.5])
    (6.99, 7.5)
    """
    return float(-10.0 * np.log10(np.sum(10.0 ** (-np.asarray(snrs, dtype=np.float64) / 10.0))))


def bucket(value, edges, labels):
    """The label of ``value``'s bucket; ``edges`` split ``labels`` as ``[low, high)``.

    Example
    -------
    >>> [bucket(v, SNR_EDGES, SNR_BUCKETS) for v in (-3.0, 5.0, 14.9, 20.0)]
    ['0-5', '5-10', '10-15', '15-20']
    """
    return labels[bisect.bisect_right(edges, value)]


def noise_kind(noise_ids, kinds):
    """``music``, ``talk`` or ``mixed`` for a mixture's noises; ``unknown`` if one is not in ``kinds``.

    Example
    -------
    >>> kinds = {"m1": "music", "m2": "music", "t1": "talk"}
    >>> noise_kind(["m1", "m2"], kinds), noise_kind(["t1"], kinds), noise_kind(["m1", "t1"], kinds)
    ('music', 'talk', 'mixed')
    >>> noise_kind(["m1", "x"], kinds)
    'unknown'
    """
    found = {kinds.get(n, UNKNOWN) for n in noise_ids}
    if not found or UNKNOWN in found:
        return UNKNOWN
    return found.pop() if len(found) == 1 else "mixed"


def utterance_labels(row, kinds, rt60s):
    """``{breakdown: bucket}`` for one manifest row (``None`` for a clean row: no noises).

    ``kinds``: ``{noise ID: kind}``; ``rt60s``: ``{RIR ID or room: seconds}`` (the speech RIR's
    value first, then its room's).

    Example
    -------
    >>> row = {"n_noises": "2", "noise_ids": "m1;t1", "snrs": "10.0;10.0", "room": "sim0001",
    ...        "speech_rir": "sim0001/3"}
    >>> utterance_labels(row, {"m1": "music", "t1": "talk"}, {"sim0001": 0.45})
    {'snr': '5-10', 'n_noises': '2', 'kind': 'mixed', 'room': 'simulated', 'rt60': '0.3-0.6'}
    """
    snrs = [float(s) for s in _split(row.get("snrs"))]
    if not snrs:
        return None
    room, rir = row.get("room", ""), row.get("speech_rir", "")
    rt60 = rt60s.get(rir, rt60s.get(room))
    return {"snr": bucket(effective_snr(snrs), SNR_EDGES, SNR_BUCKETS),
            "n_noises": str(int(row.get("n_noises") or len(snrs))),
            "kind": noise_kind(_split(row.get("noise_ids")), kinds),
            # the bank names its RIRs <room>/<k>; measured RIRs have their own IDs
            "room": "simulated" if rir.startswith(room + "/") else (room or UNKNOWN),
            "rt60": UNKNOWN if rt60 is None else bucket(rt60, RT60_EDGES, RT60_BUCKETS)}


def wer_interval(counts, replicates=REPLICATES, seed=0):
    """95% bootstrap interval ``(lo, hi)`` of the WER (%) of ``[errors, ref_words]`` pairs (utterances).

    Example
    -------
    >>> lo, hi = wer_interval([[1, 10], [3, 10]] * 20, replicates=500)
    >>> lo < 20.0 < hi
    True
    """
    errors, words = zip(*[(e, n) for e, n in counts])
    # Against a system with one error per reference word (WER 100%), the bootstrap's relative
    # change is WER - 100: the same resampling as the paired intervals, no second bootstrap.
    r = paired_bootstrap(words, errors, words, replicates=replicates, seed=seed)
    return round(100.0 + r["lo"], 1), round(100.0 + r["hi"], 1)


def bucket_wer(counts, utts, replicates=REPLICATES, seed=0):
    """WER (%) of ``utts`` from ``{utt: [errors, ref_words]}``, with its 95% bootstrap interval.

    Returns ``{"wer", "lo", "hi", "n", "errors", "words"}``.

    Example
    -------
    >>> cell = bucket_wer({"a": [1, 10], "b": [3, 10], "c": [0, 5]}, ["a", "b"], replicates=200)
    >>> cell["wer"], cell["n"], cell["lo"] <= 20.0 <= cell["hi"]
    (20.0, 2, True)
    """
    errors, words = sum(counts[u][0] for u in utts), sum(counts[u][1] for u in utts)
    lo, hi = wer_interval([counts[u] for u in utts], replicates, seed)
    return {"wer": round(100.0 * errors / words, 2), "lo": lo, "hi": hi, "n": len(utts),
            "errors": int(errors), "words": int(words)}


def _ordered(found, order=()):
    """The labels of ``order`` that occur, then the others sorted (``unknown`` last)."""
    rest = sorted(found - set(order) - {UNKNOWN})
    return [b for b in order if b in found] + rest + ([UNKNOWN] if UNKNOWN in found else [])


def breakdown_table(counts, labels, order=(), reference=None):
    """``{bucket: {model: cell}}``: ``bucket_wer`` per model and bucket of ``labels``.

    ``counts``: ``{model: {utt: [errors, ref_words]}}``; ``labels``: ``{utt: bucket}``. With
    ``reference`` (a model in ``counts``) every other model's cell gets ``vs``: its paired relative
    change on the bucket's utterances (``kd_brain.results.bootstrap.compare``), unless the reference
    made no error there (no relative change of zero).

    Example
    -------
    >>> counts = {"t": {"a": [2, 10], "b": [4, 10], "c": [1, 5]}, "s": {"a": [1, 10], "b": [2, 10], "c": [1, 5]}}
    >>> table = breakdown_table(counts, {"a": "x", "b": "x", "c": "y"}, reference="t")
    >>> table["x"]["t"]["wer"], table["x"]["s"]["wer"], table["x"]["s"]["vs"]["rel"], table["y"]["s"]["vs"]["rel"]
    (30.0, 15.0, -50.0, 0.0)
    """
    ref = counts.get(reference, {})
    table = {}
    for b in _ordered(set(labels.values()), order):
        utts = sorted(u for u, lab in labels.items() if lab == b)
        row = {}
        for model, c in counts.items():
            mine = [u for u in utts if u in c]
            if not mine:
                continue
            row[model] = bucket_wer(c, mine)
            paired = {u: ref[u] for u in mine if u in ref}
            if ref and model != reference and sum(e for e, _ in paired.values()):
                row[model]["vs"] = compare(paired, {u: c[u] for u in paired})
        table[b] = row
    return table


def breakdowns(counts, rows, kinds, rt60s, reference=None, names=BREAKDOWNS):
    """``{breakdown: {bucket: {model: cell}}}`` for one condition's manifest ``rows``.

    Rows without noises (clean) are left out. See ``utterance_labels`` and ``breakdown_table``.

    Example
    -------
    >>> rows = [{"ID": "a", "n_noises": "1", "noise_ids": "m", "snrs": "3.0", "room": "r", "speech_rir": "r/0"},
    ...         {"ID": "b", "n_noises": "1", "noise_ids": "t", "snrs": "18.0", "room": "r", "speech_rir": "r/1"}]
    >>> out = breakdowns({"m1": {"a": [3, 10], "b": [1, 10]}}, rows, {"m": "music", "t": "talk"}, {})
    >>> out["snr"]["0-5"]["m1"]["wer"], out["kind"]["talk"]["m1"]["wer"], list(out["rt60"])
    (30.0, 10.0, ['unknown'])
    """
    labels = {r["ID"]: lab for r in rows if (lab := utterance_labels(r, kinds, rt60s)) is not None}
    return {name: breakdown_table(counts, {u: lab[name] for u, lab in labels.items()}, ORDERS.get(name, ()), reference)
            for name in names}


def cell_text(cell):
    """``12.30 [10.1, 14.6] (120)``: WER, its 95% interval, utterances.

    Example
    -------
    >>> cell_text({"wer": 12.3, "lo": 10.1, "hi": 14.6, "n": 120})
    '12.30 [10.1, 14.6] (120)'
    """
    return f"{cell['wer']:.2f} [{cell['lo']:.1f}, {cell['hi']:.1f}] ({cell['n']})"


def markdown_table(table, reference=None):
    """Markdown rows ``bucket | model | WER [lo, hi] (n) | vs reference`` of a ``breakdown_table``.

    Example
    -------
    >>> table = {"x": {"t": {"wer": 30.0, "lo": 20.0, "hi": 40.0, "n": 2},
    ...                "s": {"wer": 15.0, "lo": 10.0, "hi": 20.0, "n": 2,
    ...                      "vs": {"rel": -50.0, "lo": -60.0, "hi": -40.0, "p_better": 1.0}}}}
    >>> print(markdown_table(table, "t").splitlines()[3])
    | x | s | 15.00 [10.0, 20.0] (2) | -50.0% [-60.0, -40.0] P=1.00 |
    """

    vs = f" vs {reference} [95% CI] |" if reference else ""
    lines = ["| bucket | model | WER [95% CI] (n) |" + vs, "|---|---|---|" + ("---|" if reference else "")]
    for b, row in table.items():
        for model, cell in row.items():
            change = (" " + (interval_cell(cell["vs"]) if "vs" in cell else "-") + " |") if reference else ""
            lines.append(f"| {b} | {model} | {cell_text(cell)} |{change}")
    return "\n".join(lines) + "\n"


# ---- reading an experiment folder (paths given explicitly) ----------------------------------

def _config_value(yaml_path, key):
    """A top-level value of a saved hyperparams file as text (None when the file or key is missing)."""
    v = config.value(yaml_path, key)
    return None if v is None or v == "" else str(v)


def _read_kinds(csv_paths):
    """``{noise ID: kind}`` from those of the noise manifests ``csv_paths`` that exist."""
    kinds = {}
    for path in csv_paths:
        if os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                kinds.update({r["ID"]: r["kind"] for r in csv.DictReader(f)})
    return kinds


def _experiment_root(exp_dir):
    """The folder holding ``exp/`` (saved configs' relative paths start there), else the working directory."""
    path = os.path.abspath(exp_dir)
    while os.path.dirname(path) != path:
        if os.path.basename(path) == "exp":
            return os.path.dirname(path)
        path = os.path.dirname(path)
    return os.getcwd()


def _noisy_conditions(exp_dir, scores, conditions):
    """``{condition: manifest rows}`` of the scored conditions whose manifest mixed in noise."""
    from kd_brain.data.prepare import read_csv

    scored = [c for conds in scores.values() for c in conds]
    out = {}
    for c in conditions or dict.fromkeys(scored):
        path = os.path.join(exp_dir, "conditions", f"{c}.csv")
        rows = read_csv(path) if c in scored and os.path.isfile(path) else []
        if any(_split(r.get("snrs")) for r in rows):
            out[c] = rows
    return out


def load_experiment(exp_dir, models=MODELS, conditions=None, root=None):
    """Reads what the breakdowns need from an experiment folder (``<exp>/scores.json`` and manifests).

    Noise kinds: the student's saved ``noise_csv`` (and ``<exp>/corpus/noise/noise.csv``); rooms: its
    ``room_bank`` and ``rir_csv``, relative to ``root`` (default: the folder holding ``exp/``).
    Counts are each model's headline decoder's (``kd_brain.brains.evaluate.headline``). Returns ``counts``
    ``{condition: {model: {utt: [errors, ref_words]}}}``, ``rows``, ``kinds``, ``rt60s``, ``models``
    (found), ``missing`` and ``decoders``.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "scores.json"), "w").write('{"m": {"clean": {"beam": 5.0, "utt_errors": {}}}}')
    >>> data = load_experiment(d, ["m", "x"])
    >>> data["models"], data["missing"], data["rows"]
    (['m'], ['x'], {})
    """
    from kd_brain.brains.evaluate import headline

    with open(os.path.join(exp_dir, "scores.json")) as f:
        scores = json.load(f)
    root = root or _experiment_root(exp_dir)
    cfg = os.path.join(exp_dir, "student", "hyperparams.yaml")

    def path_of(key, default):
        p = _config_value(cfg, key) or default
        return p if os.path.isabs(p) else os.path.join(root, p)

    kinds = _read_kinds([path_of("noise_csv", "../shared/data/noise/noise.csv"),
                        os.path.join(exp_dir, "corpus", "noise", "noise.csv")])
    rows = _noisy_conditions(exp_dir, scores, conditions)
    rt60s = bank_rt60s(path_of("room_bank", os.path.join(exp_dir, "rooms.pt")))
    measured = {r["speech_rir"] for rs in rows.values() for r in rs
                if r.get("speech_rir") and not r["speech_rir"].startswith(r["room"] + "/")}
    rt60s.update(measured_rt60s(path_of("rir_csv", "../shared/data/rir/rir.csv"), measured))
    found = [m for m in models if m in scores]
    counts = {c: {m: scores[m][c]["utt_errors"][headline(scores[m][c])] for m in found if c in scores[m]}
              for c in rows}
    decoders = {m: sorted({headline(s) for s in scores[m].values()}) for m in found}
    return {"counts": counts, "rows": rows, "kinds": kinds, "rt60s": rt60s, "models": found,
            "missing": [m for m in models if m not in scores], "decoders": decoders}


def _header(exp_dir, data, reference):
    """The report's first lines: how the cells read, decoders, skipped models."""
    vs = f"; vs {reference}: relative change [95% paired interval] P(better)" if reference else ""
    lines = [f"# Breakdowns: {exp_dir}", "", f"Cells: WER % [95% bootstrap interval] (utterances){vs}. "
             "Buckets as defined in kd_brain/results/breakdown.py (SNR: effective SNR of all noises; RT60 of the "
             "speech's room).", "",
             "Headline decoders: " + "; ".join(f"{m} {'/'.join(d)}" for m, d in data["decoders"].items()) + "."]
    if data["missing"]:
        lines.append(f"Not in scores.json (skipped): {', '.join(data['missing'])}.")
    return "\n".join(lines) + "\n"


def write_breakdown(exp_dir, models=MODELS, reference="teacher_seq", conditions=None):
    """Writes ``<exp>/breakdown.md``, ``breakdown_snr.png`` and ``breakdown_bars_<condition>.png``.

    Returns ``(markdown, [png paths])``. Models missing from ``scores.json`` are skipped with a
    note; without ``reference`` among them there is no relative-change column.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "scores.json"), "w").write('{"m": {"clean": {"beam": 5.0, "utt_errors": {}}}}')
    >>> md, pngs = write_breakdown(d, ["m"])
    >>> md.splitlines()[0] == f"# Breakdowns: {d}", pngs
    (True, [])
    """
    from kd_brain.results.plots import breakdown_bars, snr_chart

    data = load_experiment(exp_dir, models, conditions)
    reference = reference if reference in data["models"] else None
    parts, tables = [_header(exp_dir, data, reference)], {}
    for cond, rows in data["rows"].items():
        tables[cond] = breakdowns(data["counts"][cond], rows, data["kinds"], data["rt60s"], reference)
        parts += [f"### {cond}: {TITLES[name]}\n\n" + markdown_table(t, reference) for name, t in tables[cond].items()]
    markdown = "\n".join(parts)
    with open(os.path.join(exp_dir, "breakdown.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    pngs = []
    if tables:
        pngs.append(os.path.join(exp_dir, "breakdown_snr.png"))
        snr_chart({c: t["snr"] for c, t in tables.items()}, pngs[-1])
    for cond, t in tables.items():
        pngs.append(os.path.join(exp_dir, f"breakdown_bars_{cond}.png"))
        breakdown_bars({TITLES[n]: table for n, table in t.items()}, pngs[-1], title=cond)
    return markdown, pngs
