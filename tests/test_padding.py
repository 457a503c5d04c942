"""An utterance's outputs do not depend on what else is in its batch.

The model masks the padded frames before every operation that mixes frames
(the front end's convolutions, attention keys, the Conformer's depthwise
convolutions), so an utterance alone and the same utterance padded inside a
batch of longer ones get the same log-probs up to float rounding, and a
trained model's WER is the same at any batch size. Without the masks the
last frames of a short utterance read the padding's normalised log-zero
features: on the random Conformer below, the log-probs of its four shorter
utterances moved by 0.6 to 1.0 (measured before the masks existed).
"""

import pytest
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from kd_brain.decode.transcribe import AcousticModel, Recogniser, load_model, read_inputs
from kd_brain.model.conformer import ConformerEncoderWrapper, CTCModel, LSTMEncoder

TOL = 1e-4  # float rounding of batched matrix products; a leak of the padding moves log-probs by ~1e-1


def acoustic(encoder, seed=0):
    torch.manual_seed(seed)
    model = CTCModel(n_mels=40, d_model=32, encoder=encoder, vocab_size=12, frontend_channels=8)
    norm = InputNormalization()
    norm(torch.randn(4, 300, 40) * 3 + 5, torch.ones(4))  # statistics far from the padding's features
    return AcousticModel(Fbank(n_mels=40), norm, model).eval()


def alone_and_batched(am, lengths, seed=1):
    """Max |log-prob difference| of each utterance alone vs in one padded batch of all of ``lengths``."""
    gen = torch.Generator().manual_seed(seed)
    wavs = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    longest = max(lengths)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, :len(w)] = w
    with torch.no_grad():
        lp, frames = am(batch, torch.tensor([n / longest for n in lengths]))
        diffs = []
        for i, w in enumerate(wavs):
            one, n = am(w[None], torch.ones(1))
            assert int(n) == int(frames[i]) == one.shape[1]  # the same frames
            diffs.append((one[0] - lp[i, :int(n)]).abs().max().item())
    return diffs


ENCODERS = {
    "conformer": lambda: ConformerEncoderWrapper(num_layers=2, d_model=32, d_ffn=64, nhead=2, kernel_size=15),
    "lstm": lambda: LSTMEncoder(d_model=32, hidden=16, num_layers=2),
}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_log_probs_alone_equal_log_probs_in_a_padded_batch(encoder):
    # 0.2 s to 2 s: the short ones are padded by far more than a convolution's reach
    diffs = alone_and_batched(acoustic(ENCODERS[encoder]()), [3200, 8000, 12345, 24000, 32000])
    assert max(diffs) < TOL, diffs


def test_the_masks_do_matter():
    """The check above can fail: feeding the model waveform-relative lengths unmasks the front end's padding."""
    am = acoustic(ENCODERS["conformer"]())
    lengths = [3200, 32000]
    wavs = torch.zeros(2, 32000)
    wavs[0, :3200], wavs[1] = 0.1 * torch.randn(3200), 0.1 * torch.randn(32000)
    with torch.no_grad():
        feats = am.normalize(am.compute_features(wavs), torch.ones(2))
        masked = am.model(feats, am.model.feature_lengths(torch.tensor([0.1, 1.0]), 32000, feats.shape[1]))
        unmasked = am.model(feats, torch.ones(2))  # every frame taken as speech: the padding leaks in
        n = int(am.model.output_frames(torch.tensor(lengths[0])))
    assert (masked[0, :n] - unmasked[0, :n]).abs().max().item() > 100 * TOL


def test_trained_model_transcripts_do_not_depend_on_batch_size(kd_exp):
    """The tiny teacher's greedy and beam transcripts of its test manifest at batch sizes 1, 8 and 16."""
    am, tokenizer, origin = load_model(str(kd_exp / "teacher"))
    items = read_inputs([str(kd_exp / "data" / "test_clean.csv")])
    for decoder in ("greedy", "beam"):
        rec = Recogniser(am, tokenizer, decoder, beam_size=4)
        runs = [list(rec.transcribe(items, batch_size=b, progress=False)) for b in (1, 8, 16)]
        assert runs[0] == runs[1] == runs[2]
    # the log-probs themselves, one utterance alone vs with all others
    from kd_brain.decode.transcribe import load_audio

    wavs = [load_audio(path) for _, path, _ in items]
    longest = max(len(w) for w in wavs)
    batch = torch.stack([torch.nn.functional.pad(w, (0, longest - len(w))) for w in wavs])
    with torch.no_grad():
        lp, frames = am(batch, torch.tensor([len(w) / longest for w in wavs]))
        for i, w in enumerate(wavs):
            one, _ = am(w[None], torch.ones(1))
            assert (one[0] - lp[i, :int(frames[i])]).abs().max().item() < TOL


@pytest.mark.parametrize("masked", [True, False])
def test_training_sees_the_padding_only_when_configured(masked):
    """``mask_padding_in_training``: False (the default) lets training see its batch's padding; True masks it
    in training too. Evaluation masks either way (the tests above)."""
    torch.manual_seed(0)
    enc = ConformerEncoderWrapper(num_layers=2, d_model=32, d_ffn=64, nhead=2, kernel_size=15, dropout=0.0)
    model = CTCModel(n_mels=40, d_model=32, encoder=enc, vocab_size=12, frontend_channels=8, dropout=0.0,
                     mask_padding_in_training=masked).train()
    feats = torch.randn(2, 120, 40)
    feats[0, 40:] = -5.0  # the first utterance is 40 frames; its padding as normalised log-zero features
    with torch.no_grad():
        batched = model(feats, torch.tensor([40 / 120, 1.0]))[0, :10]
        alone = model(feats[:1, :40], torch.ones(1))[0]
    diff = (batched - alone).abs().max().item()
    assert diff < TOL if masked else diff > 100 * TOL
