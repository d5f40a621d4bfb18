"""Whisper in numpy: log-mel features -> audio encoder -> text decoder with a K/V cache -> logits.

Weights are looked up by their Hugging Face state_dict names through `Weights`, which dequantizes each tensor when
it is used (or keeps it, with `cache=True`). The network's interface is narrow, for the decoding in `decoding.py`:

    features = model.encode(mel)              # (n_mels, 2 * n_audio_ctx) -> (n_audio_ctx, D)
    cross = model.cross_kv(features)          # per decoder layer: cross-attention keys and values
    state = model.new_state(batch)            # self-attention K/V cache of `batch` hypotheses
    logits = model.decoder_step(tokens, state, cross)   # tokens (B, n) after state.length -> (B, V)

Prompts, language detection, greedy and beam search, and transcription of whole audio live in `decoding.py`; the
methods of the same names here are shortcuts to it (as openai/whisper binds `decode` and `transcribe` to its model).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, overload

import numpy as np

from . import decoding, kernel, ops
from .config import WhisperDims, whisper_config
from .mel import log_mel_spectrogram
from .tokenizer import ByteLevelBPEDecoder
from .types import Transcription
from .weights import Weights

TOKEN_EMBEDDING = "model.decoder.embed_tokens.weight"
OUTPUT_PROJECTION = "proj_out.weight"  # present when the output projection is not tied to TOKEN_EMBEDDING
LOGIT_BLOCK_BYTES = 8 << 20  # uncached weights: output-embedding bytes dequantized at once when computing logits
KV_GROWTH = 64  # positions added to the self-attention cache when it fills up
NEG_INF = np.float32(-np.inf)

# per decoder layer: keys and values (H, n_audio_ctx, hd) shared by every row, or (B, H, n_audio_ctx, hd): one
# utterance per row of a batch (`stack_cross`)
CrossKV = list[tuple[np.ndarray, np.ndarray]]
_PER_WINDOW = ("encoder_attn.k_proj", "encoder_attn.v_proj")  # decoder weights read once per window (cross_kv)


def reuse_rank(name: str) -> int:
    """Order in which a memory budget keeps Whisper's tensors dequantized (`Weights.plan`; lower first): the most
    time saved per byte kept first. The output embedding leads: it is the largest table read at every token, and
    a decoding step's product with its column-major float32 copy runs about twice as fast as the compiled
    kernel's on its packed codes (and far faster than dequantizing it per token). Then the other weights read
    per token, then those read once per window (one dequantization per window saves little per byte)."""
    if name in (OUTPUT_PROJECTION, TOKEN_EMBEDDING):
        return 0
    return 1 if name.startswith("model.decoder.") and not any(k in name for k in _PER_WINDOW) else 2


def stack_cross(crosses: Sequence[CrossKV]) -> CrossKV:
    """One CrossKV with a batch dimension from single-utterance ones: row b of the batch attends to crosses[b]."""
    return [_batched_kv(np.stack([c[li][0] for c in crosses]), np.stack([c[li][1] for c in crosses]))
            for li in range(len(crosses[0]))]  # fmt: skip


def select_cross(cross: CrossKV, index: np.ndarray) -> CrossKV:
    """The batch rows `index` of a batched CrossKV (finished utterances leave the batch)."""
    return [_batched_kv(k[index], v[index]) for k, v in cross]


def _batched_kv(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys as the transposed view of a contiguous (..., H, hd, T) array and contiguous values: the layouts every
    decoding step's attention reads (once per window, instead of strided head views at every token)."""
    return np.ascontiguousarray(np.swapaxes(k, -1, -2)).swapaxes(-1, -2), np.ascontiguousarray(v)


__all__ = ["WhisperDims", "WhisperModel", "DecoderState", "CrossScores", "TOKEN_EMBEDDING", "OUTPUT_PROJECTION"]


class DecoderState:
    """Self-attention K/V per layer for B hypotheses, grown in steps of KV_GROWTH positions, and the length.

    Keys are kept transposed, `kt` (layers, B, H, hd, capacity), and values as `v` (layers, B, H, capacity, hd):
    the first `length` positions of either are then matrices BLAS multiplies in place (q k^T and p v), so a
    decoding step copies nothing but its new position."""

    def __init__(self, n_layers: int, batch: int, heads: int, head_dim: int, capacity: int):
        self.kt = np.zeros((n_layers, batch, heads, head_dim, capacity), dtype=np.float32)
        self.v = np.zeros((n_layers, batch, heads, capacity, head_dim), dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.v.shape[3]

    def reserve(self, n: int, limit: int) -> None:
        need = self.length + n
        if need <= self.capacity:
            return
        cap = min(max(need, self.capacity + KV_GROWTH), max(limit, need))
        kt = np.zeros(self.kt.shape[:4] + (cap,), dtype=np.float32)
        kt[..., : self.length] = self.kt[..., : self.length]
        v = np.zeros(self.v.shape[:3] + (cap, self.v.shape[4]), dtype=np.float32)
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        self.kt, self.v = kt, v

    def put(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store keys and values (B, H, n, hd) of the n positions after `length` (the caller advances `length`);
        returns views (B, H, length + n, hd) of every key (transposed view) and value of the layer so far."""
        start, stop = self.length, self.length + k.shape[-2]
        self.kt[layer, ..., start:stop] = np.swapaxes(k, -1, -2)
        self.v[layer, :, :, start:stop] = v
        return np.swapaxes(self.kt[layer, ..., :stop], -1, -2), self.v[layer, :, :, :stop]

    def reorder(self, index: np.ndarray) -> None:
        """Keep hypotheses `index` (beam search): row b becomes old row index[b]."""
        n = self.length
        self.kt[..., :n] = self.kt[:, index, ..., :n]
        self.v[:, :, :, :n] = self.v[:, index, :, :n]

    def select(self, index: np.ndarray) -> None:
        """Keep only hypotheses `index` (fewer rows: finished utterances leave a batch)."""
        self.kt, self.v = self.kt[:, index], self.v[:, index]

    def expand(self, batch: int) -> None:
        """Copy hypothesis 0 to `batch` rows (after a shared prompt)."""
        self.kt = np.repeat(self.kt[:, :1], batch, axis=1)
        self.v = np.repeat(self.v[:, :1], batch, axis=1)


HeadScores = Callable[[np.ndarray, np.ndarray], None]  # (scaled queries (H, n, hd), keys (H, T, hd)) of one layer


class CrossScores:
    """Collects, in one decoder_step, the cross-attention scores q k^T / sqrt(hd) (before the softmax) of chosen
    (layer, head) pairs and the final hidden states (n, D) of every position: what word timestamps align with."""

    def __init__(self, heads: Sequence[tuple[int, int]]):
        self.heads = [(int(layer), int(head)) for layer, head in heads]
        self.by_layer: dict[int, np.ndarray] = {}  # layer -> (heads of it, n, T)
        self.hidden: np.ndarray | None = None

    def at(self, layer: int) -> HeadScores | None:
        picked = [h for la, h in self.heads if la == layer]
        if not picked:
            return None

        def keep(q: np.ndarray, k: np.ndarray) -> None:
            self.by_layer[layer] = q[picked] @ k[picked].transpose(0, 2, 1)

        return keep

    def stacked(self) -> np.ndarray:
        """(len(heads), n, T) in the order of `heads`."""
        rows: dict[tuple[int, int], np.ndarray] = {}
        for layer, scores in self.by_layer.items():
            for i, head in enumerate(h for la, h in self.heads if la == layer):
                rows.setdefault((layer, head), scores[i])
        return np.stack([rows[pair] for pair in self.heads])


class WhisperModel:
    def __init__(self, weights: Weights):
        self.weights = weights
        self.meta = weights.meta
        self.config = config = whisper_config(weights)  # MalformedHeaderError on anything inconsistent
        self.dims: WhisperDims = config.dims
        self.preprocess = config.preprocess
        self.generation = config.generation
        self.tokenizer = ByteLevelBPEDecoder(config.tokens, config.first_special_id, config.special)
        self.output_name = OUTPUT_PROJECTION if OUTPUT_PROJECTION in weights else TOKEN_EMBEDDING
        self._dec_prefix = [f"model.decoder.layers.{i}." for i in range(self.dims.decoder_layers)]
        self._linears: dict[str, ops.Linear] = {}  # by prefix: products whose weight stays put (`_linear`)
        self._linears_for: tuple[frozenset[str], bool] = (weights.kept, kernel.available())

    # -- generation config shortcuts ---------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        return self.preprocess.sampling_rate

    @property
    def n_samples(self) -> int:
        return self.preprocess.n_samples

    @property
    def sot(self) -> int:
        return self.generation.decoder_start_token_id

    @property
    def eot(self) -> int:
        return self.generation.eos_token_id

    @property
    def no_timestamps(self) -> int:
        return self.generation.no_timestamps_token_id

    @property
    def is_multilingual(self) -> bool:
        return self.generation.is_multilingual

    @property
    def lang_to_id(self) -> dict[str, int]:
        return self.generation.lang_to_id

    @property
    def task_to_id(self) -> dict[str, int]:
        return self.generation.task_to_id

    # -- features and encoder ---------------------------------------------------------------------------------
    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """(n_mels, 2 * n_audio_ctx) features of one window (audio zero-padded or cut to the window)."""
        p = self.preprocess
        return log_mel_spectrogram(
            audio,
            self.weights[p.mel_filters],
            n_fft=p.n_fft,
            hop_length=p.hop_length,
            n_samples=p.n_samples,
            padding_value=p.padding_value,
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(n_mels, 3000) log-mel -> (1500, D) audio features."""
        w, d = self.weights, self.dims
        mel = np.asarray(mel, dtype=np.float32)
        if mel.shape != (d.n_mels, 2 * d.n_audio_ctx):
            raise ValueError(f"expected mel features of shape {(d.n_mels, 2 * d.n_audio_ctx)}, got {mel.shape}")
        self._check_linears()
        x = ops.gelu(_conv(w, "model.encoder.conv1", mel, stride=1))  # (D, 3000)
        x = ops.gelu(_conv(w, "model.encoder.conv2", x, stride=2))  # (D, 1500)
        x = np.ascontiguousarray(x.T)  # (1500, D)
        x += w["model.encoder.embed_positions.weight"][: x.shape[0]]
        for i in range(d.encoder_layers):
            p = f"model.encoder.layers.{i}."
            x += self._attention(p + "self_attn", self._norm(p + "self_attn_layer_norm", x), d.encoder_heads)
            x += self._mlp(p, self._norm(p + "final_layer_norm", x))
        return self._norm("model.encoder.layer_norm", x)

    def _attention(self, prefix: str, x: np.ndarray, heads: int) -> np.ndarray:
        """Bidirectional multi-head self-attention over x (T, D)."""
        scale = np.float32((x.shape[-1] // heads) ** -0.5)
        q = ops.split_heads(self._linear(prefix + ".q_proj", x) * scale, heads)  # (H, T, hd)
        k = ops.split_heads(self._linear(prefix + ".k_proj", x), heads)
        v = ops.split_heads(self._linear(prefix + ".v_proj", x), heads)
        return self._linear(prefix + ".out_proj", ops.merge_heads(ops.attention(q, k, v)))

    def _mlp(self, prefix: str, x: np.ndarray) -> np.ndarray:
        return self._linear(prefix + "fc2", ops.gelu(self._linear(prefix + "fc1", x)))

    def _linear(self, prefix: str, x: np.ndarray, block_bytes: int | None = None) -> np.ndarray:
        """`ops.linear` of the Linear `prefix`, loaded once when its weight stays put (kept, or multiplied by the
        kernel from its packed codes): a decoding step runs ~50 small products, and looking each weight up again
        cost more than multiplying by it. Others are loaded per call (their float weight must not stay)."""
        w = self.weights
        layer = self._linears.get(prefix)
        if layer is None:
            name = prefix + ".weight"
            if not w.keeps(name) and w.packed(name) is None:
                return ops.linear(w, prefix, x, block_bytes=block_bytes)
            layer = self._linears[prefix] = ops.Linear.load(w, prefix)
        return ops.apply_linear(layer, x)

    def _check_linears(self) -> None:
        """Forget the loaded Linears after a new plan or when the kernel was switched on or off (WAVQ_NO_KERNEL):
        called once per encoder pass and decoding step, not per product."""
        now = (self.weights.kept, kernel.available())
        if self._linears_for != now:
            self._linears, self._linears_for = {}, now

    def _norm(self, prefix: str, x: np.ndarray) -> np.ndarray:
        w = self.weights
        return ops.layer_norm(x, w[prefix + ".weight"], w[prefix + ".bias"], self.dims.layer_norm_eps)

    # -- decoder ----------------------------------------------------------------------------------------------
    def cross_kv(self, features: np.ndarray) -> CrossKV:
        """Per decoder layer: cross-attention keys and values (H, 1500, hd) of the audio features (1500, D).
        The keys are transposed views of contiguous (H, hd, 1500) arrays, the layout attention multiplies by."""
        heads = self.dims.decoder_heads
        self._check_linears()
        out = []
        for p in self._dec_prefix:
            k = ops.split_heads(self._linear(p + "encoder_attn.k_proj", features), heads)
            v = ops.split_heads(self._linear(p + "encoder_attn.v_proj", features), heads)
            out.append(_batched_kv(k, v))
        return out

    def new_state(self, batch: int = 1, capacity: int = KV_GROWTH) -> DecoderState:
        d = self.dims
        return DecoderState(d.decoder_layers, batch, d.decoder_heads, d.d_model // d.decoder_heads, capacity)

    def decoder_step(
        self, tokens: np.ndarray, state: DecoderState, cross: CrossKV, scores: CrossScores | None = None
    ) -> np.ndarray:
        """Feed tokens (B, n) after the `state.length` cached ones; returns logits (B, V) of the last position.

        `scores`, when given, collects the cross-attention scores of its heads and every position's final hidden
        state (word timestamps); without it nothing extra is computed.
        """
        w, d = self.weights, self.dims
        tokens = np.asarray(tokens, dtype=np.int64)
        b, n = tokens.shape
        off = state.length
        if off + n > d.n_text_ctx:
            raise ValueError(f"decoder input of {off + n} tokens exceeds the model's {d.n_text_ctx} positions")
        state.reserve(n, d.n_text_ctx)
        self._check_linears()
        x = w.take(TOKEN_EMBEDDING, tokens) + w.rows("model.decoder.embed_positions.weight", off, off + n)
        x = x.reshape(b * n, d.d_model).astype(np.float32, copy=False)  # (B*n, D)
        mask = None
        if n > 1:  # causal mask for the new queries against cached + new keys
            mask = np.where(np.arange(off + n)[None, :] > (off + np.arange(n))[:, None], NEG_INF, np.float32(0))
        for li, p in enumerate(self._dec_prefix):
            x += self._cached_self_attention(
                p + "self_attn", self._norm(p + "self_attn_layer_norm", x), state, li, mask
            )
            x += self._cross_attention(
                p + "encoder_attn",
                self._norm(p + "encoder_attn_layer_norm", x),
                cross[li],
                None if scores is None else scores.at(li),
            )
            x += self._mlp(p, self._norm(p + "final_layer_norm", x))
        state.length = off + n
        if scores is not None:
            scores.hidden = self._norm("model.decoder.layer_norm", x)
        last = x.reshape(b, n, d.d_model)[:, -1]  # (B, D)
        return self.logits(self._norm("model.decoder.layer_norm", last))

    def _cached_self_attention(
        self, prefix: str, x: np.ndarray, state: DecoderState, layer: int, mask: np.ndarray | None
    ) -> np.ndarray:
        """Causal self-attention of x (B*n, D), the new positions, over the cached and new keys."""
        heads = self.dims.decoder_heads
        b = state.v.shape[1]
        n = x.shape[0] // b
        scale = np.float32((x.shape[-1] // heads) ** -0.5)
        q = ops.split_heads((self._linear(prefix + ".q_proj", x) * scale).reshape(b, n, -1), heads)  # (B, H, n, hd)
        k = ops.split_heads(self._linear(prefix + ".k_proj", x).reshape(b, n, -1), heads)
        v = ops.split_heads(self._linear(prefix + ".v_proj", x).reshape(b, n, -1), heads)
        a = ops.attention(q, *state.put(layer, k, v), mask)  # (B, H, n, hd)
        return self._linear(prefix + ".out_proj", ops.merge_heads(a).reshape(b * n, -1))

    def _cross_attention(
        self, prefix: str, x: np.ndarray, kv: tuple[np.ndarray, np.ndarray], keep: HeadScores | None = None
    ) -> np.ndarray:
        """Attention of x (B*n, D) over the audio. Shared audio (kv (H, T, hd)): every hypothesis shares it, so
        all queries stack per head; batched audio (kv (B, H, T, hd)): each row's queries attend to their own
        utterance (word-timestamp scores are collected on shared audio only)."""
        heads = self.dims.decoder_heads
        scale = np.float32((x.shape[-1] // heads) ** -0.5)
        q = self._linear(prefix + ".q_proj", x) * scale
        if kv[0].ndim == 4:
            b = kv[0].shape[0]
            a = ops.merge_heads(ops.attention(ops.split_heads(q.reshape(b, -1, q.shape[-1]), heads), *kv))
            return self._linear(prefix + ".out_proj", a.reshape(x.shape[0], -1))
        q = ops.split_heads(q, heads)  # (H, B*n, hd)
        if keep is not None:
            keep(q, kv[0])
        return self._linear(prefix + ".out_proj", ops.merge_heads(ops.attention(q, *kv)))

    def logits(self, h: np.ndarray) -> np.ndarray:
        """h (B, D) through the output embedding -> (B, V); uncached, a block of its rows at a time."""
        self._check_linears()
        return self._linear(self.output_name.removesuffix(".weight"), h, block_bytes=LOGIT_BLOCK_BYTES)

    # -- decoding shortcuts (see decoding.py) -----------------------------------------------------------------
    def decode_tokens(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    def language_id(self, language: str) -> int:
        return decoding.language_id(self.generation, language)

    def language_code(self, token_id: int) -> str:
        return decoding.language_code(self.generation, token_id)

    def detect_language(self, cross: CrossKV) -> tuple[int, dict[str, float]]:
        return decoding.detect_language(self, cross)

    def prompt(self, language: str | None, task: str | None, cross: CrossKV | None = None) -> list[int]:
        return decoding.build_prompt(self, decoding.DecodingOptions(language=language, task=task), cross)

    def generate(self, mel: np.ndarray, **options) -> tuple[list[int], list[int]]:
        """(prompt tokens, generated tokens without end of text) for one window; options: DecodingOptions."""
        result = decoding.decode(self, mel, decoding.DecodingOptions(**options))
        return result.prompt, result.tokens

    def windows(self, audio: np.ndarray) -> list[tuple[int, int]]:
        return decoding.windows(len(audio), self.n_samples)

    @overload
    def transcribe(
        self, audio: list | tuple, *, sample_rate: int | None = None, **options: Any
    ) -> list[Transcription]: ...

    @overload
    def transcribe(
        self, audio: str | os.PathLike | np.ndarray, *, sample_rate: int | None = None, **options: Any
    ) -> Transcription: ...

    def transcribe(self, audio, *, sample_rate=None, batch_size: int = 1, **options):
        """Text of `audio`: a path, an array, or a list of them (-> list of results).

        An array is taken to be at `sample_rate` Hz and resampled to the model's rate; with no `sample_rate` it
        must already be at the model's rate (16 kHz), as before. Options (`decoding.TranscriptionOptions`, with
        openai-whisper's defaults): language, task, beam_size, length_penalty, temperature (fallback schedule),
        compression_ratio_threshold, logprob_threshold, no_speech_threshold, condition_on_previous_text,
        initial_prompt, word_timestamps, vad, without_timestamps, max_new_tokens, seed.

        Audio of any length goes through openai-whisper's seek loop with timestamps (temperature fallback, the
        no-speech rule, segments with real times), as openai-whisper does; on the 60-s test-clean file tiny.en
        gives transformers' long-form text and segments. `without_timestamps=True` instead decodes equal windows
        of at most 30 s as transformers' short-form generate does (one window: equal to `generate`).
        `batch_size` > 1 with a list and `without_timestamps=True` decodes its one-window utterances together
        (`decoding.transcribe_batch`: one pass over the decoder's weights per step for all of them).
        """
        opts = decoding.TranscriptionOptions(**options)
        if isinstance(audio, (list, tuple)) and batch_size > 1:
            return decoding.transcribe_batch(self, audio, opts, batch_size, sample_rate)
        return decoding.transcribe(self, audio, opts, sample_rate)


def _conv(w: Weights, prefix: str, x: np.ndarray, stride: int) -> np.ndarray:
    """Whisper's kernel-3, padding-1 Conv1d: x (C, T) -> (C_out, T // stride)."""
    name = prefix + ".weight"
    return ops.conv1d(x, w[name], w[prefix + ".bias"], stride=stride, padding=1, weight_bits=w.bits(name))
