"""Wav2Vec2-style CTC models (Wav2Vec2ForCTC, HubertForCTC, Data2VecAudioForCTC) in numpy.

Mirrors transformers' modeling_wav2vec2 / modeling_hubert / modeling_data2vec_audio in inference mode, with
Wav2Vec2FeatureExtractor's normalisation and Wav2Vec2CTCTokenizer's greedy decoding. Shapes: N = samples,
T = encoder frames (20 ms each for the usual 320x total stride), C = conv channels, D = hidden size,
H = heads, V = vocabulary.

Memory. The first convolution on raw audio is the peak: 512 channels x N/5 float32 frames is 2 GB for five minutes
of audio. The feature encoder therefore runs in time chunks that start on multiples of the total stride and
overlap by the receptive field, which reproduces the unchunked result exactly. Conv layer 0 of "group" models
normalises each channel over the whole time axis, so those models make two passes: the first accumulates the
per-channel mean and variance chunk by chunk, the second normalises with them. The transformer processes the
feed-forward block and attention in row / query blocks, so no (T, T) score matrix for all heads is ever whole.

Batches (see `Wav2Vec2CTCModel.preprocess`) follow Wav2Vec2Processor(..., padding=True): raw audio is padded with
zeros. Models whose feature extractor has `return_attention_mask=True` (the "layer"-norm models such as
large-lv60) normalise each utterance over its own samples and pass the attention mask; models without it
("group"-norm models such as base-960h, which were not trained with a mask) normalise the padded row and run
without a mask, exactly as transformers does, so their batched results depend on the padding.
`transcribe(list, batch_size=1)` (the default) runs utterances one at a time and is independent of padding.

Long audio is transcribed in overlapping windows like transformers' ASR pipeline with `chunk_length_s` /
`stride_length_s`: each window is normalised and run on its own, the argmax ids of the `stride` frames at both
inner edges are dropped, and the rest is concatenated before CTC decoding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import ops
from .audio import SAMPLE_RATE, load_audio
from .config import Wav2Vec2Dims, wav2vec2_config
from .tokenizer import CTCDecoder
from .types import Segment, Transcription
from .weights import Weights

ARCHITECTURE = "wav2vec2-ctc"

# Activation names (transformers' ACT2FN keys) the runtime implements; the converter rejects any other.
ACTIVATIONS = tuple(ops.ACTIVATIONS)

NORMALIZE_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm adds this to the variance
TORCH_NORM_EPS = 1e-5  # nn.LayerNorm / nn.GroupNorm default: the conv-layer norms do not use config.layer_norm_eps

FEATURE_CHUNK_FRAMES = 250  # encoder frames per feature-encoder chunk (5 s): first conv output ~ 33 MB at C=512
ROW_BLOCK = 4096  # frames per feed-forward / layer-norm block: bounds the (rows, 4D) intermediate to ~50 MB at D=768
IM2COL_ELEMENTS = 1 << 23  # float32 im2col entries per positional-conv block and group (32 MB)

DEFAULT_CHUNK_LENGTH_S = 30.0  # window length when long audio is windowed by default
MAX_UNWINDOWED_S = 60.0  # audio longer than this is windowed unless the caller says otherwise
WINDOW_BATCH = 8  # windows run as one batch: weights are dequantized once per batch, activations stay small


class Wav2Vec2InputError(ValueError):
    """Input the model cannot run on (wrong shape, mask mismatch, too short); the message says what to fix."""


def conv_output_length(n_samples, kernels: Sequence[int], strides: Sequence[int]):
    """Frames the (unpadded) convolutions produce from `n_samples` (int or int array), like
    `_get_feat_extract_output_lengths`; negative when the input is shorter than the receptive field."""
    n = n_samples
    for k, s in zip(kernels, strides):
        n = (n - k) // s + 1
    return n


# ---------------------------------------------------------------------------------------------------- input


def normalize(x: np.ndarray, length: int | None = None, padding_value: float = 0.0) -> np.ndarray:
    """Zero-mean unit-variance over x[:length] (all of x when None), padding after it set to `padding_value`:
    Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, in float32 like it."""
    x = np.asarray(x, dtype=np.float32)
    valid = x if length is None else x[:length]
    out = (x - valid.mean()) / np.sqrt(valid.var() + NORMALIZE_EPS)
    if length is not None and length < out.shape[0]:
        out[length:] = padding_value
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------- model


class Wav2Vec2CTCModel:
    """A converted Wav2Vec2 / HuBERT / Data2VecAudio CTC model: `transcribe(audio)` and `logits(batch)`."""

    def __init__(self, weights: Weights):
        self.weights = weights
        self.meta = weights.meta
        config = wav2vec2_config(weights, ARCHITECTURE, SAMPLE_RATE)  # MalformedHeaderError on anything inconsistent
        self.dims: Wav2Vec2Dims = config.dims
        pre = config.preprocess
        self.sampling_rate = pre.sampling_rate
        self.do_normalize = pre.do_normalize
        self.return_attention_mask = pre.return_attention_mask
        self.padding_value = pre.padding_value
        self.decoder = CTCDecoder(config.tokenizer)

    # ------------------------------------------------------------------ preprocessing

    def preprocess(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(input_values (B, N_max), attention_mask (B, N_max) int32 or None) as
        Wav2Vec2Processor(audios, padding=True) gives them for this model's feature extractor."""
        audios = [np.asarray(a, dtype=np.float32) for a in audios]
        lengths = np.array([a.shape[0] for a in audios])
        n_max = int(lengths.max())
        batch = np.full((len(audios), n_max), self.padding_value, dtype=np.float32)
        for b, a in enumerate(audios):  # one copy per utterance
            batch[b, : a.shape[0]] = a
        mask = None
        if self.return_attention_mask:
            mask = (np.arange(n_max)[None, :] < lengths[:, None]).astype(np.int32)
        if self.do_normalize:
            # Without a mask the extractor normalises each padded row as a whole, padding included (as transformers).
            for b in range(len(audios)):
                batch[b] = normalize(batch[b], int(lengths[b]) if mask is not None else None, self.padding_value)
        elif mask is not None:
            batch[mask == 0] = self.padding_value
        return batch, mask

    def n_frames(self, n_samples):
        """Encoder frames (= logits rows) for `n_samples` of audio (int or int array)."""
        return conv_output_length(n_samples, self.dims.conv_kernel, self.dims.conv_stride)

    # ------------------------------------------------------------------ forward

    def logits(self, input_values: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """CTC logits (B, T, V) for model inputs, as Wav2Vec2ForCTC(input_values, attention_mask).logits."""
        x = np.asarray(input_values, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise Wav2Vec2InputError(f"input_values must be (samples,) or (batch, samples), got shape {x.shape}")
        n = x.shape[1]
        if n < self.dims.receptive_field:
            raise Wav2Vec2InputError(
                f"audio of {n} samples is shorter than the model's {self.dims.receptive_field}-sample receptive field"
            )
        lengths = None
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask)
            if attention_mask.ndim == 1:
                attention_mask = attention_mask[None]
            if attention_mask.shape != x.shape:
                raise Wav2Vec2InputError(
                    f"attention_mask shape {attention_mask.shape} does not match input_values {x.shape}"
                )
            # transformers uses only the number of attended samples per row (right padding)
            lengths = self.n_frames(attention_mask.astype(np.int64).sum(-1))
            if lengths.min() < 1:
                raise Wav2Vec2InputError(f"an attention mask row covers fewer than {self.dims.receptive_field} samples")

        layers = self._conv_layers()
        h = np.stack([self.feature_encoder(row, layers=layers) for row in x])  # (B, T, C)
        h = self.feature_projection(h)  # (B, T, D)
        t = h.shape[1]
        valid = None if lengths is None else np.arange(t)[None, :] < lengths[:, None]  # (B, T)
        if valid is not None:
            h[~valid] = 0.0  # padded frames enter the positional convolution as zeros
        h = self.encoder(h, lengths)  # (B, T, D)
        head = ops.Linear.load(self.weights, "lm_head")
        return _rowwise(head, h, head.out_features)  # (B, T, V)

    def _conv_layers(self) -> list[tuple]:
        """(weight, bias, stride, (norm weight, norm bias) | None) per feature-encoder conv layer."""
        d, w = self.dims, self.weights
        p = f"{d.prefix}.feature_extractor.conv_layers"
        layers = []
        for i in range(len(d.conv_dim)):
            norm = None
            if d.feat_extract_norm == "layer" or i == 0 and d.feat_extract_norm == "group":
                norm = (w[f"{p}.{i}.layer_norm.weight"], w[f"{p}.{i}.layer_norm.bias"])
            layers.append((w[f"{p}.{i}.conv.weight"], w.get(f"{p}.{i}.conv.bias"), d.conv_stride[i], norm))
        return layers

    def feature_encoder(
        self, x: np.ndarray, chunk_frames: int = FEATURE_CHUNK_FRAMES, layers: list | None = None
    ) -> np.ndarray:
        """Convolutional feature encoder on one row of samples (N,) -> (T, C_last), computed in chunks of
        `chunk_frames` output frames; equal to the unchunked computation."""
        d = self.dims
        layers = layers if layers is not None else self._conv_layers()
        act = ops.activation(d.feat_extract_activation)

        group_stats = None
        if d.feat_extract_norm == "group":
            group_stats = self._conv0_statistics(x, layers[0], chunk_frames * d.total_stride // d.conv_stride[0])

        def run(segment: np.ndarray) -> np.ndarray:
            h = segment[None, :]  # (1, n)
            for weight, bias, stride, norm in layers:
                h = ops.conv1d(h, weight, bias, stride=stride)  # (C_i, t_i)
                if norm is not None and d.feat_extract_norm == "layer":  # LayerNorm over channels, per frame
                    h = np.ascontiguousarray(ops.layer_norm(h.T, norm[0], norm[1], TORCH_NORM_EPS).T)
                elif norm is not None and group_stats is not None:  # one group per channel, whole-row statistics
                    h = ops.group_norm(h, *group_stats, norm[0], norm[1])
                h = act(h)
            return h.T  # (t, C_last)

        total = int(self.n_frames(x.shape[0]))
        stride, field = d.total_stride, d.receptive_field
        out = np.empty((total, d.conv_dim[-1]), dtype=np.float32)
        for a in range(0, total, chunk_frames):
            b = min(a + chunk_frames, total)
            # output frames [a, b) see samples [a*stride, (b-1)*stride + field); chunk starts on a frame boundary
            out[a:b] = run(x[a * stride : (b - 1) * stride + field])
        return out

    @staticmethod
    def _conv0_statistics(x: np.ndarray, layer, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and 1/sqrt(var + eps) of conv layer 0's output over the whole row, accumulated over
        chunks of `chunk` output frames (Chan et al.'s pairwise update, in float64)."""
        weight, bias, stride, _ = layer
        k = weight.shape[-1]
        total = (x.shape[0] - k) // stride + 1
        count, mean, m2 = 0, np.zeros(weight.shape[0]), np.zeros(weight.shape[0])
        for a in range(0, total, chunk):
            b = min(a + chunk, total)
            y = ops.conv1d(x[None, a * stride : (b - 1) * stride + k], weight, bias, stride=stride)  # (C, b-a)
            n_c = y.shape[1]
            mean_c = y.mean(axis=1, dtype=np.float64)
            y -= mean_c.astype(np.float32)[:, None]  # centred per chunk, so float32 squares lose nothing material
            m2_c = np.einsum("ct,ct->c", y, y, dtype=np.float64)
            delta = mean_c - mean
            new_count = count + n_c
            mean = mean + delta * (n_c / new_count)
            m2 = m2 + m2_c + delta * delta * (count * n_c / new_count)
            count = new_count
        var = m2 / count
        return mean.astype(np.float32), (1.0 / np.sqrt(var + TORCH_NORM_EPS)).astype(np.float32)

    def feature_projection(self, h: np.ndarray) -> np.ndarray:
        """(B, T, C) -> (B, T, D)."""
        d, w = self.dims, self.weights
        p = f"{d.prefix}.feature_projection"
        proj = ops.Linear.load(w, p + ".projection")
        if d.feat_proj_layer_norm:
            ln_w, ln_b = w[p + ".layer_norm.weight"], w[p + ".layer_norm.bias"]
            return _rowwise(lambda r: proj(ops.layer_norm(r, ln_w, ln_b, d.layer_norm_eps)), h, d.hidden_size)
        return _rowwise(proj, h, d.hidden_size)

    def positional_embedding(self, h: np.ndarray) -> np.ndarray:
        """Grouped positional convolution(s): (B, T, D) -> (B, T, D)."""
        d, w = self.dims, self.weights
        p = f"{d.prefix}.encoder.pos_conv_embed"
        act = ops.activation(d.feat_extract_activation)
        if d.pos_conv_stack:
            convs = [
                (w[f"{p}.layers.{i}.conv.weight"], w.get(f"{p}.layers.{i}.conv.bias")) for i in range(d.pos_conv_layers)
            ]
        else:
            convs = [(w[f"{p}.conv.weight"], w.get(f"{p}.conv.bias"))]
        out = np.empty_like(h)
        for b in range(h.shape[0]):
            x = h[b]  # (T, D)
            if d.pos_conv_batch_norm:  # eval-mode BatchNorm1d over channels
                scale = w[f"{p}.batch_norm.weight"] / np.sqrt(w[f"{p}.batch_norm.running_var"] + d.batch_norm_eps)
                x = (x - w[f"{p}.batch_norm.running_mean"]) * scale + w[f"{p}.batch_norm.bias"]
            x = x.T  # (D, T)
            for weight, bias in convs:
                x = _same_conv(x, weight, bias, d.pos_conv_groups)  # (D, T)
                if d.pos_conv_stack:
                    x = ops.norm(x.T, TORCH_NORM_EPS).T
                x = act(x)
            out[b] = x.T
        return out

    def encoder(self, h: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """Transformer encoder (B, T, D) -> (B, T, D); `lengths` (B,) valid frames per row when masked."""
        d, w = self.dims, self.weights
        p = f"{d.prefix}.encoder"
        h = h + self.positional_embedding(h)
        ln_w, ln_b = w[p + ".layer_norm.weight"], w[p + ".layer_norm.bias"]
        if not d.do_stable_layer_norm:
            h = _rowwise(lambda r: ops.layer_norm(r, ln_w, ln_b, d.layer_norm_eps), h, d.hidden_size)
        for i in range(d.num_hidden_layers):
            h = self.encoder_layer(f"{p}.layers.{i}", h, lengths)
        if d.do_stable_layer_norm:
            h = _rowwise(lambda r: ops.layer_norm(r, ln_w, ln_b, d.layer_norm_eps), h, d.hidden_size)
        return h

    def encoder_layer(self, p: str, h: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        d, w = self.dims, self.weights
        eps = d.layer_norm_eps
        ln1 = (w[p + ".layer_norm.weight"], w[p + ".layer_norm.bias"])
        ln2 = (w[p + ".final_layer_norm.weight"], w[p + ".final_layer_norm.bias"])
        up = ops.Linear.load(w, p + ".feed_forward.intermediate_dense")
        down = ops.Linear.load(w, p + ".feed_forward.output_dense")
        act = ops.activation(d.hidden_act)

        def ffn(r: np.ndarray) -> np.ndarray:
            return down(act(up(r)))

        if d.do_stable_layer_norm:  # pre-norm: x + attn(ln(x)); x + ffn(ln(x))
            a = _rowwise(lambda r: ops.layer_norm(r, *ln1, eps), h, d.hidden_size)
            h = h + self.attention(p + ".attention", a, lengths)
            h += _rowwise(lambda r: ffn(ops.layer_norm(r, *ln2, eps)), h, d.hidden_size)
            return h
        # post-norm: ln(x + attn(x)); ln(x + ffn(x))
        h = h + self.attention(p + ".attention", h, lengths)
        h = _rowwise(lambda r: ops.layer_norm(r, *ln1, eps), h, d.hidden_size, inplace=True)
        return _rowwise(lambda r: ops.layer_norm(r + ffn(r), *ln2, eps), h, d.hidden_size, inplace=True)

    def attention(self, p: str, h: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """Bidirectional multi-head self-attention (B, T, D) -> (B, T, D); keys past `lengths` are masked."""
        d, w = self.dims, self.weights
        bsz, t, dim = h.shape
        heads = d.num_attention_heads
        scaling = np.float32((dim // heads) ** -0.5)
        q_proj, k_proj, v_proj, out_proj = (ops.Linear.load(w, f"{p}.{n}_proj") for n in ("q", "k", "v", "out"))
        out = np.empty((bsz, t, dim), dtype=np.float32)
        for b in range(bsz):
            n_keys = t if lengths is None else int(lengths[b])
            # masked keys get zero weight, so they are left out rather than added as -inf
            k = ops.split_heads(k_proj(h[b, :n_keys]), heads)  # (H, Tk, hd)
            v = ops.split_heads(v_proj(h[b, :n_keys]), heads)
            q = ops.split_heads(q_proj(h[b]) * scaling, heads)  # (H, T, hd)
            out[b] = out_proj(ops.merge_heads(ops.attention(q, k, v)))
        return out

    # ------------------------------------------------------------------ transcription

    def transcribe(
        self,
        audio,
        *,
        batch_size: int = 1,
        chunk_length_s: float | None = None,
        stride_length_s: float | tuple[float, float] | None = None,
    ):
        """Greedy CTC transcription of a path / array, or a list of them (-> list of Transcription).

        `chunk_length_s`: None windows audio longer than MAX_UNWINDOWED_S into DEFAULT_CHUNK_LENGTH_S windows;
        0 never windows; a positive value windows every input longer than it (transformers' ASR pipeline's
        `chunk_length_s`). `stride_length_s` (default chunk/6, as the pipeline) is the context dropped at each inner
        window edge, one value or (left, right). `batch_size` > 1 runs unwindowed utterances padded together like
        Wav2Vec2Processor(padding=True) would (see the module docstring).
        Segments are words with start/end times from their CTC frames.
        """
        single = isinstance(audio, (str, os.PathLike, np.ndarray))  # an array is one (possibly multi-channel) clip
        items = [audio] if single else list(audio)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        waves = [load_audio(a, self.sampling_rate) for a in items]
        results: list[Transcription | None] = [None] * len(waves)
        direct = []
        for i, x in enumerate(waves):
            window = self._window_length(x.shape[0], chunk_length_s)
            if x.shape[0] < self.dims.receptive_field:
                results[i] = Transcription(text="", segments=[])
            elif window:
                results[i] = self._decode(self._windowed_ids(x, window, stride_length_s))
            else:
                direct.append(i)
        for start in range(0, len(direct), batch_size):
            idx = direct[start : start + batch_size]
            values, mask = self.preprocess([waves[i] for i in idx])
            logits = self.logits(values, mask)
            ids = logits.argmax(axis=-1)  # (B, T)
            frames = self.n_frames(np.array([waves[i].shape[0] for i in idx]))
            for row, i in enumerate(idx):
                results[i] = self._decode(ids[row, : frames[row]])  # padding frames are not decoded
        return results[0] if single else results

    def _window_length(self, n_samples: int, chunk_length_s: float | None) -> int:
        """Window length in samples (aligned to the total stride like the pipeline), 0 for no windowing."""
        if chunk_length_s is None:
            if n_samples <= MAX_UNWINDOWED_S * self.sampling_rate:
                return 0
            chunk_length_s = DEFAULT_CHUNK_LENGTH_S
        if chunk_length_s < 0:
            raise ValueError(f"chunk_length_s must be >= 0, got {chunk_length_s}")
        if chunk_length_s == 0:
            return 0
        window = self._aligned(chunk_length_s)
        if window < self.dims.receptive_field:
            raise ValueError(f"chunk_length_s={chunk_length_s} is shorter than the model's receptive field")
        return window if n_samples > window else 0

    def _aligned(self, seconds: float) -> int:
        align = self.dims.total_stride
        return int(round(seconds * self.sampling_rate / align) * align)

    def _windowed_ids(self, x: np.ndarray, window: int, stride_length_s) -> np.ndarray:
        """Argmax ids of `x` computed in overlapping windows, as transformers' ASR pipeline chunks CTC models:
        window starts step by window - left - right samples; from each window's ids the first round(left /
        window * n) and last round(right / window * n) are dropped (n = round(window_len / total_stride)),
        except at the audio's ends."""
        chunk_s = window / self.sampling_rate
        if stride_length_s is None:
            stride_length_s = chunk_s / 6
        if isinstance(stride_length_s, (int, float)):
            stride_length_s = (stride_length_s, stride_length_s)
        left, right = (self._aligned(s) for s in stride_length_s)
        if window < left + right:
            raise ValueError("chunk_length_s must be longer than the left and right strides together")
        step = window - left - right
        n = x.shape[0]
        spans = []  # (start, end, left stride, right stride) in samples, as the pipeline's chunk_iter yields them
        for start in range(0, n, step):
            end = min(start + window, n)
            last = start + window >= n
            s_left = 0 if start == 0 else left
            if end - start > s_left and end - start >= self.dims.receptive_field:
                spans.append((start, end, s_left, 0 if last else right))
            if last:
                break
        pieces = []
        for group in _equal_length_runs(spans, WINDOW_BATCH):
            values = np.stack([x[a:e] for a, e, _, _ in group])  # (W, window)
            if self.do_normalize:
                values = np.stack([normalize(v) for v in values])
            ids = self.logits(values).argmax(axis=-1)  # (W, T_window): one weight pass for W windows
            for row, (a, e, s_left, s_right) in zip(ids, group):
                # rescale_stride(): sample strides -> logit frames, rounded like the pipeline
                token_n = int(round((e - a) / self.dims.total_stride))
                lo = int(round(s_left / (e - a) * token_n))
                hi = token_n - int(round(s_right / (e - a) * token_n))
                pieces.append(row[lo:hi])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def _decode(self, ids: np.ndarray) -> Transcription:
        frame_s = self.dims.total_stride / self.sampling_rate
        text, words = self.decoder.decode(ids)
        segments = [Segment(start=round(s * frame_s, 3), end=round(e * frame_s, 3), text=word) for word, s, e in words]
        return Transcription(text=text, segments=segments)


# ---------------------------------------------------------------------------------------------------- helpers


def _rowwise(fn, h: np.ndarray, out_dim: int, inplace: bool = False) -> np.ndarray:
    """Apply a per-frame function to (B, T, D_in) in blocks of ROW_BLOCK frames -> (B, T, out_dim)."""
    bsz, t, _ = h.shape
    flat = h.reshape(bsz * t, -1)
    out = flat if inplace and out_dim == flat.shape[1] else np.empty((bsz * t, out_dim), dtype=np.float32)
    for a in range(0, bsz * t, ROW_BLOCK):
        out[a : a + ROW_BLOCK] = fn(flat[a : a + ROW_BLOCK])
    return out.reshape(bsz, t, out_dim)


def _equal_length_runs(spans: list, limit: int) -> list[list]:
    """Consecutive spans (start, end, ...) of equal length, at most `limit` per run."""
    runs: list[list] = []
    for span in spans:
        if runs and len(runs[-1]) < limit and runs[-1][0][1] - runs[-1][0][0] == span[1] - span[0]:
            runs[-1].append(span)
        else:
            runs.append([span])
    return runs


def _same_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, groups: int) -> np.ndarray:
    """Conv1d with padding K//2 on both sides and, for even K, the last output frame dropped (SamePad):
    (D, T) -> (D, T). Runs over time blocks so the per-group (C/groups * K, block) im2col copy stays bounded."""
    k = weight.shape[-1]
    d, t = x.shape
    padded = np.pad(x, ((0, 0), (k // 2, k // 2)))  # (D, T + 2*(K//2))
    out = np.empty((weight.shape[0], t), dtype=np.float32)
    block = max(1, IM2COL_ELEMENTS // (weight.shape[1] * k))
    for a in range(0, t, block):
        e = min(a + block, t)
        out[:, a:e] = ops.conv1d(padded[:, a : e + k - 1], weight, bias, groups=groups)
    return out
