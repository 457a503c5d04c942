"""Results: the paper table, paired-bootstrap intervals, WER breakdowns, ablation tables, charts."""
