"""The CTC acoustic model shared by teacher and student.

fbank (10 ms) -> ``Conv2dSubsampling`` (4x: one CTC frame per 40 ms)
-> encoder (Conformer or BiLSTM, chosen in YAML) -> linear -> log-softmax.

The CTC output frame is the unit that the soft-label store keeps and the
student distils, so ``CTCModel.frame_info()`` states the frame rate and
``output_frames()`` computes the number of output frames from the number of
input samples. Teacher and student must agree on both; the student checks it
against the store's metadata instead of assuming it.
"""

import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.nnet.attention import RelPosEncXL

from kd_brain.model.dropout import use_fast_dropout


class Conv2dSubsampling(torch.nn.Module):
    """Two stride-2 3x3 convolutions over (time, frequency), then a linear layer.

    Padding 1 makes the output length ``ceil(ceil(T / 2) / 2)`` for any T, so
    the frame count is a pure function of the input length.

    Example
    -------
    >>> front = Conv2dSubsampling(n_mels=40, channels=8, d_model=16)
    >>> front(torch.rand(2, 101, 40)).shape
    torch.Size([2, 26, 16])
    """

    def __init__(self, n_mels, channels, d_model, dropout=0.1):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        freq = ((n_mels + 1) // 2 + 1) // 2
        self.out = torch.nn.Sequential(torch.nn.Linear(channels * freq, d_model), torch.nn.Dropout(dropout))

    @staticmethod
    def output_length(n_frames):
        """Output frames for ``n_frames`` input frames (int or tensor)."""
        return ((n_frames + 1) // 2 + 1) // 2

    def forward(self, x):
        """x: [batch, time, n_mels] -> [batch, ceil(time/4), d_model]."""
        x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class ConformerEncoderWrapper(torch.nn.Module):
    """speechbrain's ConformerEncoder with relative positions and a padding mask.

    Example
    -------
    >>> enc = ConformerEncoderWrapper(num_layers=1, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    >>> enc(torch.rand(2, 10, 16), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, num_layers, d_model, d_ffn, nhead, kernel_size=15, dropout=0.1):
        super().__init__()
        self.pos = RelPosEncXL(d_model)
        self.num_layers = num_layers
        self.encoder = ConformerEncoder(
            num_layers=num_layers, d_model=d_model, d_ffn=d_ffn, nhead=nhead,
            kernel_size=kernel_size, dropout=dropout, attention_type="RelPosMHAXL",
            output_hidden_states=True,  # for an auxiliary CTC head on an intermediate layer
        )

    def forward(self, x, lengths, layer=None):
        """x: [B, T, d]; lengths: relative lengths in (0, 1].

        With ``layer`` (1-based), also returns the output of that encoder layer.
        """
        abs_len = torch.round(lengths * x.shape[1]).long().clamp(min=1)
        # True at padding; arange rather than speechbrain's length_to_mask, which TorchScript
        # tracing cannot follow (kd_brain.decode.export traces this model)
        pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= abs_len[:, None]
        out, _, hidden = self.encoder(x, src_key_padding_mask=pad_mask, pos_embs=self.pos(x))
        return out if layer is None else (out, hidden[layer])


class LSTMEncoder(torch.nn.Module):
    """A bidirectional LSTM encoder (packed, so padding does not leak in).

    Example
    -------
    >>> enc = LSTMEncoder(d_model=16, hidden=8, num_layers=1)
    >>> enc(torch.rand(2, 10, 16), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 10, 16])
    """

    def __init__(self, d_model, hidden, num_layers, dropout=0.1):
        super().__init__()
        self.lstm = torch.nn.LSTM(d_model, hidden, num_layers, batch_first=True,
                                  bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.proj = torch.nn.Linear(2 * hidden, d_model)

    def forward(self, x, lengths, layer=None):
        if layer is not None:
            raise ValueError("an auxiliary CTC head on an intermediate layer needs the Conformer encoder")
        abs_len = torch.round(lengths * x.shape[1]).long().clamp(min=1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, abs_len, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.proj(out)


class CTCModel(torch.nn.Module):
    """Front end + encoder + CTC output layer; returns log-probabilities.

    Arguments
    ---------
    n_mels : int
        Fbank channels of the input.
    d_model : int
        Encoder width.
    encoder : torch.nn.Module
        Called as ``encoder(x [B, T, d_model], rel_lengths) -> [B, T, d_model]``.
    vocab_size : int
        CTC outputs, blank included (blank is index 0).
    frontend_channels : int
        Convolution channels of the subsampling front end.
    hop_ms : float
        Frame shift of the input features.
    aux_vocab_size : int
        Outputs of an auxiliary CTC head on encoder layer ``aux_layer``
        (e.g. characters under a sub-word main head), 0 for none.
    aux_layer : int
        1-based encoder layer that feeds the auxiliary head.
    fast_dropout : bool
        Replace every ``torch.nn.Dropout`` (the encoder's included) by
        ``kd_brain.model.dropout.FastDropout``: the same regularisation with a mask
        that is about 3x cheaper to draw on CPU.

    Example
    -------
    >>> enc = LSTMEncoder(d_model=16, hidden=8, num_layers=1)
    >>> m = CTCModel(n_mels=40, d_model=16, encoder=enc, vocab_size=5, frontend_channels=4)
    >>> m(torch.rand(2, 101, 40), torch.tensor([1.0, 0.8])).shape
    torch.Size([2, 26, 5])
    >>> m.frame_info()["frame_shift_ms"]
    40.0
    >>> enc = ConformerEncoderWrapper(num_layers=2, d_model=16, d_ffn=32, nhead=2, kernel_size=3)
    >>> m = CTCModel(n_mels=40, d_model=16, encoder=enc, vocab_size=50, frontend_channels=4, aux_vocab_size=6, aux_layer=1)
    >>> [lp.shape[-1] for lp in m(torch.rand(2, 101, 40), torch.tensor([1.0, 0.8]), aux=True)]
    [50, 6]
    """

    subsampling = 4

    def __init__(self, n_mels, d_model, encoder, vocab_size, frontend_channels=32, hop_ms=10.0, dropout=0.1,
                 aux_vocab_size=0, aux_layer=2, fast_dropout=False):
        super().__init__()
        self.frontend = Conv2dSubsampling(n_mels, frontend_channels, d_model, dropout)
        self.encoder = encoder
        self.head = torch.nn.Linear(d_model, vocab_size)
        self.hop_ms = hop_ms
        self.vocab_size = vocab_size
        self.aux_vocab_size, self.aux_layer = aux_vocab_size, aux_layer
        if aux_vocab_size:
            n_layers = getattr(encoder, "num_layers", None)
            if n_layers is not None and not 1 <= aux_layer < n_layers:
                raise ValueError(f"aux_layer={aux_layer}: must be an intermediate layer, 1 to {n_layers - 1}")
            self.aux_head = torch.nn.Linear(d_model, aux_vocab_size)
        if fast_dropout:
            use_fast_dropout(self)

    def forward(self, feats, lengths, aux=False):
        """feats: [B, T, n_mels]; lengths relative. Returns log-probs [B, T/4, V].

        ``aux=True``: ``(log-probs, auxiliary head's log-probs [B, T/4, aux_vocab_size])``.
        """
        x = self.frontend(feats)
        if not aux:
            return self.head(self.encoder(x, lengths)).log_softmax(dim=-1)
        if not self.aux_vocab_size:
            raise ValueError("aux=True but the model has no auxiliary head (aux_vocab_size: 0)")
        x, mid = self.encoder(x, lengths, layer=self.aux_layer)
        return self.head(x).log_softmax(dim=-1), self.aux_head(mid).log_softmax(dim=-1)

    def frame_info(self):
        """What a stored CTC frame means: shift, subsampling and vocabulary."""
        return {"frame_shift_ms": self.hop_ms * self.subsampling, "subsampling": self.subsampling,
                "vocab_size": self.vocab_size}

    def output_frames(self, n_samples, sample_rate=16000):
        """CTC frames for an utterance of ``n_samples`` (speechbrain Fbank, centred frames)."""
        hop = int(round(sample_rate * self.hop_ms / 1000))
        return Conv2dSubsampling.output_length(n_samples // hop + 1)
