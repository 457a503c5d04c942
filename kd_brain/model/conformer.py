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
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder, ConvolutionModule
from speechbrain.nnet.attention import RelPosEncXL

from kd_brain.model.dropout import use_fast_dropout


def padding_mask(lengths, n_frames):
    """True at the padded frames: ``lengths`` [B] frame counts, ``n_frames`` the padded length.

    ``arange`` rather than speechbrain's ``length_to_mask``, which TorchScript
    tracing cannot follow (:mod:`kd_brain.decode.export` traces the model).

    Example
    -------
    >>> padding_mask(torch.tensor([3, 1]), 3).tolist()
    [[False, False, False], [False, True, True]]
    """
    return torch.arange(n_frames, device=lengths.device)[None, :] >= lengths[:, None]


def frame_counts(rel_lengths, n_frames):
    """Frames of each utterance from relative lengths (at least one)."""
    return torch.round(rel_lengths * n_frames).long().clamp(min=1)


def relative_lengths(frames, n_frames):
    """Relative lengths [B] of ``frames`` [B] valid frames out of ``n_frames``, a quarter frame above the
    exact ratio (below 1): speechbrain's CTC searchers truncate ``rel * T`` while the losses and the other
    decoders round it, and a ratio a float rounding short of ``frames`` would lose an utterance's last
    frame to truncation. Both then read exactly ``frames``.

    Example
    -------
    >>> rel = relative_lengths(torch.tensor([49, 61]), 61)
    >>> (rel * 61).long().tolist(), torch.round(rel * 61).long().tolist()
    ([49, 61], [49, 61])
    """
    return torch.where(frames >= n_frames, torch.ones(()), (frames.float() + 0.25) / n_frames).to(torch.float32)


def zero_padding(x, lengths):
    """``x`` [B, T, ...] with the frames at and after ``lengths`` [B] set to zero."""
    keep = ~padding_mask(lengths, x.shape[1])
    return x * keep.view(*keep.shape, *([1] * (x.dim() - 2))).to(x.dtype)


class Conv2dSubsampling(torch.nn.Module):
    """Two stride-2 3x3 convolutions over (time, frequency), then a linear layer.

    Padding 1 makes the output length ``ceil(ceil(T / 2) / 2)`` for any T, so
    the frame count is a pure function of the input length. Given each
    utterance's frame count, the frames past it are zeroed before each
    convolution: an utterance then sees zeros past its end, exactly the
    convolution's own zero padding when it is alone, so its output does not
    depend on how far its batch is padded (the padding's normalised features
    are far from zero).

    Example
    -------
    >>> front = Conv2dSubsampling(n_mels=40, channels=8, d_model=16).eval()
    >>> front(torch.rand(2, 101, 40)).shape
    torch.Size([2, 26, 16])
    >>> x = torch.rand(1, 50, 40)
    >>> padded = torch.cat([x, torch.rand(1, 30, 40)], dim=1)
    >>> alone, batched = front(x), front(padded, torch.tensor([50]))
    >>> torch.allclose(alone, batched[:, :alone.shape[1]], atol=1e-6)
    True
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

    def forward(self, x, lengths=None):
        """x: [batch, time, n_mels] -> [batch, ceil(time/4), d_model]; ``lengths``: frames [B] (None: all)."""
        x = x.unsqueeze(1)  # [B, 1, T, F]
        if lengths is not None:
            x = zero_padding(x.transpose(1, 2), lengths).transpose(1, 2)
        first, act, second, act2 = self.conv
        x = act(first(x))
        if lengths is not None:
            x = zero_padding(x.transpose(1, 2), (lengths + 1) // 2).transpose(1, 2)
        x = act2(second(x))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class MaskedConvolutionModule(ConvolutionModule):
    """speechbrain's Conformer convolution module with the padded frames zeroed before its depthwise convolution.

    speechbrain masks only the module's output, so the last frames of an
    utterance mix in the padded frames' values (``kernel_size // 2`` of
    them) and its output depends on its batch-mates. Zeroing them right before the
    depthwise convolution gives every utterance the convolution's own zero padding,
    as when it is alone. Same parameters (and state-dict keys) as the parent.
    In training, ``mask_in_training`` False keeps speechbrain's behaviour
    (see :class:`CTCModel`).
    """

    mask_in_training = True

    def forward(self, x, mask=None, dynchunktrain_config=None):
        if dynchunktrain_config is not None or self.causal or (self.training and not self.mask_in_training):
            return super().forward(x, mask, dynchunktrain_config=dynchunktrain_config)
        out = self.bottleneck(self.layer_norm(x).transpose(1, 2))  # [B, C, T]
        if mask is not None:  # mask: [B, T, 1], True at padding
            out = out.masked_fill(mask.transpose(1, 2), 0.0)
        out = self.after_conv(self.conv(out).transpose(1, 2))
        return out if mask is None else out.masked_fill(mask, 0.0)


class ConformerEncoderWrapper(torch.nn.Module):
    """speechbrain's ConformerEncoder with relative positions and a padding mask.

    The padding mask reaches every place where frames mix: attention (keys)
    and the convolution modules (:class:`MaskedConvolutionModule`), so an
    utterance's output does not depend on its batch-mates.

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
        for layer in self.encoder.layers:
            # the class only (same parameters and state-dict keys), so trained checkpoints still load
            layer.convolution_module.__class__ = MaskedConvolutionModule

    def forward(self, x, lengths, layer=None):
        """x: [B, T, d]; lengths: relative lengths in (0, 1].

        With ``layer`` (1-based), also returns the output of that encoder layer.
        """
        pad_mask = padding_mask(frame_counts(lengths, x.shape[1]), x.shape[1])
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
        abs_len = frame_counts(lengths, x.shape[1]).cpu()
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
    mask_padding_in_training : bool
        Outside training the padded frames are always masked (before the
        front end's convolutions and the Conformer's depthwise convolutions),
        so an utterance's log-probs do not depend on its batch-mates. In
        training, False lets the model see its batch's padding, as
        speechbrain's models do: the padding's features then mark where each
        shorter utterance ends, and the CTC model leaves its plateau much
        sooner (RESULTS.md: the main teacher's greedy dev WER after 15 epochs,
        27% without the masks in training against 49% with them).
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
                 aux_vocab_size=0, aux_layer=2, fast_dropout=False, mask_padding_in_training=True):
        super().__init__()
        self.mask_padding_in_training = mask_padding_in_training
        for module in encoder.modules():
            if isinstance(module, MaskedConvolutionModule):
                module.mask_in_training = mask_padding_in_training
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
        """feats: [B, T, n_mels]; lengths relative to T (see :func:`feature_lengths`).
        Returns log-probs [B, T/4, V].

        ``aux=True``: ``(log-probs, auxiliary head's log-probs [B, T/4, aux_vocab_size])``.
        """
        n_feats = frame_counts(lengths, feats.shape[1])
        x = self.frontend(feats, n_feats if self.mask_padding_in_training or not self.training else None)
        # the encoder's relative lengths from exact output frame counts, not rounded again
        lengths = Conv2dSubsampling.output_length(n_feats).to(feats.dtype) / x.shape[1]
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

    def feature_frames(self, n_samples, sample_rate=16000):
        """Fbank frames for an utterance of ``n_samples`` (speechbrain Fbank, centred frames)."""
        return n_samples // int(round(sample_rate * self.hop_ms / 1000)) + 1

    def output_frames(self, n_samples, sample_rate=16000):
        """CTC frames for an utterance of ``n_samples``."""
        return Conv2dSubsampling.output_length(self.feature_frames(n_samples, sample_rate))

    def feature_lengths(self, wav_lens, n_samples, n_feats):
        """Relative lengths over the features (what :meth:`forward` takes) from relative lengths over
        the waveforms: ``wav_lens`` [B] of a batch padded to ``n_samples``, ``n_feats`` feature frames.

        Each utterance's exact frame count, so its frames are the ones it has alone.

        Example
        -------
        >>> m = CTCModel(40, 16, LSTMEncoder(16, 8, 1), vocab_size=5, frontend_channels=4)
        >>> (m.feature_lengths(torch.tensor([1.0, 0.5]), 16000, 101) * 101).round().tolist()
        [101.0, 51.0]
        """
        samples = torch.round(wav_lens * n_samples).long()
        return self.feature_frames(samples).to(wav_lens.dtype) / n_feats
