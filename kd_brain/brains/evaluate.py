"""Evaluation: decode named test conditions, score WER, keep one results table.

``EvalBrain`` shares the CTC forward pass of teacher and student and decodes
every batch with CTC greedy and CTC prefix beam search (speechbrain's
decoders) and, when the config has a language model, with flashlight's
n-gram beam search (a sub-word or a word n-gram, ``kd_brain.decode.lm``). WER comes from ``ErrorRateStats`` and is cross-checked against
jiwer on the same hypotheses; a disagreement is an error, not a warning.
Per condition it writes ``wer_<condition>_<decoder>.txt`` (with alignments);
``update_results`` merges the numbers into ``results.json`` and rewrites
``results.md`` (rows: model and decoder; columns: conditions). The headline WER of a model
(``results.json``, the paper table) is its best decoder: ``lm`` when the
config has one, else ``beam``. ``LogProbsBrain`` runs the same pass and keeps
what the decoders are given instead, to decode it again at other settings
(``decoder_stats``; the LM grid of ``recipes/KD-Noise/tune_lm.py``).
"""

import json
import logging
import os

import jiwer
import speechbrain as sb
import torch
from speechbrain.utils.distributed import main_process_only
from speechbrain.utils.metric_stats import ErrorRateStats

from kd_brain.pipeline.atomic import atomic_open, write_json, write_text
from kd_brain.brains.ctc import CTCBrain

logger = logging.getLogger(__name__)
DECODERS = ("greedy", "beam", "lm")


class EvalBrain(CTCBrain):
    """Decodes test sets with greedy and prefix beam search (and the n-gram LM, if configured).

    Needs ``tokenizer`` and ``beam_searcher`` (a
    ``speechbrain.decoders.ctc.CTCPrefixBeamSearcher``); an optional
    ``lm_decoder`` (``kd_brain.decode.lm.LexiconLMDecoder``) adds the "lm"
    decoder. Set ``condition`` before ``evaluate``; the scores land in
    ``self.results[condition]``.
    """

    condition = "test"

    def __init__(self, *args, beam_searcher=None, lm_decoder=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.beam_searcher, self.lm_decoder = beam_searcher, lm_decoder

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions
        refs = [w.split() for w in batch.wrd]
        hyps = {
            "greedy": self.greedy_words(log_probs, lens),
            "beam": [h[0].text.split() for h in self.beam_searcher(log_probs, lens)],
        }
        if "lm" in self.metrics:
            hyps["lm"] = self.lm_decoder(log_probs, lens)
        for name, hyp in hyps.items():
            self.metrics[name].append(batch.id, hyp, refs)
            self.pairs[name].extend(zip(refs, hyp))
        return torch.zeros((), device=self.device)

    def on_stage_start(self, stage, epoch=None):
        decoders = DECODERS if self.lm_decoder is not None else DECODERS[:2]
        self.metrics = {d: ErrorRateStats() for d in decoders}
        self.pairs = {d: [] for d in decoders}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TEST:
            return
        out_dir = self.hparams.output_folder
        scores, utt_errors = {"n_utts": len(self.pairs["greedy"])}, {}
        for dec in self.metrics:
            wer = self.metrics[dec].summarize("error_rate")
            check = 100 * jiwer.wer([" ".join(r) for r, _ in self.pairs[dec]],
                                    [" ".join(h) for _, h in self.pairs[dec]])
            if abs(check - wer) > 1e-6:
                raise RuntimeError(f"{self.condition}/{dec}: ErrorRateStats WER {wer} != jiwer WER {check}")
            with atomic_open(os.path.join(out_dir, f"wer_{self.condition}_{dec}.txt")) as f:
                self.metrics[dec].write_stats(f)
            scores[dec] = round(wer, 2)
            # per-utterance counts, so paired-bootstrap intervals can be recomputed (kd_brain.results.bootstrap)
            utt_errors[dec] = {u["key"]: [int(u["num_edits"]), int(u["num_ref_tokens"])]
                               for u in self.metrics[dec].scores}
        scores["utt_errors"] = utt_errors
        self.results[self.condition] = scores
        logger.info("%s: %s", self.condition, {d: scores[d] for d in self.metrics})


class LogProbsBrain(EvalBrain):
    """EvalBrain with its decoding left for later: it keeps, per batch, what its decoders are given.

    Run it like an EvalBrain (:func:`evaluate_conditions`: the same checkpoint
    choice, loader, batches, padding and ``compute_forward``); then
    ``results[condition]["batches"]`` lists per batch ``(ids, transcripts,
    log_probs [B, T, V], relative lengths [B])``, tensors on the CPU. Decoding
    them with :func:`decoder_stats` scores exactly what EvalBrain scores, so a
    decoder's settings can be tried many times over one forward pass.
    """

    def on_stage_start(self, stage, epoch=None):
        self.batches = []

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lens = predictions
        self.batches.append((list(batch.id), list(batch.wrd), log_probs.detach().cpu(), lens.detach().cpu()))
        return torch.zeros((), device=self.device)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TEST:
            self.results[self.condition] = {"batches": self.batches}


def decoder_stats(decoder, batches):
    """``ErrorRateStats`` of ``decoder`` (``(log_probs, lens) -> word lists``) over ``LogProbsBrain`` batches.

    Each batch is decoded whole, with its lengths, and scored as
    ``EvalBrain.compute_objectives`` scores it.

    Example
    -------
    >>> lp = torch.zeros(2, 3, 4)
    >>> batches = [(["a", "b"], ["yes", "no no"], lp, torch.tensor([1.0, 2 / 3]))]
    >>> round(decoder_stats(lambda log_probs, lens: [["yes"], ["no"]], batches).summarize("error_rate"), 2)
    33.33
    """
    stats = ErrorRateStats()
    for ids, words, log_probs, lens in batches:
        stats.append(ids, decoder(log_probs, lens), [w.split() for w in words])
    return stats


def evaluate_conditions(brain, conditions, loader_kwargs=None, min_key="WER"):
    """Evaluates ``brain`` on every ``{name: dataset}``; returns ``{name: scores}``.

    The checkpoint with the lowest ``min_key`` is loaded (SpeechBrain's
    ``on_evaluate_start``), so every condition scores the same model. Under
    torchrun only the main process decodes (once, the 1-process numbers; it
    writes the ``wer_*.txt`` files); the other ranks wait and receive its scores.
    """
    return main_process_only(_evaluate_conditions)(brain, conditions, loader_kwargs, min_key)


def _evaluate_conditions(brain, conditions, loader_kwargs, min_key):
    brain.results = {}
    for name, dataset in conditions.items():
        brain.condition = name
        brain.evaluate(dataset, min_key=min_key, test_loader_kwargs=dict(loader_kwargs or {}))
        # speaker of each utterance: the block bootstrap resamples speakers
        brain.results[name]["speakers"] = {u: dataset.data[u].get("spk_id", u) for u in dataset.data_ids}
    return brain.results


def update_results(results_dir, model_name, scores):
    """Merges one model's ``{condition: {"greedy", "beam"[, "lm"], "n_utts", "utt_errors", "speakers"}}``
    into ``scores.json`` (everything) and ``results.json`` (``wer``: model ->
    condition -> WER of the headline decoder, see ``headline``; ``utt_errors``:
    model -> condition -> utterance -> [word errors, reference words] of that
    decoder; ``speakers``: condition -> utterance -> speaker), rewrites
    ``results.md``; returns the markdown.

    Example
    -------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> md = update_results(d, "teacher", {"clean": {"greedy": 10.0, "beam": 9.5, "n_utts": 3}})
    >>> print(md.splitlines()[2])
    | teacher | beam | 9.50 |
    >>> json.load(open(os.path.join(d, "results.json")))["wer"]
    {'teacher': {'clean': 9.5}}
    """
    path = os.path.join(results_dir, "scores.json")
    table = {}
    if os.path.isfile(path):
        with open(path) as f:
            table = json.load(f)
    table[model_name] = scores
    os.makedirs(results_dir, exist_ok=True)
    _write_json(path, table)
    _write_json(os.path.join(results_dir, "results.json"), headline_results(table))
    md = results_markdown(table)
    write_text(os.path.join(results_dir, "results.md"), md)
    return md


def headline_results(table):
    """``results.json`` from ``scores.json``: headline WER, per-utterance counts and speakers."""
    out = {"wer": {}, "utt_errors": {}, "speakers": {}}
    for model, conds in table.items():
        out["wer"][model] = {c: s[headline(s)] for c, s in conds.items()}
        out["utt_errors"][model] = {c: s["utt_errors"][headline(s)] for c, s in conds.items() if "utt_errors" in s}
        for c, s in conds.items():
            out["speakers"].setdefault(c, {}).update(s.get("speakers", {}))
    return out


def headline_decoder(lm_decoder, beam_searcher):
    """The headline decoder as ``(log_probs, lens) -> word lists``: ``lm_decoder`` when the config
    has one, else the prefix beam search (what :func:`headline` reports)."""
    if lm_decoder is not None:
        return lm_decoder
    return lambda log_probs, lens: [h[0].text.split() for h in beam_searcher(log_probs, lens)]


def headline(scores):
    """The decoder whose WER represents a model: "lm" when it was run, else "beam"."""
    return "lm" if "lm" in scores else "beam"


def _write_json(path, obj):
    write_json(path, obj, indent=1)  # all or nothing; a failed write (full disk) names the file


def results_markdown(table):
    """WER table: one row per model and decoder, one column per condition."""
    conds = []
    for scores in table.values():
        conds += [c for c in scores if c not in conds]
    n = {c: s[c]["n_utts"] for s in table.values() for c in s}
    lines = ["| model | decoder | " + " | ".join(f"{c} (n={n[c]})" for c in conds) + " |",
             "|---|---|" + "---|" * len(conds)]
    for model, scores in table.items():
        for dec in ("lm", "beam", "greedy"):
            if not any(dec in s for s in scores.values()):
                continue
            cells = [f"{scores[c][dec]:.2f}" if dec in scores.get(c, {}) else "-" for c in conds]
            lines.append(f"| {model} | {dec} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
