"""ONNX export of a trained model in icefall's CTC convention (``export-onnx-ctc.py``), and running it.

:func:`export_onnx` writes into a folder:

* ``model.onnx``: inputs ``x`` (float32 [N, T, n_mels], speechbrain ``Fbank``
  features, not normalised: the model's global normaliser is inside the graph)
  and ``x_lens`` (int64 [N], feature frames); outputs ``log_probs`` (float32
  [N, T', V]) and ``log_probs_len`` (int64 [N], ``((x_lens + 1) // 2 + 1) // 2``);
  N and T dynamic. Features, as in icefall, because torch's ONNX exporter cannot
  export speechbrain's complex-valued STFT: the metadata's ``fbank`` holds the
  ``Fbank`` keyword arguments, and :class:`OnnxAcoustic` computes it in Python.
* ``model.int8.onnx``: int8 MatMul weights (onnxruntime ``quantize_dynamic``, QInt8).
* ``tokens.txt``: ``<unit> <id>`` per line, the CTC blank ``<blk> 0`` (as icefall).
* ``tokenizer.model``: the sentencepiece model.

``metadata_props`` hold the model type, vocabulary size and units, sample
rate, fbank settings, frame shifts, subsampling, ``feature_normalization:
inside_graph``, the sentencepiece model's SHA-1, and the source folder,
checkpoint and dev WER. The model masks each utterance's padding from
``x_lens`` (:mod:`kd_brain.model.conformer`), so batching does not change an
utterance's outputs; each export is checked against PyTorch on padded batches.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings

import numpy as np
import torch

from kd_brain.data.tokenizer import BLANK_ID, Tokenizer
from kd_brain.model.conformer import Conv2dSubsampling

logger = logging.getLogger(__name__)
INPUTS, OUTPUTS = ("x", "x_lens"), ("log_probs", "log_probs_len")
DYNAMIC_AXES = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "log_probs": {0: "N", 1: "T_out"},
                "log_probs_len": {0: "N"}}
MODEL_TYPE = "kd_noise_ctc"
FILES = {"model": "model.onnx", "model_int8": "model.int8.onnx", "tokens": "tokens.txt",
         "sentencepiece": "tokenizer.model"}


class FeatureCTC(torch.nn.Module):
    """The exported graph: fbank features [N, T, F] and frame counts [N] -> (log-probs [N, T', V], frames [N]);
    the trained normaliser (eval mode) and the CTC model, as ``AcousticModel`` runs them after its fbank.

    Example
    -------
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper
    >>> enc = ConformerEncoderWrapper(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> net = FeatureCTC(norm, CTCModel(40, 16, enc, 5, 4)).eval()
    >>> log_probs, frames = net(torch.rand(2, 101, 40), torch.tensor([101, 51]))
    >>> log_probs.shape, frames.tolist()
    (torch.Size([2, 26, 5]), [26, 13])
    """

    def __init__(self, normalize, model):
        super().__init__()
        self.normalize, self.model = normalize, model

    def forward(self, x, x_lens):
        # relative lengths are what the normaliser and the model take; round(rel * T) gives x_lens back exactly
        rel = x_lens.to(x.dtype) / x.shape[1]
        return self.model(self.normalize(x, rel), rel), Conv2dSubsampling.output_length(x_lens)


def fbank_settings(fbank):
    """The keyword arguments that rebuild a ``speechbrain.lobes.features.Fbank`` (``Fbank(**settings)``).

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> s = fbank_settings(Fbank(n_mels=80))
    >>> s["n_mels"], s["hop_length"], s["sample_rate"]
    (80, 10.0, 16000)
    >>> wav = torch.randn(1, 16000)
    >>> torch.equal(Fbank(**s)(wav), Fbank(n_mels=80)(wav))
    True
    """
    from speechbrain.lobes.features import Fbank

    if not isinstance(fbank, Fbank):
        raise ValueError(f"compute_features is a {type(fbank).__name__}: the ONNX export computes features with "
                         "speechbrain.lobes.features.Fbank only")
    stft, mel = fbank.compute_STFT, fbank.compute_fbanks
    ms = 1000.0 / stft.sample_rate
    return {"sample_rate": stft.sample_rate, "n_fft": stft.n_fft, "win_length": stft.win_length * ms,
            "hop_length": stft.hop_length * ms, "n_mels": mel.n_mels, "f_min": mel.f_min, "f_max": mel.f_max,
            "filter_shape": mel.filter_shape, "deltas": fbank.deltas, "context": fbank.context,
            "left_frames": fbank.context_window.left_frames, "right_frames": fbank.context_window.right_frames}


def _pad(wavs):
    """1-D waveforms -> (zero-padded batch [N, S], relative lengths [N]), as transcription pads them."""
    longest = max(len(w) for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, :len(w)] = w
    return batch, torch.tensor([len(w) / longest for w in wavs])


class OnnxAcoustic:
    """An exported ``model.onnx`` (or ``model.int8.onnx``) run by onnxruntime, called like ``AcousticModel``.

    ``(wavs [N, S] float 16 kHz, wav_lens relative [N]) -> (log_probs [N, T, V]
    torch tensor, frames [N] int64)``. The fbank is computed in Python, with
    ``compute_features`` when given (the model config's), else rebuilt from
    the file's ``fbank`` metadata.

    Arguments
    ---------
    path : str
        The ONNX file.
    compute_features : speechbrain.lobes.features.Fbank, optional
    num_threads : int, optional
        onnxruntime's intra-op threads (its default: all cores).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper
    >>> enc = ConformerEncoderWrapper(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    >>> export_graph(FeatureCTC(norm, CTCModel(40, 16, enc, 5, 4)), path, feature_dim=40)
    >>> am = OnnxAcoustic(path, Fbank(n_mels=40), num_threads=1)
    >>> log_probs, frames = am(torch.rand(2, 16000), torch.tensor([1.0, 0.5]))
    >>> log_probs.shape, frames.tolist()
    (torch.Size([2, 26, 5]), [26, 13])
    """

    def __init__(self, path, compute_features=None, num_threads=None):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found (kd_brain.decode.onnx_export.export_onnx writes one)")
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = num_threads, 1
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{path}: onnxruntime cannot load it as a model: {e}") from e
        self.path = path
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        names = (tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs()))
        if names != (INPUTS, OUTPUTS):
            raise ValueError(f"{path}: inputs {names[0]} and outputs {names[1]}, not icefall's CTC convention "
                             f"{INPUTS} -> {OUTPUTS}")
        if compute_features is None:
            if "fbank" not in self.meta:
                raise ValueError(f"{path} has no fbank settings in its metadata: pass compute_features")
            from speechbrain.lobes.features import Fbank

            compute_features = Fbank(**json.loads(self.meta["fbank"]))
        fbank_settings(compute_features)  # an Fbank, or an error naming what it is
        self.compute_features = compute_features.eval()
        self.hop = compute_features.compute_STFT.hop_length

    def eval(self):
        """Always in inference mode (for ``Recogniser``, which calls it on any acoustic model)."""
        return self

    def __call__(self, wavs, wav_lens):
        with torch.no_grad():
            feats = self.compute_features(wavs)
        # speechbrain's centred frames: what CTCModel.feature_frames counts for each utterance's samples
        x_lens = torch.round(wav_lens * wavs.shape[1]).long() // self.hop + 1
        log_probs, frames = self.session.run(list(OUTPUTS), {"x": np.ascontiguousarray(feats.numpy(), np.float32),
                                                             "x_lens": x_lens.numpy()})
        return torch.from_numpy(log_probs), torch.from_numpy(frames)


def export_graph(net, path, feature_dim, opset=17, int8_path=None):
    """Writes a :class:`FeatureCTC` to ``path`` as ONNX (icefall's names, dynamic N and T), and with
    ``int8_path`` a copy with int8 MatMul weights (onnxruntime's dynamic quantization, QInt8).

    The TorchScript-based exporter (``dynamo=False``): it takes
    ``dynamic_axes`` as they are, and nothing in the forward pass branches on
    data, so one trace (two utterances of different lengths, with padding)
    serves every batch. MatMul only is quantized, as icefall does: int8
    convolutions (ConvInteger) run slower than float ones on CPU.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.processing.features import InputNormalization
    >>> from kd_brain.model.conformer import CTCModel, ConformerEncoderWrapper
    >>> enc = ConformerEncoderWrapper(num_layers=1, d_model=64, d_ffn=128, nhead=2, kernel_size=3)
    >>> norm = InputNormalization(); _ = norm(torch.rand(1, 50, 40), torch.ones(1))  # statistics
    >>> d = tempfile.mkdtemp(); fp32, int8 = os.path.join(d, "model.onnx"), os.path.join(d, "model.int8.onnx")
    >>> export_graph(FeatureCTC(norm, CTCModel(40, 64, enc, 50, 4)), fp32, feature_dim=40, int8_path=int8)
    >>> import onnx; [i.name for i in onnx.load(fp32).graph.input], os.path.getsize(int8) < os.path.getsize(fp32)
    (['x', 'x_lens'], True)
    """
    if opset < 13:
        raise ValueError(f"opset={opset}: the export needs opset >= 13")
    net = net.eval().requires_grad_(False)
    x = torch.randn(2, 101, feature_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter is chosen on purpose (above), so its deprecation notices say nothing here;
        # constant folding skips strided slices, harmlessly
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(net, (x, torch.tensor([101, 61])), path, dynamo=False, opset_version=opset,
                          input_names=list(INPUTS), output_names=list(OUTPUTS), dynamic_axes=DYNAMIC_AXES)
    if int8_path:
        _quantize_int8(path, int8_path)


def _quantize_int8(src, dst):
    """``dst``: ``src`` with int8 MatMul weights (see :func:`export_graph`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.Filter()  # the quantizer's notes (per-tensor INFO, pre-processing advice) go to the root logger
    quiet.filter = lambda r: r.levelno > logging.WARNING or (r.levelno == logging.WARNING
                                                               and "pre-processing" not in r.getMessage())
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)
    # the inferred shapes it stores (value_info) are an optional cache onnxruntime rebuilds on loading; on a small
    # model they outweigh what int8 weights save
    model = onnx.load(dst)
    del model.graph.value_info[:]
    onnx.save(model, dst)


def _set_metadata(path, meta):
    """Adds ``meta`` (values as strings; others JSON) to an ONNX file's ``metadata_props``, keeping what is there."""
    import onnx

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)


def write_tokens(units, path):
    """icefall's ``tokens.txt``: ``<unit> <id>`` per line, id 0 (the CTC blank) written ``<blk>``.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tokens.txt")
    >>> write_tokens(["<blank>", "<unk>", "\\u2581A"], path)
    >>> open(path, encoding="utf-8").read().split("\\n")[:2]
    ['<blk> 0', '<unk> 1']
    """
    lines = []
    for i, unit in enumerate(units):
        unit = "<blk>" if i == BLANK_ID else unit
        if not unit or any(c.isspace() for c in unit):
            raise ValueError(f"unit {i} ({unit!r}) is empty or holds white space: {path} cannot list it")
        lines.append(f"{unit} {i}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def _sha1(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _metadata(net, fbank, tokenizer, extra=None):
    """The ``metadata_props`` of an exported :class:`FeatureCTC` (all values strings)."""
    settings = fbank_settings(fbank)
    info = net.model.frame_info()
    with torch.no_grad():
        feature_dim = fbank.eval()(torch.zeros(1, settings["sample_rate"] // 10)).shape[-1]
    meta = {"model_type": MODEL_TYPE, "version": "1", "model_author": "kd-noise",
            "comment": "non-streaming CTC; x: speechbrain Fbank features (not normalised), x_lens: their frames",
            "encoder": type(net.model.encoder).__name__, "vocab_size": info["vocab_size"], "blank_id": BLANK_ID,
            "units": json.dumps(tokenizer.vocab_list(), ensure_ascii=False), "sample_rate": settings["sample_rate"],
            "feature": "fbank", "feature_dim": feature_dim, "fbank": json.dumps(settings),
            "feature_frame_shift_ms": settings["hop_length"], "frame_shift_ms": info["frame_shift_ms"],
            "subsampling_factor": info["subsampling"], "feature_normalization": "inside_graph",
            "log_probs_len": "((x_lens + 1) // 2 + 1) // 2", "sentencepiece_model": FILES["sentencepiece"],
            "sentencepiece_sha1": _sha1(tokenizer.model_path), **(extra or {})}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _check_batches(data_folder=None, n_real=4):
    """Padded batches for the export check: seeded noise of three lengths, and the first ``n_real``
    utterances of ``data_folder``'s ``dev.csv`` when it is there; ``[(name, wavs, rel_lens)]``."""
    gen = torch.Generator().manual_seed(0)
    batches = [("noise", *_pad([0.1 * torch.randn(n, generator=gen) for n in (4000, 16000, 37000)]))]
    manifest = os.path.join(data_folder, "dev.csv") if data_folder else None
    if manifest and os.path.isfile(manifest):
        from kd_brain.data.dataio import make_dataset

        dataset = make_dataset(manifest)
        wavs = [dataset[i]["sig"] for i in range(min(n_real, len(dataset)))]
        batches.append((f"{manifest} ({len(wavs)} utterances)", *_pad(wavs)))
    return batches


def _max_abs_difference(net, fbank, onnx_acoustic, batches):
    """Largest |log-prob difference| over valid frames, PyTorch ``net`` vs :class:`OnnxAcoustic`; frames must agree."""
    worst = 0.0
    for name, wavs, rel in batches:
        samples = torch.round(rel * wavs.shape[1]).long()
        with torch.no_grad():  # AcousticModel's computation: fbank, then each utterance's own frames
            a, fa = net(fbank(wavs), net.model.feature_frames(samples))
        b, fb = onnx_acoustic(wavs, rel)
        if a.shape != b.shape or not torch.equal(fa, fb):
            raise RuntimeError(f"{onnx_acoustic.path} disagrees with the PyTorch model on {name}: shapes "
                               f"{tuple(a.shape)} / {fa.tolist()} vs {tuple(b.shape)} / {fb.tolist()}")
        worst = max(worst, *((a[i, :f] - b[i, :f]).abs().max().item() for i, f in enumerate(fa.tolist())))
    return worst


def _load_source(model_dir):
    """``(FeatureCTC, fbank, tokenizer, origin config, provenance)`` of a model folder's best checkpoint.

    As :func:`kd_brain.decode.transcribe.load_model` loads it; not through it,
    because transcription imports this module for ONNX files (no import circle).
    """
    from kd_brain.pipeline.modeldir import load_label_source, load_normalization

    cfg, origin, best, tokenizer = load_label_source(model_dir, what=f"model folder {model_dir}")
    cfg["model"].load_state_dict(torch.load(best.paramfiles["model"], map_location="cpu", weights_only=True))
    load_normalization(cfg["normalize"], best)
    net = FeatureCTC(cfg["normalize"], cfg["model"]).eval()
    provenance = {"model_dir": os.path.abspath(model_dir), "dev_wer": best.meta.get("WER"),
                  "checkpoint": os.path.relpath(os.path.realpath(best.path), os.path.realpath(model_dir))}
    return net, cfg["compute_features"].eval(), tokenizer, origin, provenance


def export_onnx(model_dir, out_dir, opset=17, tolerance=1e-4):
    """Exports a trained model folder's best checkpoint to ``out_dir`` (see the module doc); returns paths and sizes.

    The fp32 model is loaded back with onnxruntime and compared with the
    PyTorch model on padded batches (seeded noise of three lengths, and the
    first utterances of the model's dev manifest when it is on this machine),
    its fbank rebuilt from the file's metadata; log-probs more than
    ``tolerance`` apart on any valid frame are a RuntimeError, and no file is
    left in ``out_dir``. The int8 copy's difference is reported, not bounded.

    Example
    -------
    >>> import tempfile
    >>> export_onnx(tempfile.mkdtemp(), tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: .../hyperparams.yaml not found: ... is not a trained model folder (train it first)
    """
    net, fbank, tokenizer, origin, provenance = _load_source(model_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir {out_dir} is a file: the ONNX export writes a folder "
                                 f"({', '.join(FILES.values())})")
    os.makedirs(out_dir, exist_ok=True)
    meta = _metadata(net, fbank, tokenizer, provenance)
    # built beside the targets and moved in once checked: a failed export leaves no file to trust
    tmp = tempfile.mkdtemp(prefix=".onnx-export-", dir=out_dir)
    try:
        paths = {key: os.path.join(tmp, name) for key, name in FILES.items()}
        export_graph(net, paths["model"], int(meta["feature_dim"]), opset, int8_path=paths["model_int8"])
        _set_metadata(paths["model"], meta)
        batches = _check_batches(origin.get("data_folder"))
        diff = _max_abs_difference(net, fbank, OnnxAcoustic(paths["model"]), batches)
        if diff > tolerance:
            raise RuntimeError(f"{model_dir}: onnxruntime's log-probs differ from PyTorch's by {diff:.2e} > "
                               f"{tolerance} (max |difference| over valid frames)")
        _set_metadata(paths["model_int8"], {**meta, "quantization": "dynamic, int8 MatMul weights (QInt8)"})
        diff8 = _max_abs_difference(net, fbank, OnnxAcoustic(paths["model_int8"]), batches)
        write_tokens(tokenizer.vocab_list(), paths["tokens"])
        shutil.copyfile(tokenizer.model_path, paths["sentencepiece"])
        for key, name in FILES.items():
            os.replace(paths[key], os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {key: os.path.join(out_dir, name) for key, name in FILES.items()}
    logger.info("Exported %s (%s) to %s: max |log-prob difference| %.2e (int8 %.2e)", model_dir,
                provenance["checkpoint"], out_dir, diff, diff8)
    return {**out, **{f"{key}_bytes": os.path.getsize(path) for key, path in out.items()}, "opset": opset,
            "max_abs_diff": diff, "int8_max_abs_diff": diff8, "checked_on": [b[0] for b in batches], **provenance}


def load_onnx_model(path, with_lm=False):
    """``(OnnxAcoustic, tokenizer, origin config or None)`` of an exported ``model.onnx``, like ``load_model``.

    The sentencepiece model must lie beside the file with the hash its
    metadata names. ``with_lm``: also the origin config of the model folder
    it was exported from (for the n-gram LM decoder), which must be on this
    machine; otherwise origin is None.

    Example
    -------
    >>> load_onnx_model("/no/such/model.onnx")
    Traceback (most recent call last):
    FileNotFoundError: /no/such/model.onnx not found (kd_brain.decode.onnx_export.export_onnx writes one)
    """
    acoustic = OnnxAcoustic(path)
    sp_name = acoustic.meta.get("sentencepiece_model", FILES["sentencepiece"])
    sp = os.path.join(os.path.dirname(os.path.abspath(path)), sp_name)
    if not os.path.isfile(sp):
        raise FileNotFoundError(f"{sp} not found: the sentencepiece model exported with {path} must lie beside it")
    if _sha1(sp) != acoustic.meta.get("sentencepiece_sha1"):
        raise ValueError(f"{sp} is not the sentencepiece model {path} was exported with (SHA-1 differs from its "
                         "metadata's sentencepiece_sha1)")
    tokenizer = Tokenizer(sp)
    origin = None
    if with_lm:
        from kd_brain.pipeline.modeldir import origin_config

        source = acoustic.meta.get("model_dir", "")
        if not os.path.isfile(os.path.join(source, "hyperparams.yaml")):
            raise ValueError(f"decoder=lm needs the n-gram LM of the model folder {path} was exported from "
                             f"({source or 'not recorded'}), which is not here: decode with greedy or beam")
        origin = origin_config(source)
    return acoustic, tokenizer, origin
