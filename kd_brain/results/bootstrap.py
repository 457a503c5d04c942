"""Paired bootstrap intervals for WER differences (Bisani and Ney, ICASSP 2004).

A WER difference between two systems on one test set is a claim about a
distribution of test utterances. Resampling the utterances with replacement
(the same draw for both systems: *paired*) gives the spread of the relative
change ``(WER_b - WER_a) / WER_a`` and the probability that b improves on a.
With few speakers, utterances of one speaker are correlated; the *block*
bootstrap resamples whole speakers instead. Both work on per-utterance
``(word errors, reference words)`` counts, which ``EvalBrain`` keeps for every
model and condition, so intervals can be recomputed and pooled over seeds
(errors summed per utterance over the seeds' models).
"""

import numpy as np

REPLICATES = 10000


def _resample_weights(n_units, replicates, seed):
    """[R, n] multiplicities of a bootstrap draw of n units with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(replicates, n_units))
    weights = np.zeros((replicates, n_units), dtype=np.float64)
    np.add.at(weights, (np.repeat(np.arange(replicates), n_units), draws.ravel()), 1.0)
    return weights


def paired_bootstrap(errors_a, errors_b, ref_words, groups=None, replicates=REPLICATES, seed=0):
    """Relative WER change of b against a, its 95% interval and P(b better).

    Arguments
    ---------
    errors_a, errors_b : sequence of int
        Word errors of systems a (the reference) and b per utterance, same order.
    ref_words : sequence of int
        Reference words per utterance.
    groups : sequence, optional
        A block label per utterance (speaker): resample blocks, not utterances.
    replicates : int
    seed : int
        The interval is a pure function of the counts and this seed.

    Returns
    -------
    dict
        ``rel`` (percent, negative = b better), ``lo``, ``hi`` (2.5 and 97.5
        percentiles), ``p_better`` (share of replicates where b has fewer
        errors), ``n`` (utterances), ``blocks``.

    Example
    -------
    >>> a = [3, 2, 4, 3, 5, 2, 3, 4] * 10
    >>> b = [1, 1, 2, 2, 3, 1, 2, 2] * 10
    >>> r = paired_bootstrap(a, b, [10] * 80)
    >>> r["rel"], r["hi"] < 0, r["p_better"]
    (-46.2, True, 1.0)
    >>> paired_bootstrap(a, a, [10] * 80)["rel"]
    0.0
    """
    ea, eb, n = (np.asarray(x, dtype=np.float64) for x in (errors_a, errors_b, ref_words))
    if not (len(ea) == len(eb) == len(n)) or len(ea) == 0:
        raise ValueError(f"paired bootstrap: {len(ea)}, {len(eb)} and {len(n)} utterances; need the same, > 0")
    if groups is None:
        units_a, units_b = ea, eb
    else:
        labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
        units_a = np.bincount(inverse, weights=ea, minlength=len(labels))
        units_b = np.bincount(inverse, weights=eb, minlength=len(labels))
    w = _resample_weights(len(units_a), replicates, seed)
    sum_a, sum_b = w @ units_a, w @ units_b
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 100.0 * (sum_b - sum_a) / sum_a
    rel = rel[np.isfinite(rel)]
    point = 100.0 * (eb.sum() - ea.sum()) / ea.sum() if ea.sum() else float("nan")
    lo, hi = np.percentile(rel, [2.5, 97.5]) if len(rel) else (float("nan"), float("nan"))
    return {"rel": round(float(point), 1), "lo": round(float(lo), 1), "hi": round(float(hi), 1),
            "p_better": round(float(np.mean(sum_b < sum_a)), 3), "n": int(len(ea)), "blocks": int(len(units_a))}


def verdict(interval):
    """The results' wording for an interval of the relative change (negative = better).

    Example
    -------
    >>> verdict({"lo": -12.0, "hi": -3.0}), verdict({"lo": -5.0, "hi": 2.0}), verdict({"lo": 1.0, "hi": 9.0})
    ('better with 95% confidence', 'no significant difference', 'worse with 95% confidence')
    """
    if interval["hi"] < 0:
        return "better with 95% confidence"
    if interval["lo"] > 0:
        return "worse with 95% confidence"
    return "no significant difference"


def pooled_counts(per_seed, condition):
    """Sums per-utterance errors over several runs of one model (seeds) on a condition.

    ``per_seed``: list of ``{condition: {utt: [errors, ref_words]}}``.
    Returns ``{utt: [errors summed, ref_words summed]}`` over the utterances all runs scored.

    Example
    -------
    >>> pooled_counts([{"c": {"u": [1, 5]}}, {"c": {"u": [2, 5]}}], "c")
    {'u': [3, 10]}
    """
    runs = [r[condition] for r in per_seed if condition in r]
    if not runs:
        return {}
    common = set(runs[0]).intersection(*runs[1:])
    return {u: [sum(r[u][0] for r in runs), sum(r[u][1] for r in runs)] for u in sorted(common)}


def compare(counts_a, counts_b, speakers=None, seed=0):
    """``paired_bootstrap`` over the utterances both ``{utt: [errors, ref_words]}`` have.

    With ``speakers`` (``{utt: speaker}``) the result has a ``block`` entry:
    the same comparison resampling whole speakers.
    """
    utts = sorted(set(counts_a) & set(counts_b))
    if not utts:
        raise ValueError("no utterance scored by both systems")
    if any(counts_a[u][1] != counts_b[u][1] for u in utts):
        raise ValueError("the two systems were scored against different references")
    ea, eb, n = [counts_a[u][0] for u in utts], [counts_b[u][0] for u in utts], [counts_a[u][1] for u in utts]
    out = paired_bootstrap(ea, eb, n, seed=seed)
    if speakers:
        out["block"] = paired_bootstrap(ea, eb, n, groups=[speakers.get(u, u) for u in utts], seed=seed)
    return out


def transcript_counts(references, hypotheses):
    """``{utt: [word errors, reference words]}`` of ``{utt: text}`` hypotheses against references.

    Scored as ``EvalBrain`` scores (SpeechBrain's ``ErrorRateStats`` on
    whitespace-split words), so its counts can be compared with
    :func:`compare`. Every reference utterance must have a hypothesis.

    Example
    -------
    >>> transcript_counts({"u1": "A B C", "u2": "D"}, {"u1": "A C", "u2": "D"})
    {'u1': [1, 3], 'u2': [0, 1]}
    """
    from speechbrain.utils.metric_stats import ErrorRateStats

    missing = sorted(set(references) - set(hypotheses))
    if missing:
        raise ValueError(f"{len(missing)} utterances have no hypothesis, e.g. {missing[0]}")
    utts = sorted(references)
    stats = ErrorRateStats()
    stats.append(utts, [hypotheses[u].split() for u in utts], [references[u].split() for u in utts])
    return {s["key"]: [int(s["num_edits"]), int(s["num_ref_tokens"])] for s in stats.scores}
