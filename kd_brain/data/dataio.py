"""Datasets and audio reading for training and evaluation."""

import logging

import soundfile as sf
import speechbrain as sb
import torch

from kd_brain.data import validate
from kd_brain.data.prepare import CorpusError

logger = logging.getLogger(__name__)


def read_audio(path, utt_id=None):
    """Reads a 16 kHz file as a mono float32 tensor (soundfile; no torchcodec needed).

    A missing, unreadable or truncated file, another sample rate, no samples,
    NaN or infinite samples, or digital silence is a CorpusError naming the
    file and, when given, the utterance (``kd_brain.data.validate.read_checked``;
    clipping is checked when a corpus is prepared, not here). Several
    channels are averaged.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(p, np.full(800, np.nan, dtype="float32"), 16000, subtype="FLOAT")
    >>> read_audio(p, "u1")
    Traceback (most recent call last):
    ...
    kd_brain.data.splits.CorpusError: utterance u1: ...a.wav has NaN or infinite samples
    """
    return torch.from_numpy(validate.read_checked(utt_id, path, dtype="float32", clipping=False))


def make_dataset(csv_path, tokenizer=None, sort_key=None, aux_tokenizer=None):
    """A DynamicItemDataset over a manifest with ``sig`` and, if ``wrd`` exists, ``tokens``.

    Arguments
    ---------
    csv_path : str or dict
        Manifest with at least ``ID, wav`` (and ``duration`` for sorting),
        checked before use (``kd_brain.data.validate.read_manifest``: encoding,
        columns, field counts, unique IDs, durations, non-empty ``wrd``); a
        fault is a CorpusError naming the file, line, column and utterance.
        A dict ``{name: manifest}`` joins several (e.g. the dev conditions):
        each utterance's ID becomes ``name/ID`` (see :func:`split_id`).
    tokenizer : kd_brain.data.tokenizer.Tokenizer, optional
        Needed for ``tokens``; left out for unlabelled manifests.
    sort_key : str, optional
        Sort the dataset by this column (e.g. "duration", for evaluation speed).
    aux_tokenizer : kd_brain.data.tokenizer.Tokenizer, optional
        Adds ``aux_tokens``: the transcript in the auxiliary CTC head's units.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> from kd_brain.data.prepare import write_csv
    >>> d = tempfile.mkdtemp(); wav = os.path.join(d, "a.wav")
    >>> sf.write(wav, np.random.RandomState(0).randn(16000) * 0.1, 16000)
    >>> write_csv(os.path.join(d, "m.csv"), [dict(ID="a", duration=1.0, wav=wav)], ["ID", "duration", "wav"])
    >>> ds = make_dataset(os.path.join(d, "m.csv"))
    >>> ds[0]["sig"].shape
    torch.Size([16000])
    """
    if isinstance(csv_path, dict):
        data = {f"{name}/{utt}": row for name, path in csv_path.items()
                for utt, row in validate.read_manifest(path, ("ID", "wav")).items()}
    else:
        data = validate.read_manifest(csv_path, ("ID", "wav"))
    ds = sb.dataio.dataset.DynamicItemDataset(data)
    keys = ["id", "sig"]

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(utt_id, wav):
        return read_audio(wav, utt_id)

    ds.add_dynamic_item(audio_pipeline)
    first = ds.data[ds.data_ids[0]] if len(ds) else {}
    if "wrd" in first and tokenizer is not None:

        @sb.utils.data_pipeline.takes("wrd")
        @sb.utils.data_pipeline.provides("wrd", "tokens")
        def text_pipeline(wrd):
            yield wrd
            yield torch.LongTensor(tokenizer.encode(wrd))

        ds.add_dynamic_item(text_pipeline)
        keys += ["wrd", "tokens"]
        if aux_tokenizer is not None:
            ds.add_dynamic_item(lambda wrd: torch.LongTensor(aux_tokenizer.encode(wrd)),
                                takes="wrd", provides="aux_tokens")
            keys.append("aux_tokens")
    elif "wrd" in first:
        keys.append("wrd")
    ds.set_output_keys(keys)
    if sort_key and sort_key in first:  # e.g. an extra test manifest may have no duration column
        ds = ds.filtered_sorted(sort_key=sort_key)
    return ds


def split_id(utt_id):
    """``(set name, utterance ID)`` of an ID of a joined dataset (``make_dataset({name: csv})``);
    ``(None, ID)`` for a plain one.

    Example
    -------
    >>> split_id("dev_noisy/spk1_003"), split_id("spk1_003")
    (('dev_noisy', 'spk1_003'), (None, 'spk1_003'))
    """
    name, sep, utt = utt_id.partition("/")
    return (name, utt) if sep else (None, utt_id)


def make_student_dataset(manifests, tokenizer, contaminator=None, store=None, nbest=False, labelled_only=False):
    """Training set for the student: several manifests, transcripts where they exist.

    Rows of manifests without a ``wrd`` column (the unlabelled pool) get
    ``labelled`` False and a placeholder token: the transcripts kept aside
    for evaluation are never opened.
    Adds ``noisy_sig`` (``contaminator(sig, utt_id)``; the epoch is the
    contaminator's), ``kd_idx`` / ``kd_logp`` (top-k of the soft-label store),
    ``kd_side`` (its side array, when the store has one: targets ``tail``
    and ``sampled``) and ``kd_nbest`` (the teacher's N-best as (token ids,
    score) pairs).

    Arguments
    ---------
    manifests : list of str
        CSV manifests with ``ID, duration, wav`` (and ``wrd`` when labelled),
        checked as in ``make_dataset``; an ID in two of them is an error.
    tokenizer : kd_brain.data.tokenizer.Tokenizer
    contaminator : callable, optional
        ``(wav, utt_id) -> noisy wav`` of the same length.
    store : kd_brain.store.SoftLabelStore, optional
    nbest : bool
        Also read the stored N-best lists.
    labelled_only : bool
        Leave out rows without a transcript (criteria whose targets are
        transcripts: CTC, MWER); an error if none is left.
    """
    data = {}
    for path in manifests:
        for utt, row in validate.read_manifest(path, ("ID", "duration", "wav")).items():
            if utt in data:
                raise CorpusError(f"{path}: utterance {utt} is also in another training manifest")
            data[utt] = {"wav": row["wav"], "duration": row["duration"], "wrd": row.get("wrd", "")}
    if labelled_only:
        n_all = len(data)
        data = {u: d for u, d in data.items() if d["wrd"]}
        if not data:
            raise CorpusError(f"train_splits {manifests}: no utterance has a transcript, and the criterion needs one")
        if len(data) < n_all:
            logger.info("%d of %d training utterances have no transcript: left out (the criterion needs one)",
                        n_all - len(data), n_all)
    ds = sb.dataio.dataset.DynamicItemDataset(data)
    keys = ["id", "sig", "wrd", "tokens", "labelled"]

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(utt_id, wav):
        return read_audio(wav, utt_id)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens", "labelled")
    def text_pipeline(wrd):
        # an unlabelled row gets one placeholder token (a batch of empty tensors cannot be padded)
        yield torch.LongTensor(tokenizer.encode(wrd) if wrd else [0])
        yield torch.tensor([bool(wrd)])

    ds.add_dynamic_item(audio_pipeline)
    ds.add_dynamic_item(text_pipeline)
    if contaminator is not None:
        ds.add_dynamic_item(contaminator_item(contaminator))
        keys.append("noisy_sig")
    if store is not None:
        @sb.utils.data_pipeline.takes("id")
        @sb.utils.data_pipeline.provides("kd_idx", "kd_logp")
        def label_pipeline(utt_id):
            labels = store[utt_id]
            yield labels.indices
            yield labels.log_probs

        ds.add_dynamic_item(label_pipeline)
        keys += ["kd_idx", "kd_logp"]
        if store.side_temperatures:
            ds.add_dynamic_item(store.side, takes="id", provides="kd_side")
            keys.append("kd_side")
        if nbest:
            ds.add_dynamic_item(store.nbest, takes="id", provides="kd_nbest")
            keys.append("kd_nbest")
    ds.set_output_keys(keys)
    return ds


def contaminator_item(contaminator):
    """A dynamic item ``(id, sig) -> noisy_sig`` for a dataset."""

    @sb.utils.data_pipeline.takes("id", "sig")
    @sb.utils.data_pipeline.provides("noisy_sig")
    def contaminate(utt_id, sig):
        return contaminator(sig, utt_id)

    return contaminate
