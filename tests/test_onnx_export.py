"""ONNX export (kd_brain.decode.onnx_export) of the tiny trained teacher: icefall's names and files, metadata,
agreement with the PyTorch model on padded batches of real utterances, transcripts, errors."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from tests.conftest import need_module

onnx = need_module("onnx")
need_module("onnxruntime")


def manifest_of(exp):
    from kd_brain.pipeline.modeldir import origin_config

    return os.path.join(origin_config(str(exp / "teacher"))["data_folder"], "test_clean.csv")


@pytest.fixture(scope="module")
def exported(tiny_teacher, tmp_path_factory):
    """``(export_onnx's answer, its folder)`` for the tiny teacher."""
    from kd_brain.decode.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return export_onnx(str(tiny_teacher / "teacher"), str(out)), out


@pytest.fixture(scope="module")
def pytorch_model(tiny_teacher):
    from kd_brain.decode.transcribe import load_model

    return load_model(str(tiny_teacher / "teacher"))[:2]


def shape_of(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_files_names_shapes_opset(exported):
    info, out = exported
    assert sorted(os.listdir(out)) == ["model.int8.onnx", "model.onnx", "tokenizer.model", "tokens.txt"]  # no temp
    model = onnx.load(info["model"])
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17] and info["opset"] == 17
    T = onnx.TensorProto
    assert [(v.name, v.type.tensor_type.elem_type, shape_of(v)) for v in model.graph.input] == [
        ("x", T.FLOAT, ["N", "T", 40]), ("x_lens", T.INT64, ["N"])]  # the tiny teacher's 40 mels
    outputs = [(v.name, v.type.tensor_type.elem_type, shape_of(v)) for v in model.graph.output]
    assert outputs[0][:2] == ("log_probs", T.FLOAT) and outputs[0][2][:2] == ["N", "T_out"]
    assert outputs[1] == ("log_probs_len", T.INT64, ["N"])
    assert info["model_bytes"] == os.path.getsize(info["model"])
    assert 0 < info["model_int8_bytes"] < info["model_bytes"]
    int8 = onnx.load(info["model_int8"])
    assert any(n.op_type == "MatMulInteger" for n in int8.graph.node)


def test_metadata_and_tokens(exported, pytorch_model, tiny_teacher):
    info, out = exported
    _, tokenizer = pytorch_model
    meta = {p.key: p.value for p in onnx.load(info["model"]).metadata_props}
    units = tokenizer.vocab_list()
    assert meta["model_type"] == "kd_noise_ctc" and meta["encoder"] == "ConformerEncoderWrapper"
    assert int(meta["vocab_size"]) == len(units) == 30 and json.loads(meta["units"]) == units
    assert (meta["sample_rate"], meta["blank_id"], meta["feature_dim"]) == ("16000", "0", "40")
    assert float(meta["frame_shift_ms"]) == 40.0 and float(meta["feature_frame_shift_ms"]) == 10.0
    assert meta["subsampling_factor"] == "4" and meta["feature_normalization"] == "inside_graph"
    assert json.loads(meta["fbank"])["n_mels"] == 40
    with open(tokenizer.model_path, "rb") as f:
        spm = f.read()
    assert meta["sentencepiece_sha1"] == hashlib.sha1(spm).hexdigest()
    assert (out / "tokenizer.model").read_bytes() == spm
    assert meta["model_dir"] == str(tiny_teacher / "teacher") and meta["checkpoint"].startswith("save/CKPT")
    lines = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["<blk> 0"] + [f"{u} {i}" for i, u in enumerate(units)][1:]
    meta8 = {p.key: p.value for p in onnx.load(info["model_int8"]).metadata_props}
    assert "int8" in meta8["quantization"] and meta8["units"] == meta["units"]


def test_log_probs_match_pytorch_on_a_padded_batch(exported, pytorch_model, tiny_teacher):
    """fp32 ONNX within 1e-4 of AcousticModel over valid frames, in a batch of 6 real utterances of unequal
    lengths, and each utterance's ONNX output alone equals its output in the batch."""
    from speechbrain.dataio.batch import PaddedBatch

    from kd_brain.data.dataio import make_dataset
    from kd_brain.decode.onnx_export import OnnxAcoustic

    info, _ = exported
    assert info["max_abs_diff"] < 1e-4 and any("dev.csv" in name for name in info["checked_on"])
    acoustic, _ = pytorch_model
    ds = make_dataset(manifest_of(tiny_teacher))
    batch = PaddedBatch([ds[i] for i in range(6)])
    assert len(set(batch.sig.lengths.tolist())) > 1
    am = OnnxAcoustic(info["model"], num_threads=1)
    with torch.no_grad():
        a, fa = acoustic(batch.sig.data, batch.sig.lengths)
    b, fb = am(batch.sig.data, batch.sig.lengths)
    assert b.dtype == torch.float32 and b.shape == a.shape and torch.equal(fa, fb)
    assert max((a[i, :f] - b[i, :f]).abs().max().item() for i, f in enumerate(fa.tolist())) < 1e-4
    short = int(batch.sig.lengths.argmin())
    n = round(batch.sig.lengths[short].item() * batch.sig.data.shape[1])
    alone, frames = am(batch.sig.data[short:short + 1, :n], torch.ones(1))
    assert frames.item() == fb[short].item()
    assert (alone[0] - b[short, :frames.item()]).abs().max().item() < 1e-4


class PriorCorrected:
    """An acoustic model's log-probs less a log-prior over units (posteriors over priors), for Recogniser.

    The 1-epoch tiny teacher's greedy path is the word boundary almost everywhere (empty transcripts, equal
    whatever the log-probs); over its prior, each frame's best unit varies, and equal transcripts show that
    the two models' argmaxes agree frame by frame.
    """

    def __init__(self, acoustic, log_prior):
        self.acoustic, self.log_prior = acoustic, log_prior

    def eval(self):
        return self

    def __call__(self, wavs, wav_lens):
        with torch.no_grad():
            log_probs, frames = self.acoustic(wavs, wav_lens)
        return log_probs - self.log_prior, frames


def test_greedy_transcripts_equal_pytorch(exported, pytorch_model, tiny_teacher):
    from kd_brain.decode.onnx_export import OnnxAcoustic, _pad, load_onnx_model
    from kd_brain.decode.transcribe import Recogniser, load_audio, read_inputs

    info, _ = exported
    acoustic, tokenizer = pytorch_model
    items = read_inputs([manifest_of(tiny_teacher)])
    onnx_am, onnx_tok, origin = load_onnx_model(info["model"])
    assert origin is None and onnx_tok.vocab_list() == tokenizer.vocab_list()
    with torch.no_grad():
        log_probs, frames = acoustic(*_pad([load_audio(path) for _, path, _ in items]))
    valid = torch.arange(log_probs.shape[1])[None, :] < frames[:, None]
    log_prior = log_probs[valid].exp().mean(0).log()
    hyps = {}
    for name, am, tok in (("pytorch", acoustic, tokenizer), ("onnx", onnx_am, onnx_tok)):
        plain = Recogniser(am, tok, "greedy").transcribe(items, 4, False)
        corrected = Recogniser(PriorCorrected(am, log_prior), tok, "greedy").transcribe(items, 4, False)
        hyps[name] = (list(plain), list(corrected))
    assert hyps["onnx"] == hyps["pytorch"]
    assert len({c for _, hyp, _ in hyps["onnx"][1] for c in hyp.replace(" ", "")}) >= 5  # letters, not blanks
    int8 = list(Recogniser(OnnxAcoustic(info["model_int8"]), tokenizer, "greedy").transcribe(items, 4, False))
    assert [u for u, _, _ in int8] == [u for u, _, _ in hyps["pytorch"][0]]  # it runs; its words may differ


def test_bad_inputs_are_named(exported, tiny_teacher, tmp_path):
    from kd_brain.decode.onnx_export import OnnxAcoustic, _set_metadata, export_onnx, load_onnx_model

    info, out = exported
    teacher = str(tiny_teacher / "teacher")
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file is a file"):
        export_onnx(teacher, str(afile))
    with pytest.raises(ValueError, match="opset=11"):
        export_onnx(teacher, str(tmp_path / "old"), opset=11)
    with pytest.raises(RuntimeError, match=r"differ from PyTorch's by .* > -1"):
        export_onnx(teacher, str(tmp_path / "strict"), tolerance=-1.0)  # a bound no export meets
    assert os.listdir(tmp_path / "strict") == []  # nothing left to trust
    with pytest.raises(ValueError, match="a_file: onnxruntime cannot load it"):
        OnnxAcoustic(str(afile))
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(info["model"], copy / "model.onnx")
    with pytest.raises(FileNotFoundError, match="tokenizer.model not found"):
        load_onnx_model(str(copy / "model.onnx"))
    (copy / "tokenizer.model").write_bytes(b"another model")
    with pytest.raises(ValueError, match="tokenizer.model is not the sentencepiece model"):
        load_onnx_model(str(copy / "model.onnx"))
    (copy / "tokenizer.model").write_bytes((out / "tokenizer.model").read_bytes())
    assert load_onnx_model(str(copy / "model.onnx"), with_lm=True)[2]["data_folder"]
    _set_metadata(str(copy / "model.onnx"), {"model_dir": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match="decoder=lm needs the n-gram LM .*gone"):
        load_onnx_model(str(copy / "model.onnx"), with_lm=True)
