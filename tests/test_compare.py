"""compare.py: two models' per-utterance errors -> interval, verdict; a model without counts is named."""

import json

import pytest

from tests.conftest import load_recipe


def scores(errors):
    return {"dev": {"lm": 100.0 * sum(e for e, _ in errors.values()) / sum(n for _, n in errors.values()),
                    "n_utts": len(errors), "utt_errors": {"lm": errors},
                    "speakers": {u: u[:2] for u in errors}}}


def test_compare_prints_interval_and_verdict(tmp_path, capsys):
    ref = {f"s{i % 4}u{i}": [3, 10] for i in range(40)}
    better = {u: [1, 10] for u in ref}
    (tmp_path / "scores.json").write_text(json.dumps({"a": scores(ref), "b": scores(better)}))
    rows = load_recipe("compare").main([str(tmp_path), "a", "b"])
    assert rows == ["| dev | lm | 30.00 | 10.00 | -66.7% [-66.7, -66.7] P=1.00 | -66.7% [-66.7, -66.7] P=1.00 | "
                    "better with 95% confidence |"]
    with pytest.raises(SystemExit, match="no model 'c'"):
        load_recipe("compare").main([str(tmp_path), "a", "c"])
