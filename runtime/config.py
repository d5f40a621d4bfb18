"""The metadata a runtime model uses, read and validated once when the model is loaded.

The reader (formats/) checks the container: offsets, lengths, checksums, tensor table. This module checks what the
header *means* to a model, as strictly: every field's type and range, and its consistency with the tensor table
(dims against tensor shapes, token ids against the vocabulary, the preprocessing against the encoder's positions).
Every failure is one `MalformedHeaderError` naming the file and the field. Ranges are checked before any value
sizes anything, so a hostile header cannot make the runtime allocate or loop in proportion to a number it holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ..formats import MalformedHeaderError
from .ops import ACTIVATIONS
from .weights import Weights

MAX_LAYERS = 1024  # transformer layers (released models have at most 48)
MAX_WIDTH = 1 << 16  # model width, heads, feed-forward width, mel bins, channels
MAX_POSITIONS = 1 << 16  # encoder / decoder positions per window
MAX_VOCAB = 1 << 21  # token ids
MAX_CONV_LAYERS = 64  # Wav2Vec2 feature-encoder convolutions (7 in released models)
MAX_KERNEL = 1 << 12  # samples or frames one convolution kernel spans
MIN_SAMPLING_RATE = 1_000  # Hz
MAX_SAMPLING_RATE = 384_000  # Hz: the highest rate audio hardware records; also bounds every resampled buffer
MAX_WINDOW_S = 120  # seconds of audio in one Whisper window (30 in released models)
MAX_MERGE_CHARS = 1024  # characters of one BPE merge rule "left right" (released vocabularies: under 130)
WAV2VEC2_PREFIXES = ("wav2vec2", "hubert", "data2vec_audio")
TASKS = ("transcribe", "translate")
_MISSING: Any = object()


class Fields:
    """Typed, range-checked access to one header mapping; `where` is its dotted path in the header."""

    def __init__(self, path: str | None, value: Any, where: str):
        self.path, self.where = path, where
        if not isinstance(value, Mapping):
            self.fail(f"is {type(value).__name__}, not a map")
        self.value: Mapping = value

    def fail(self, problem: str, key: str | None = None) -> NoReturn:
        field = self.where if key is None else self.field(key)
        raise MalformedHeaderError(self.path, f"header field {field or 'meta'} {problem}")

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, default: Any) -> Any:
        if key in self.value:
            return self.value[key]
        if default is _MISSING:
            self.fail("is missing", key)
        return default

    def section(self, key: str) -> Fields:
        return Fields(self.path, self._get(key, _MISSING), self.field(key))

    def integer(self, key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
        return _integer(self, key, self._get(key, default), lo, hi)

    def number(self, key: str, lo: float, hi: float, default: Any = _MISSING) -> float:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"is {_short(v)}, not a number", key)
        if not math.isfinite(v) or not lo <= v <= hi:
            self.fail(f"is {v}, not a finite number in [{lo}, {hi}]", key)
        return float(v)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            self.fail(f"is {_short(v)}, not true or false", key)
        return v

    def string(self, key: str, choices: Sequence[str] | None = None, default: Any = _MISSING) -> str:
        v = self._get(key, default)
        if not isinstance(v, str):
            self.fail(f"is {_short(v)}, not a string", key)
        if choices is not None and v not in choices:
            self.fail(f"is {v!r}, not one of {', '.join(choices)}", key)
        return v

    def optional_string(self, key: str) -> str | None:
        return None if self.value.get(key) is None else self.string(key)

    def integers(self, key: str, lo: int, hi: int, max_len: int, default: Any = _MISSING) -> tuple[int, ...]:
        items = self._sequence(key, self._get(key, default), max_len)
        return tuple(_integer(self, f"{key}[{i}]", v, lo, hi) for i, v in enumerate(items))

    def strings(self, key: str, max_len: int) -> tuple[str, ...]:
        items = self._sequence(key, self._get(key, _MISSING), max_len)
        for i, v in enumerate(items):
            if not isinstance(v, str):
                self.fail(f"is {_short(v)}, not a string", f"{key}[{i}]")
        return tuple(items)

    def id_map(self, key: str, hi: int, default: Any = _MISSING) -> dict[str, int]:
        """A map of names to token ids in [0, hi)."""
        sub = Fields(self.path, self._get(key, default), self.field(key))
        for name in sub.value:
            if not isinstance(name, str):
                sub.fail(f"has key {_short(name)}, not a string")
        return {name: sub.integer(name, 0, hi - 1) for name in sub.value}

    def _sequence(self, key: str, v: Any, max_len: int) -> Sequence:
        if not isinstance(v, (list, tuple)):
            self.fail(f"is {_short(v)}, not a list", key)
        if len(v) > max_len:
            self.fail(f"has {len(v)} entries, more than {max_len}", key)
        return v


def _integer(fields: Fields, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        fields.fail(f"is {_short(v)}, not an integer", key)
    if not lo <= v <= hi:
        fields.fail(f"is {v}, not in [{lo}, {hi}]", key)
    return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def expect_shape(w: Weights, name: str, shape: tuple[int, ...]) -> None:
    """The tensor `name` exists with `shape`, as the dims imply."""
    if name not in w:
        raise MalformedHeaderError(w.path, f"tensor {name!r}, which the dims imply, is missing")
    got = tuple(w.shape(name))
    if got != shape:
        raise MalformedHeaderError(w.path, f"tensor {name!r} has shape {got}, the dims imply {shape}")


# Tensors that belong to the `.weight` beside them, and the weight dimension their one axis runs along.
COMPANIONS = {"bias": 0, "running_mean": 0, "running_var": 0, "input_scale": 1}


def check_companions(w: Weights) -> None:
    """Every bias, batch-norm statistic and input scale has the one axis of the weight it belongs to.

    The model-specific checks fix each weight's shape; this fixes what is added to, or divides, its rows or
    columns, which the table could otherwise reshape to the same byte count (a (2, 8) bias for 16 rows)."""
    for name in w.names():
        prefix, _, kind = name.rpartition(".")
        if kind not in COMPANIONS:
            continue
        weight = prefix + ".weight"
        if weight not in w:
            raise MalformedHeaderError(w.path, f"tensor {name!r} has no {weight!r} to belong to")
        axis, weight_shape = COMPANIONS[kind], tuple(w.shape(weight))
        if len(weight_shape) <= axis or kind == "input_scale" and len(weight_shape) != 2:
            raise MalformedHeaderError(w.path, f"tensor {name!r} belongs to {weight!r} of shape {weight_shape}")
        expect_shape(w, name, (weight_shape[axis],))


def check_architecture(w: Weights, architecture: str) -> None:
    arch = w.meta.get("architecture")
    if arch != architecture:
        raise MalformedHeaderError(w.path, f"header field architecture is {_short(arch)}, not {architecture!r}")


def heads_divide(fields: Fields, key: str, heads: int, width: int, width_key: str) -> None:
    if width % heads:
        fields.fail(f"is {heads}, which does not divide {width_key} {width}", key)


# ---------------------------------------------------------------------------------------------------- Whisper


@dataclasses.dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_vocab: int
    d_model: int
    n_audio_ctx: int  # encoder positions per window (1500 = 30 s / 20 ms)
    n_text_ctx: int  # decoder positions (448)
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_meta(cls, d: Any, path: str | None = None) -> WhisperDims:
        return whisper_dims(Fields(path, d, "dims"))


@dataclasses.dataclass(frozen=True)
class WhisperPreprocess:
    sampling_rate: int  # Hz
    n_fft: int  # samples per STFT frame
    hop_length: int  # samples between STFT frames
    n_samples: int  # samples per window
    padding_value: float  # what pads a short window
    mel_filters: str  # tensor name of the (n_fft // 2 + 1, n_mels) filterbank


@dataclasses.dataclass(frozen=True)
class WhisperGeneration:
    """transformers' generation config, as far as decoding uses it."""

    decoder_start_token_id: int  # <|startoftranscript|>
    eos_token_id: int  # <|endoftext|>
    no_timestamps_token_id: int
    is_multilingual: bool
    lang_to_id: dict[str, int]  # '<|en|>' -> id
    task_to_id: dict[str, int]  # 'transcribe' -> id
    languages: dict[str, str]  # code -> English name
    forced_decoder_ids: tuple[tuple[int, int | None], ...]  # (position, token id or None)
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    max_length: int
    length_penalty: float
    # (decoder layer, head) pairs whose cross-attention follows the audio (word timestamps); files that name none
    # get openai-whisper's default, every head of the upper half of the decoder layers
    alignment_heads: tuple[tuple[int, int], ...] = ()
    max_initial_timestamp_index: int = 50  # timestamp steps the first timestamp of a window may be at most
    prev_sot_token_id: int | None = None  # <|startofprev|>, which opens a prompt of earlier text


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    dims: WhisperDims
    preprocess: WhisperPreprocess
    generation: WhisperGeneration
    tokens: tuple[str, ...]  # byte-level BPE token strings by id
    first_special_id: int
    special: dict[str, int]
    merges: tuple[str, ...] | None = None  # BPE merge rules in rank order; None in files converted before them


def whisper_config(w: Weights) -> WhisperConfig:
    """Validate a Whisper file's metadata against itself and its tensor table."""
    check_architecture(w, "whisper")
    root = Fields(w.path, w.meta, "")
    dims = whisper_dims(root.section("dims"))
    check_whisper_tensors(w, dims)
    pre = whisper_preprocess(root.section("preprocess"), dims)
    expect_shape(w, pre.mel_filters, (pre.n_fft // 2 + 1, dims.n_mels))
    tok = root.section("tokenizer")
    tok.string("type", ("byte-level-bpe",))
    tokens = tok.strings("tokens", MAX_VOCAB)
    special = tok.id_map("special", dims.n_vocab, {})
    first_special = tok.integer("first_special_id", 0, len(tokens))
    gen = whisper_generation(root.section("generation"), dims)
    return WhisperConfig(dims, pre, gen, tokens, first_special, special, _merges(tok, len(tokens)))


def _merges(f: Fields, n_tokens: int) -> tuple[str, ...] | None:
    """The tokenizer's merge rules, each two non-empty parts joined by one space; None when the file has none."""
    if f.value.get("merges") is None:
        return None
    merges = f.strings("merges", n_tokens)
    for i, m in enumerate(merges):
        parts = m.split(" ")
        if len(m) > MAX_MERGE_CHARS or len(parts) != 2 or not all(parts):
            f.fail(f"is {_short(m)}, not two tokens joined by one space", f"merges[{i}]")
    return merges


def whisper_dims(f: Fields) -> WhisperDims:
    d_model = f.integer("d_model", 1, MAX_WIDTH)
    dims = WhisperDims(
        n_mels=f.integer("n_mels", 1, MAX_WIDTH),
        n_vocab=f.integer("n_vocab", 1, MAX_VOCAB),
        d_model=d_model,
        n_audio_ctx=f.integer("n_audio_ctx", 1, MAX_POSITIONS),
        n_text_ctx=f.integer("n_text_ctx", 1, MAX_POSITIONS),
        encoder_layers=f.integer("encoder_layers", 0, MAX_LAYERS),
        encoder_heads=f.integer("encoder_heads", 1, d_model),
        decoder_layers=f.integer("decoder_layers", 0, MAX_LAYERS),
        decoder_heads=f.integer("decoder_heads", 1, d_model),
        layer_norm_eps=f.number("layer_norm_eps", 0.0, 1.0, 1e-5),
    )
    f.string("activation", ("gelu",), "gelu")  # the only one Whisper checkpoints use, and the one encode() applies
    heads_divide(f, "encoder_heads", dims.encoder_heads, d_model, "d_model")
    heads_divide(f, "decoder_heads", dims.decoder_heads, d_model, "d_model")
    return dims


def check_whisper_tensors(w: Weights, d: WhisperDims) -> None:
    dm = d.d_model
    expect_shape(w, "model.encoder.conv1.weight", (dm, d.n_mels, 3))
    expect_shape(w, "model.encoder.conv2.weight", (dm, dm, 3))
    expect_shape(w, "model.encoder.embed_positions.weight", (d.n_audio_ctx, dm))
    expect_shape(w, "model.decoder.embed_positions.weight", (d.n_text_ctx, dm))
    expect_shape(w, "model.decoder.embed_tokens.weight", (d.n_vocab, dm))
    if "proj_out.weight" in w:
        expect_shape(w, "proj_out.weight", (d.n_vocab, dm))
    for i in range(d.encoder_layers):
        _check_whisper_layer(w, f"model.encoder.layers.{i}.", ("self_attn",), dm)
    for i in range(d.decoder_layers):
        _check_whisper_layer(w, f"model.decoder.layers.{i}.", ("self_attn", "encoder_attn"), dm)
    for stack in ("encoder", "decoder"):
        expect_shape(w, f"model.{stack}.layer_norm.weight", (dm,))
    check_companions(w)


def _check_whisper_layer(w: Weights, p: str, attentions: tuple[str, ...], dm: int) -> None:
    for a in attentions:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            expect_shape(w, f"{p}{a}.{proj}.weight", (dm, dm))
        expect_shape(w, f"{p}{a}_layer_norm.weight", (dm,))
    fc1 = p + "fc1.weight"
    ffn = w.shape(fc1)[0] if fc1 in w else 0
    expect_shape(w, fc1, (ffn, dm))
    expect_shape(w, p + "fc2.weight", (dm, ffn))
    expect_shape(w, p + "final_layer_norm.weight", (dm,))


def whisper_preprocess(f: Fields, d: WhisperDims) -> WhisperPreprocess:
    rate = f.integer("sampling_rate", MIN_SAMPLING_RATE, MAX_SAMPLING_RATE)
    n_fft = f.integer("n_fft", 2, rate)  # an STFT frame of at most one second
    hop = f.integer("hop_length", 1, n_fft)
    n_samples = f.integer("n_samples", 1, MAX_WINDOW_S * rate)
    if n_samples // hop != 2 * d.n_audio_ctx:  # the stride-2 conv halves the mel frames into encoder positions
        f.fail(f"is {n_samples}: at hop_length {hop} it does not fill {d.n_audio_ctx} encoder positions", "n_samples")
    if n_samples <= n_fft // 2:
        f.fail(f"is {n_samples}, too short for a {n_fft}-point STFT", "n_samples")
    if "chunk_length" in f.value and f.integer("chunk_length", 1, MAX_WINDOW_S) * rate != n_samples:
        f.fail(f"does not match {n_samples} samples at {rate} Hz", "chunk_length")
    if "n_frames" in f.value and f.integer("n_frames", 1, MAX_WINDOW_S * rate) != n_samples // hop:
        f.fail(f"does not match {n_samples} samples at hop_length {hop}", "n_frames")
    return WhisperPreprocess(
        sampling_rate=rate,
        n_fft=n_fft,
        hop_length=hop,
        n_samples=n_samples,
        padding_value=f.number("padding_value", -1e30, 1e30, 0.0),
        mel_filters=f.string("mel_filters"),
    )


def whisper_generation(f: Fields, d: WhisperDims) -> WhisperGeneration:
    v = d.n_vocab
    gen = WhisperGeneration(
        decoder_start_token_id=f.integer("decoder_start_token_id", 0, v - 1),
        eos_token_id=f.integer("eos_token_id", 0, v - 1),
        no_timestamps_token_id=f.integer("no_timestamps_token_id", 0, v - 1),
        is_multilingual=f.boolean("is_multilingual", False),
        lang_to_id=f.id_map("lang_to_id", v, {}),
        task_to_id=f.id_map("task_to_id", v, {}),
        languages=_languages(Fields(f.path, f.value.get("languages", {}), f.field("languages"))),
        forced_decoder_ids=_forced_ids(f, v, d.n_text_ctx),
        suppress_tokens=f.integers("suppress_tokens", 0, v - 1, v, ()),
        begin_suppress_tokens=f.integers("begin_suppress_tokens", 0, v - 1, v, ()),
        max_length=f.integer("max_length", 0, MAX_POSITIONS, d.n_text_ctx),
        length_penalty=f.number("length_penalty", -1e3, 1e3, 1.0),
        alignment_heads=_alignment_heads(f, d),
        max_initial_timestamp_index=f.integer("max_initial_timestamp_index", 0, d.n_audio_ctx, 50),
        prev_sot_token_id=_optional_id(f, "prev_sot_token_id", v),
    )
    if gen.is_multilingual:
        for task in TASKS:
            if task not in gen.task_to_id:
                f.fail(f"lacks {task!r}, which a multilingual model (is_multilingual true) needs", "task_to_id")
        if not gen.lang_to_id:
            f.fail("is empty, but is_multilingual is true", "lang_to_id")
    return gen


def _alignment_heads(f: Fields, d: WhisperDims) -> tuple[tuple[int, int], ...]:
    pairs = f._sequence("alignment_heads", f.value.get("alignment_heads") or [], d.decoder_layers * d.decoder_heads)
    out = []
    for i, pair in enumerate(pairs):
        key = f"alignment_heads[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            f.fail(f"is {_short(pair)}, not a [layer, head] pair", key)
        out.append(
            (
                _integer(f, key + "[0]", pair[0], 0, d.decoder_layers - 1),
                _integer(f, key + "[1]", pair[1], 0, d.decoder_heads - 1),
            )
        )
    if out:
        return tuple(out)
    return tuple(
        (layer, head) for layer in range(d.decoder_layers // 2, d.decoder_layers) for head in range(d.decoder_heads)
    )


def _optional_id(f: Fields, key: str, n_vocab: int) -> int | None:
    """A token id, or None when absent or negative (the converter writes -1 for a token the tokenizer lacks)."""
    v = f.value.get(key)
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v < 0):
        return None
    return f.integer(key, 0, n_vocab - 1)


def _languages(f: Fields) -> dict[str, str]:
    """Language code -> English name (for language="german")."""
    for code in f.value:
        if not isinstance(code, str):
            f.fail(f"has key {_short(code)}, not a string")
    return {code: f.string(code) for code in f.value}


def _forced_ids(f: Fields, n_vocab: int, n_text_ctx: int) -> tuple[tuple[int, int | None], ...]:
    pairs = f._sequence("forced_decoder_ids", f.value.get("forced_decoder_ids") or [], n_text_ctx)
    out: list[tuple[int, int | None]] = []
    for i, pair in enumerate(pairs):
        key = f"forced_decoder_ids[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            f.fail(f"is {_short(pair)}, not a [position, token id] pair", key)
        pos = _integer(f, key + "[0]", pair[0], 1, n_text_ctx)
        out.append((pos, None if pair[1] is None else _integer(f, key + "[1]", pair[1], 0, n_vocab - 1)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- Wav2Vec2


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Dims:
    prefix: str  # base-model prefix of the state_dict names: "wav2vec2" | "hubert" | "data2vec_audio"
    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool
    feat_extract_norm: str  # "group": GroupNorm on conv layer 0 only; "layer": LayerNorm after every conv layer
    feat_extract_activation: str
    feat_proj_layer_norm: bool
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    do_stable_layer_norm: bool  # pre-norm layers with a final LayerNorm (large-lv60) vs post-norm (base)
    pos_conv_kernel: int
    pos_conv_groups: int
    pos_conv_stack: bool  # Data2VecAudio: `pos_conv_layers` convs each + non-affine LayerNorm + activation
    pos_conv_layers: int
    pos_conv_batch_norm: bool  # HuBERT conv_pos_batch_norm: BatchNorm1d before the (not weight-normed) conv
    batch_norm_eps: float
    vocab_size: int

    @classmethod
    def from_meta(cls, d: Any, path: str | None = None) -> Wav2Vec2Dims:
        return wav2vec2_dims(Fields(path, d, "dims"))

    @property
    def total_stride(self) -> int:
        """Audio samples per encoder frame (320 for every released model)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Audio samples one encoder frame sees (400 for every released model)."""
        field, step = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field += (k - 1) * step
            step *= s
        return field


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Preprocess:
    sampling_rate: int  # Hz
    do_normalize: bool
    return_attention_mask: bool
    padding_value: float


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    dims: Wav2Vec2Dims
    preprocess: Wav2Vec2Preprocess
    tokenizer: dict[str, Any]  # checked CTC vocabulary fields (runtime.tokenizer.CTCDecoder reads them)


def wav2vec2_config(w: Weights, architecture: str, default_rate: int) -> Wav2Vec2Config:
    """Validate a Wav2Vec2-CTC file's metadata against itself and its tensor table."""
    check_architecture(w, architecture)
    root = Fields(w.path, w.meta, "")
    dims = wav2vec2_dims(root.section("dims"))
    check_wav2vec2_tensors(w, dims)
    pre = Fields(w.path, w.meta.get("preprocess", {}), "preprocess")
    preprocess = Wav2Vec2Preprocess(
        sampling_rate=pre.integer("sampling_rate", MIN_SAMPLING_RATE, MAX_SAMPLING_RATE, default_rate),
        do_normalize=pre.boolean("do_normalize", True),
        return_attention_mask=pre.boolean("return_attention_mask", False),
        padding_value=pre.number("padding_value", -1e30, 1e30, 0.0),
    )
    return Wav2Vec2Config(dims, preprocess, ctc_vocabulary(root.section("tokenizer"), dims.vocab_size))


def ctc_vocabulary(f: Fields, vocab_size: int) -> dict[str, Any]:
    vocab = f.strings("vocab", MAX_VOCAB)
    if len(vocab) != vocab_size:
        f.fail(f"has {len(vocab)} tokens, the dims say vocab_size {vocab_size}", "vocab")
    return {
        "vocab": list(vocab),
        "pad_token": f.string("pad_token"),
        "word_delimiter_token": f.optional_string("word_delimiter_token"),
        "replace_word_delimiter_char": f.string("replace_word_delimiter_char", default=" "),
        "do_lower_case": f.boolean("do_lower_case", False),
        "clean_up_tokenization_spaces": f.boolean("clean_up_tokenization_spaces", False),
        "unk_token": f.string("unk_token", default="<unk>"),
    }


def wav2vec2_dims(f: Fields) -> Wav2Vec2Dims:
    n_conv = len(f._sequence("conv_dim", f._get("conv_dim", _MISSING), MAX_CONV_LAYERS))
    if not n_conv:
        f.fail("is empty: the feature encoder needs at least one convolution", "conv_dim")
    hidden = f.integer("hidden_size", 1, MAX_WIDTH)
    dims = Wav2Vec2Dims(
        prefix=f.string("prefix", WAV2VEC2_PREFIXES),
        conv_dim=f.integers("conv_dim", 1, MAX_WIDTH, MAX_CONV_LAYERS),
        conv_kernel=f.integers("conv_kernel", 1, MAX_KERNEL, MAX_CONV_LAYERS),
        conv_stride=f.integers("conv_stride", 1, MAX_KERNEL, MAX_CONV_LAYERS),
        conv_bias=f.boolean("conv_bias"),
        feat_extract_norm=f.string("feat_extract_norm", ("group", "layer")),
        feat_extract_activation=f.string("feat_extract_activation", tuple(ACTIVATIONS)),
        feat_proj_layer_norm=f.boolean("feat_proj_layer_norm"),
        hidden_size=hidden,
        num_hidden_layers=f.integer("num_hidden_layers", 0, MAX_LAYERS),
        num_attention_heads=f.integer("num_attention_heads", 1, hidden),
        intermediate_size=f.integer("intermediate_size", 1, MAX_WIDTH),
        hidden_act=f.string("hidden_act", tuple(ACTIVATIONS)),
        layer_norm_eps=f.number("layer_norm_eps", 0.0, 1.0),
        do_stable_layer_norm=f.boolean("do_stable_layer_norm"),
        pos_conv_kernel=f.integer("pos_conv_kernel", 1, MAX_KERNEL),
        pos_conv_groups=f.integer("pos_conv_groups", 1, hidden),
        pos_conv_stack=f.boolean("pos_conv_stack"),
        pos_conv_layers=f.integer("pos_conv_layers", 1, MAX_LAYERS),
        pos_conv_batch_norm=f.boolean("pos_conv_batch_norm"),
        batch_norm_eps=f.number("batch_norm_eps", 0.0, 1.0),
        vocab_size=f.integer("vocab_size", 1, MAX_VOCAB),
    )
    if not len(dims.conv_kernel) == len(dims.conv_stride) == n_conv:
        f.fail(f"have {n_conv}, {len(dims.conv_kernel)}, {len(dims.conv_stride)} entries", "conv_dim/kernel/stride")
    if dims.total_stride > MAX_SAMPLING_RATE:
        f.fail(f"multiply to {dims.total_stride} samples per frame", "conv_stride")
    heads_divide(f, "num_attention_heads", dims.num_attention_heads, hidden, "hidden_size")
    heads_divide(f, "pos_conv_groups", dims.pos_conv_groups, hidden, "hidden_size")
    return dims


def check_wav2vec2_tensors(w: Weights, d: Wav2Vec2Dims) -> None:
    p, dm = d.prefix, d.hidden_size
    c_in = 1
    for i, (c, k) in enumerate(zip(d.conv_dim, d.conv_kernel)):
        conv = f"{p}.feature_extractor.conv_layers.{i}"
        expect_shape(w, conv + ".conv.weight", (c, c_in, k))
        if d.feat_extract_norm == "layer" or i == 0:  # "group": GroupNorm on layer 0 only
            expect_shape(w, conv + ".layer_norm.weight", (c,))
        c_in = c
    expect_shape(w, f"{p}.feature_projection.projection.weight", (dm, d.conv_dim[-1]))
    if d.feat_proj_layer_norm:
        expect_shape(w, f"{p}.feature_projection.layer_norm.weight", (d.conv_dim[-1],))
    pos = f"{p}.encoder.pos_conv_embed"
    convs = [f"{pos}.layers.{i}.conv" for i in range(d.pos_conv_layers)] if d.pos_conv_stack else [f"{pos}.conv"]
    for conv in convs:
        expect_shape(w, conv + ".weight", (dm, dm // d.pos_conv_groups, d.pos_conv_kernel))
    if d.pos_conv_batch_norm:
        expect_shape(w, f"{pos}.batch_norm.weight", (dm,))
    expect_shape(w, f"{p}.encoder.layer_norm.weight", (dm,))
    for i in range(d.num_hidden_layers):
        layer = f"{p}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            expect_shape(w, f"{layer}.attention.{proj}.weight", (dm, dm))
        expect_shape(w, f"{layer}.feed_forward.intermediate_dense.weight", (d.intermediate_size, dm))
        expect_shape(w, f"{layer}.feed_forward.output_dense.weight", (dm, d.intermediate_size))
        for norm in ("layer_norm", "final_layer_norm"):
            expect_shape(w, f"{layer}.{norm}.weight", (dm,))
    expect_shape(w, "lm_head.weight", (d.vocab_size, dm))
    check_companions(w)
