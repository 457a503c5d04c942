"""transcribe.py and export.py on trained tiny models: files, a 44.1 kHz stereo file, manifests, decoders."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from kd_brain.data.prepare import read_csv, write_csv
from tests.conftest import load_recipe, student_argv


@pytest.fixture(scope="module")
def student_dir(kd_exp):
    """A 1-epoch frame-KD student of the tiny teacher (a model folder whose units come via teacher_dir)."""
    load_recipe("train").main(student_argv(kd_exp, "--model_name=st_transcribe", "--number_of_epochs=1"))
    return kd_exp / "st_transcribe"


def data_folder(exp):
    from kd_brain.pipeline.modeldir import origin_config

    return origin_config(str(exp / "teacher"))["data_folder"]


def test_manifest_with_three_decoders_scores_as_evaluation(tiny_teacher, tmp_path, capsys):
    """Each decoder's WER on test_clean equals the training script's evaluation of the same checkpoint."""
    scores = json.loads((tiny_teacher / "scores.json").read_text())["teacher"]["clean"]
    manifest = os.path.join(data_folder(tiny_teacher), "test_clean.csv")
    n = len(read_csv(manifest))
    for decoder in ("greedy", "beam", "lm"):
        out = tmp_path / f"{decoder}.tsv"
        results = load_recipe("transcribe").main([str(tiny_teacher / "teacher"), manifest, f"--decoder={decoder}",
                                                  f"--out={out}", "--noprogressbar", "--beam_size=2"])
        lines = out.read_text().splitlines()
        assert [l.split("\t")[0] for l in lines] == [r["ID"] for r in read_csv(manifest)]  # input order
        assert len(results) == n
        err = capsys.readouterr().err
        assert f"WER {scores[decoder]:.2f}% on {n} utterances" in err, (decoder, err[-300:])
    lm_words = {w for l in (tmp_path / "lm.tsv").read_text().splitlines() for w in l.split("\t")[1].split()}
    word_lms = [os.path.join(data_folder(tiny_teacher), d) for d in os.listdir(data_folder(tiny_teacher))
                if d.startswith("lm_") and not d.endswith("_piece")]  # the bed config's word 3-gram
    lexicon = {l.split("\t")[0] for d in word_lms for l in open(os.path.join(d, "lexicon.txt"))}
    assert lm_words <= lexicon  # the lexicon decoder returns words of the labelled transcripts only


def test_manifest_paths_relative_to_the_working_directory(tiny_teacher, tmp_path, monkeypatch):
    """A manifest as the prepare stage writes it (paths relative to the working directory, the repository root,
    as training reads them) transcribes; a path beside the manifest and ``$data_root`` still resolve there."""
    from kd_brain.decode.transcribe import recogniser

    rows = read_csv(os.path.join(data_folder(tiny_teacher), "test_clean.csv"))[:3]
    rec = recogniser(str(tiny_teacher / "teacher"), "greedy")
    expected = list(rec.transcribe([(r["ID"], r["wav"], r["wrd"]) for r in rows], progress=False))
    for sub in ("corpus", "data"):
        (tmp_path / sub).mkdir()
    for r, sub in zip(rows, ["corpus", "corpus", "data"]):
        shutil.copy(os.path.abspath(r["wav"]), tmp_path / sub / f"{r['ID']}.wav")
    wavs = [f"corpus/{rows[0]['ID']}.wav", f"$data_root/../corpus/{rows[1]['ID']}.wav", f"{rows[2]['ID']}.wav"]
    manifest = [{"ID": r["ID"], "wav": w, "wrd": r["wrd"]} for r, w in zip(rows, wavs)]
    write_csv(str(tmp_path / "data" / "m.csv"), manifest, ["ID", "wav", "wrd"])
    monkeypatch.chdir(tmp_path)
    assert not os.path.exists(os.path.join("data", wavs[0]))  # found from the working directory only
    results = load_recipe("transcribe").main([str(tiny_teacher / "teacher"), "data/m.csv", "--decoder=greedy",
                                              "--noprogressbar"])
    assert results == expected


def test_log_probs_equal_the_training_forward_pass(tiny_teacher):
    """AcousticModel (what transcribe and export run) computes what CTCBrain evaluated."""
    from speechbrain.dataio.batch import PaddedBatch

    from kd_brain.brains.ctc import CTCBrain
    from kd_brain.data.dataio import make_dataset
    from kd_brain.pipeline.modeldir import load_label_source
    from kd_brain.decode.transcribe import load_model

    acoustic, _, _ = load_model(str(tiny_teacher / "teacher"))
    cfg, _, best, _ = load_label_source(str(tiny_teacher / "teacher"))
    brain = CTCBrain(modules=cfg["modules"], hparams=cfg, checkpointer=cfg["checkpointer"])
    brain.checkpointer.load_checkpoint(best)
    brain.modules.eval()
    ds = make_dataset(os.path.join(data_folder(tiny_teacher), "dev.csv"))
    batch = PaddedBatch([ds[i] for i in range(4)])
    with torch.no_grad():
        ref, ref_lens = brain.compute_forward(batch, stage=__import__("speechbrain").Stage.TEST)
        got, frames = acoustic(batch.sig.data, batch.sig.lengths)
    assert torch.equal(torch.round(ref_lens * ref.shape[1]).long(), frames)
    assert (ref - got).abs().max().item() < 1e-5


def test_wav_and_44k_stereo_file(student_dir, tmp_path, capsys, caplog):
    """Plain audio files (a 16 kHz WAV, the same speech as 44.1 kHz stereo FLAC) through a student folder."""
    import torchaudio

    from kd_brain.decode.transcribe import load_audio

    row = read_csv(os.path.join(data_folder(student_dir.parent), "test_clean.csv"))[0]
    wav, sr = sf.read(row["wav"], dtype="float32")
    assert sr == 16000
    mono = tmp_path / "mono16k.wav"
    sf.write(mono, wav, 16000)
    up = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 44100).numpy()
    stereo = tmp_path / "stereo44k.flac"
    sf.write(stereo, np.stack([up, up], axis=1), 44100)
    with caplog.at_level("INFO"):
        back = load_audio(str(stereo))
    assert "2 channels downmixed, resampled 44100 -> 16000 Hz" in caplog.text
    n = min(len(back), len(wav))
    assert abs(len(back) - len(wav)) <= 1
    err = np.mean((back.numpy()[:n] - wav[:n]) ** 2) / np.mean(wav[:n] ** 2)
    assert err < 1e-3  # the round trip keeps the speech (FLAC's 16 bits, two resamplers)
    results = load_recipe("transcribe").main([str(student_dir), str(mono), str(stereo), "--decoder=greedy",
                                              "--noprogressbar"])
    out = capsys.readouterr().out.splitlines()
    assert [l.split("\t")[0] for l in out] == ["mono16k", "stereo44k"]
    assert [r[2] for r in results] == [None, None]  # no transcripts: nothing scored
    assert "WER" not in capsys.readouterr().err


def test_bad_inputs_are_named(tiny_teacher, tmp_path):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(SystemExit, match="not_audio.wav"):
        load_recipe("transcribe").main([str(tiny_teacher / "teacher"), str(bad), "--noprogressbar"])
    manifest = tmp_path / "m.csv"
    write_csv(str(manifest), [{"ID": "u1", "wav": str(bad)}], ["ID", "wav"])
    with pytest.raises(SystemExit, match="utterance u1: cannot read audio file .*not_audio.wav"):
        load_recipe("transcribe").main([str(tiny_teacher / "teacher"), str(manifest), "--noprogressbar"])
    with pytest.raises(SystemExit, match="is not a trained model folder"):
        load_recipe("transcribe").main([str(tmp_path), str(bad), "--noprogressbar"])


def test_torchscript_export_matches_pytorch(student_dir, tmp_path):
    """The exported file gives the PyTorch model's log-probs within 1e-4 on real utterances, batched."""
    from speechbrain.dataio.batch import PaddedBatch

    from kd_brain.data.dataio import make_dataset
    from kd_brain.decode.export import load_exported
    from kd_brain.decode.transcribe import load_model

    out = tmp_path / "student.pt"
    info = load_recipe("export").main([str(student_dir), str(out)])
    assert info["max_abs_diff"] < 1e-4 and out.is_file() and not (tmp_path / "student.pt.part").exists()
    module, units, meta = load_exported(str(out))
    acoustic, tokenizer, _ = load_model(str(student_dir))
    assert units == tokenizer.vocab_list() and meta["frame_shift_ms"] == 40.0
    ds = make_dataset(os.path.join(data_folder(student_dir.parent), "test_clean.csv"))
    batch = PaddedBatch([ds[i] for i in range(5)])
    with torch.no_grad():
        (a, fa), (b, fb) = acoustic(batch.sig.data, batch.sig.lengths), module(batch.sig.data, batch.sig.lengths)
    assert torch.equal(fa, fb)
    assert max((a[i, :f] - b[i, :f]).abs().max().item() for i, f in enumerate(fa.tolist())) < 1e-4
