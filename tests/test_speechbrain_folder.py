"""export.py --format speechbrain: a folder that SpeechBrain's EncoderASR loads, transcribing as kd_brain does."""

import json
import os

import pytest
import torch

from kd_brain.data.prepare import read_csv
from tests.conftest import REPO, load_recipe


@pytest.fixture(scope="module")
def exported(tiny_teacher, tmp_path_factory):
    """The tiny teacher exported as a SpeechBrain folder: ``(folder, export info)``."""
    out = tmp_path_factory.mktemp("speechbrain_export") / "teacher_sb"
    return out, load_recipe("export").main([str(tiny_teacher / "teacher"), str(out), "--format=speechbrain"])


@pytest.fixture(scope="module")
def test_audio(tiny_teacher):
    """``[(audio path, 16 kHz waveform)]`` of the tiny test manifest's utterances."""
    from kd_brain.decode.transcribe import load_audio
    from kd_brain.pipeline.modeldir import origin_config

    rows = read_csv(os.path.join(origin_config(str(tiny_teacher / "teacher"))["data_folder"], "test_clean.csv"))
    return [(r["wav"], load_audio(r["wav"])) for r in rows]


def padded(wavs):
    """A zero-padded batch and relative lengths, as SpeechBrain pads."""
    from speechbrain.utils.data_utils import batch_pad_right

    return batch_pad_right(list(wavs))


def speaking(acoustic, models, wav):
    """Lowers, in every CTC model of ``models``, the logit of the unit that ``acoustic`` says most on ``wav`` to
    just under the next one: the 1-epoch teacher says the word boundary nearly everywhere (empty transcripts),
    so its transcripts would agree whatever the decoding did."""
    with torch.no_grad():
        mean = acoustic(wav[None], torch.ones(1))[0][0].mean(0)
        top = mean.topk(2)
        for model in models:
            model.head.bias[top.indices[0]] -= (top.values[0] - top.values[1]).item() + 0.5


@pytest.mark.parametrize("hparams_file,decoder", [("hyperparams.yaml", "greedy"), ("hyperparams_beam.yaml", "beam")])
def test_encoder_asr_transcribes_as_the_recogniser(exported, tiny_teacher, test_audio, tmp_path, hparams_file, decoder):
    """transcribe_file and transcribe_batch (one padded batch of every test utterance) give the transcripts of
    kd_brain's Recogniser (each utterance alone), greedy and with the beam search of the same width."""
    from speechbrain.inference.ASR import EncoderASR

    from kd_brain.decode.transcribe import Recogniser, load_model

    out, info = exported
    asr = EncoderASR.from_hparams(source=str(out), hparams_file=hparams_file, savedir=str(tmp_path / "sb"))
    acoustic, tokenizer, _ = load_model(str(tiny_teacher / "teacher"))
    paths, wavs = zip(*test_audio)
    speaking(acoustic, [acoustic.model, asr.mods.encoder.model], wavs[0])
    rec = Recogniser(acoustic, tokenizer, decoder, beam_size=info["beam_size"])
    expected = [rec.transcribe_batch([w])[0] for w in wavs]
    assert sum(map(bool, expected)) > len(expected) / 2, expected
    assert [asr.transcribe_file(p, savedir=str(tmp_path / "audio")) for p in paths] == expected
    words, _ = asr.transcribe_batch(*padded(wavs))
    assert words == expected


def test_log_probs_are_each_utterances_own(exported, tiny_teacher, test_audio, tmp_path):
    """encode_batch's log-probs of an utterance in a padded batch are its log-probs alone (kd_brain's model)."""
    from speechbrain.inference.ASR import EncoderASR

    from kd_brain.decode.transcribe import load_model

    asr = EncoderASR.from_hparams(source=str(exported[0]), savedir=str(tmp_path / "sb"))
    acoustic, _, _ = load_model(str(tiny_teacher / "teacher"))
    wavs = [w for _, w in test_audio]
    with torch.no_grad():
        batched = asr.encode_batch(*padded(wavs))
        for i, w in enumerate(wavs):
            alone, frames = acoustic(w[None], torch.ones(1))
            assert (batched[i, :int(frames)] - alone[0]).abs().max().item() < 1e-4
            assert batched[i, int(frames):].argmax(-1).eq(0).all()  # after its frames: blanks


def test_files_and_model_card(exported, tiny_teacher):
    """The folder holds what the yaml names; the card gives every WER of the evaluation and the training command."""
    out, info = exported
    assert info["max_abs_diff"] < 1e-5 and info["beam_size"] == 2  # the tiny config's beam (evaluation's)
    assert not os.path.exists(str(out) + ".part")
    assert {"hyperparams.yaml", "hyperparams_beam.yaml", "model.ckpt", "normalizer.ckpt", "tokenizer.ckpt",
            "train_hyperparams.yaml", "README.md"} <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    scores = json.loads((tiny_teacher / "scores.json").read_text())["teacher"]
    for condition, s in scores.items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {condition} |"))
        assert all(f"{s[d]:.2f}" in row for d in ("greedy", "beam", "lm")), row
    assert f"python recipes/KD-Noise/train.py {REPO / 'hparams' / 'teacher_bed.yaml'}" in card
    assert 'EncoderASR.from_hparams(source="' in card and "transcribe_file" in card


def test_command_from_the_stage_record(tmp_path):
    """A model trained by run.py: its stage record's command."""
    from kd_brain.decode.speechbrain_folder import training_command

    (tmp_path / "stages").mkdir()
    (tmp_path / "student").mkdir()
    command = "python recipes/KD-Noise/train.py hparams/student.yaml --number_of_epochs=4"
    (tmp_path / "stages" / "student.done").write_text(json.dumps({"command": command, "seconds": 1}))
    assert training_command(str(tmp_path / "student") + "/") == (command, str(tmp_path / "stages" / "student.done"))
    (tmp_path / "stages" / "student.done").write_text("{cut")
    with pytest.raises(ValueError, match="student.done is not a stage record"):
        training_command(str(tmp_path / "student"))


def test_decoders_read_every_frame():
    """Relative lengths of many batches: round and floor of rel * T cover each utterance's frames."""
    from kd_brain.decode.speechbrain_folder import decodable
    from kd_brain.model.conformer import CTCModel, LSTMEncoder

    model = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5, frontend_channels=4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        samples = torch.randint(1, 200000, (4,), generator=gen)
        rel = samples.float() / samples.max()
        frames = model.output_frames(samples)
        out = decodable(torch.zeros(4, int(frames.max()), 5), frames, rel)
        assert (torch.floor(rel * out.shape[1]) >= frames).all()
        assert out.shape[1] <= frames.max() + 2 * samples.max() / samples.min() + 1


def test_bad_targets_are_named(tiny_teacher, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="mine exists and is not a SpeechBrain export"):
        load_recipe("export").main([str(tiny_teacher / "teacher"), str(tmp_path / "mine"), "--format=speechbrain"])
    with pytest.raises(SystemExit, match="is not a trained model folder"):
        load_recipe("export").main([str(tmp_path), str(tmp_path / "out"), "--format=speechbrain"])
    with pytest.raises(SystemExit):
        load_recipe("export").main([str(tiny_teacher / "teacher"), str(tmp_path / "m.pt"), "--beam_size=4"])
