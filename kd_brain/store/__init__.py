"""Soft-label store: the teacher's top-k CTC log-probabilities (or K draws), per utterance.

Layout of a store directory::

    meta.json                     store settings + the creator's metadata
    shard-r0000-00000.kds         finalized shards, one series per rank
    shard-r0001-00000.kds.tmp     a shard being written (discarded on resume)
    index.kdi                     merged index over all finalized shards

Every frame keeps the teacher's top-k token indices and their log-probs at
T = 1, sorted by descending log-prob; any temperature is applied at read time
(:func:`temper`), which equals softmax(logits / T) restricted to the top-k
and renormalised, because log-probs differ from logits by a per-frame
constant.

For the frame-target ablations (:mod:`kd_brain.kd.targets`; the student's
``target``), a store may also hold a *side array* per frame, one value per
temperature in its meta's ``side_temperatures`` (an extraction setting, so
a student reads at exactly those T): in a top-k store the tempered mass of
the units beyond its k (``target: tail``); in a *sampled* store (meta
``target: sampled``, ``sample_seed``), whose K entries per frame are draws
with replacement from the T = 1 softmax (duplicates adjacent), the
per-frame ``log Z_T`` its importance weights need. A store without these keys
(one extracted with ``side_temperatures: []``) holds the plain top-k records,
byte for byte, and is read as one.

The record encoding is in :mod:`kd_brain.store.codec`, the file framing
(blocks, shard footers, index) in :mod:`kd_brain.store.files`, the writer in
:mod:`kd_brain.store.writer`, the reader in :mod:`kd_brain.store.reader`; all of them are
used through this package's names.

Disk cost at k = 20 (the CPU configs, 256 sub-words, and the large
LibriSpeech config, 512 units, emit 25 frames/s):

* computed, uncompressed: k * (2 B index + 2 B value) = 80 B/frame
  = 7.2 MB per hour of audio (x 7,200 h = 52 GB);
* measured, the main job's sub-word store (``bench/bench_real_store.py``):
  8.5 / 15.2 / 27.0 / 49.6 B/frame at k = 5 / 10 / 20 / 40, i.e. 2.4 MB
  per hour of audio at k = 20 (x 7,200 h = 17.5 GB); a character teacher's
  store (30 units) takes 21.8 B/frame at k = 20;
* measured, the ablations' extras on that teacher (the same benchmark
  re-runs it over 306 s of the store's audio): the side array at
  T = 1, 2, 4 adds 4.3 B/frame at k = 20 or 40 (+16% at k = 20); a sampled
  store costs 5.2 / 5.7 B/frame at K = 20 / 40, 2.3 of it the side array
  (the teacher is peaky: 1.2-1.3 distinct units per frame among the draws);
* estimated, large config (no such teacher is trained here):
  ``bench/bench_store.py`` on synthetic peaky CTC posteriors at V = 500
  (a linear read-out of a smooth encoder state; see the benchmark) gives
  25.9 B/frame = 2.33 MB per hour of audio (x 7,200 h = 17 GB), with mean
  KL 6e-5 (T = 1) / 2e-4 (T = 2) nats/frame; 32 B/frame (2.9 MB/h) in the
  worst case of i.i.d. tails. Dense float32 HDF5 at V = 500 is 2,000 B/frame
  = 180 MB per hour (1.3 TB).

The indices cost ~19 of those 25.9 bytes: with the exact rank order kept, a
tail whose ordering changes every frame is close to incompressible (their
order-0 entropy per rank is 14.2 B/frame on the benchmark). zstd level 3 is
the default: level 9 saves ~0.6 B/frame but costs more CPU per record, on top
of the ~5% of the CPU teacher's forward pass that writing at level 3 adds
(``bench/bench_extract.py``; RESULTS.md, benchmarks).
"""
from kd_brain.kd.targets import temper  # noqa: F401
from kd_brain.store.codec import quant_bound  # noqa: F401
from kd_brain.store.files import (CorruptStoreError, IncompatibleStoreError, StoreError, merge_index,  # noqa: F401
                                  stored_ids)
from kd_brain.store.reader import SoftLabels, SoftLabelStore  # noqa: F401
from kd_brain.store.writer import SoftLabelWriter  # noqa: F401
