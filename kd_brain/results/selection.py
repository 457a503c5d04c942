"""The selection rule: every decision is taken on the mean WER over the dev conditions.

Checkpoints, decoder weights, the blank weight, the clean share and every
ablation's "dev-best" are chosen on one number: the mean, over the dev
conditions (``dev``: the dev speakers' clean audio; ``dev_noisy``: the same
utterances through the training noise pool and simulated rooms, one fixed
draw written by the prepare stage), of each condition's WER with the decoder
the results table reports (``lm``). A noise-robust model is thus never tuned
on clean speech alone, and never on a test condition.
"""

DEV_CONDITIONS = ("dev", "dev_noisy")


def dev_wer(stats):
    """The selection WER of a speechbrain ``ErrorRateStats`` over a joined dev set.

    IDs ``condition/utt`` (:func:`kd_brain.data.dataio.split_id`) are grouped by
    condition; the result is the mean of the conditions' WERs (each the
    errors over the reference words of that condition). A plain dev set
    (IDs without a condition) gives its WER.

    Example
    -------
    >>> from speechbrain.utils.metric_stats import ErrorRateStats
    >>> stats = ErrorRateStats()
    >>> stats.append(["dev/a", "dev_noisy/a"], [["x"], ["y", "z"]], [["x"], ["x", "z"]])
    >>> dev_wer(stats)
    25.0
    """
    from kd_brain.data.dataio import split_id

    counts = {}
    for score in stats.scores:
        name = split_id(score["key"])[0]
        edits, words = counts.get(name, (0, 0))
        counts[name] = edits + score["num_edits"], words + score["num_ref_tokens"]
    if not counts:
        return stats.summarize("error_rate")
    return sum(100.0 * e / max(n, 1) for e, n in counts.values()) / len(counts)


def dev_score(wer):
    """The selection WER of a results row ``{condition: WER}``: the mean over its dev conditions,
    None without any.

    Example
    -------
    >>> dev_score({"dev": 18.0, "dev_noisy": 38.0, "clean": 17.0})
    28.0
    >>> dev_score({"clean": 17.0}) is None
    True
    """
    scores = [wer[c] for c in DEV_CONDITIONS if wer.get(c) is not None]
    return sum(scores) / len(scores) if scores else None
