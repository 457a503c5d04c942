#!/usr/bin/env python3
"""Writes hard pseudo-labels of the unlabelled pool (the ``pseudo_label`` baseline's targets).

    python recipes/KD-Noise/pseudo_label.py hparams/extract.yaml [--teacher_dir=... --pseudo_csv=...]

The model in ``teacher_dir`` (any trained model folder, at its lowest-dev-WER
checkpoint) transcribes the unlabelled manifest with its headline decoder
(the n-gram search of its teacher config, else prefix beam search). A finished
manifest from the same checkpoint is left alone. Thin glue over kd_brain.brains.pseudo.
"""

import json
import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.decoders.ctc import CTCPrefixBeamSearcher

from kd_brain.data.dataio import make_dataset
from kd_brain.brains.extract import file_hash
from kd_brain.pipeline.modeldir import lm_decoder, lm_settings, load_label_source
from kd_brain.brains.pseudo import PseudoLabelBrain, pseudo_label_done, pseudo_label_manifest


def headline_decoder(origin, tokenizer, beam_size):
    """The decoder whose WER the paper table reports: the n-gram search if configured, else beam."""
    lm = lm_decoder(lm_settings(origin), origin["data_folder"], tokenizer)
    if lm is not None:
        return lm, "lm"
    beam = CTCPrefixBeamSearcher(blank_index=0, vocab_list=tokenizer.vocab_list(), beam_size=beam_size)
    return (lambda lp, lens: [h[0].text.split() for h in beam(lp, lens)]), "beam"


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, overrides)
    mhp, origin, best, tokenizer = load_label_source(hp["teacher_dir"])
    decode, decoder_name = headline_decoder(origin, tokenizer, mhp.get("beam_size", 10))
    meta = {"teacher_dir": hp["teacher_dir"], "checkpoint": os.path.relpath(best.path, hp["teacher_dir"]),
            "checkpoint_hash": file_hash(best.paramfiles["model"]), "decoder": decoder_name}
    out = hp["pseudo_csv"]
    if pseudo_label_done(out, meta):
        print(f"{out}: already written from the same checkpoint: skipped")
        return
    brain = PseudoLabelBrain(modules=mhp["modules"], hparams=mhp, run_opts=run_opts, checkpointer=mhp["checkpointer"],
                             decode=decode)
    brain.checkpoint = best
    dataset = make_dataset(os.path.join(origin["data_folder"], "unlabelled.csv"), sort_key="duration")
    counts = pseudo_label_manifest(brain, dataset, out, hp["batch_size"])
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, **counts}, f, indent=1)
    print(f"{out}: {counts['utterances']} utterances pseudo-labelled with {decoder_name} "
          f"({counts['empty']} empty, left out)")


if __name__ == "__main__":
    main(sys.argv[1:])
