"""Compute accounting: multiply-accumulates (MACs), bit-operations, weight bytes read and activation memory.

Two ways to the same numbers. The formulas below (`whisper_*`, `wav2vec2_*`) derive the MACs of every matrix
product from the model's dims and its tensor table; `count_macs()` counts them from the products the runtime
actually runs: the runtime's ops call `record(part, macs, weight_bits, act_bits)` once per product, which costs
one list check while no count is open. A test runs small random models of both architectures under count_macs()
and requires the formulas to give exactly the counted numbers.

MACs are split by part: the convolutional front end (Whisper's two convs; Wav2Vec2's feature encoder, feature
projection and positional convolution), the attention projections (q, k, v, out), the attention score products
(q k^T and scores x v), the MLP, and the output projection (vocabulary logits). Bit-operations of a product are
its MACs x weight bits x activation bits: stored code bits for a quantized weight, 32 for a float one (the runtime
computes in float32 whatever the storage), the activation spec's bits for a quantized input, 32 otherwise; the
attention scores are float x float (32 x 32).

Not counted: Whisper's log-mel features (runtime/mel.py: an FFT and the mel filterbank product). They are
feature extraction, fixed by the preprocessing config whatever the model's size or quantization, computed before
the model (Wav2Vec2 has no counterpart: it takes samples), and small beside the encoder: the filterbank is
n_mels x 201 MACs per 10-ms frame (80 x 201 x 100 = 1.6 M per second, under 0.1 % of tiny.en's encoder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

FRONT_END = "front_end"
ATTENTION_PROJECTIONS = "attention_projections"
ATTENTION_SCORES = "attention_scores"
MLP = "mlp"
OUTPUT_PROJECTION = "output_projection"
PARTS = (FRONT_END, ATTENTION_PROJECTIONS, ATTENTION_SCORES, MLP, OUTPUT_PROJECTION)
FLOAT_BITS = 32  # the runtime's arithmetic on float operands (float32)
FLOAT_BYTES = 4  # bytes per float32 activation
WHISPER_WINDOW_S = 30.0  # seconds of audio per Whisper encoder window

# checkpoint-name component -> part, for both architectures (first match along the name wins)
_PART_BY_COMPONENT = {
    "conv1": FRONT_END,
    "conv2": FRONT_END,
    "feature_extractor": FRONT_END,
    "feature_projection": FRONT_END,
    "pos_conv_embed": FRONT_END,
    "q_proj": ATTENTION_PROJECTIONS,
    "k_proj": ATTENTION_PROJECTIONS,
    "v_proj": ATTENTION_PROJECTIONS,
    "out_proj": ATTENTION_PROJECTIONS,
    "fc1": MLP,
    "fc2": MLP,
    "feed_forward": MLP,
    "proj_out": OUTPUT_PROJECTION,
    "embed_tokens": OUTPUT_PROJECTION,
    "lm_head": OUTPUT_PROJECTION,
}


@dataclasses.dataclass
class Counts:
    """MACs and bit-operations per part."""

    macs: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    bitops: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PARTS, 0))

    def add(self, part: str, macs: int, weight_bits: int = FLOAT_BITS, act_bits: int = FLOAT_BITS) -> None:
        if part not in self.macs:
            raise ValueError(f"unknown part {part!r} (one of {', '.join(PARTS)})")
        self.macs[part] += int(macs)
        self.bitops[part] += int(macs) * int(weight_bits) * int(act_bits)

    def __iadd__(self, other: Counts) -> Counts:
        for part in PARTS:
            self.macs[part] += other.macs[part]
            self.bitops[part] += other.bitops[part]
        return self

    def __add__(self, other: Counts) -> Counts:
        out = Counts()
        out += self
        out += other
        return out

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def total_bitops(self) -> int:
        return sum(self.bitops.values())

    def as_dict(self) -> dict[str, Any]:
        return {"macs": dict(self.macs), "bitops": dict(self.bitops), "total_macs": self.total_macs}


# -- instrumentation ------------------------------------------------------------------------------------------

_open_counts: list[Counts] = []  # the counts of the open count_macs() blocks, innermost last


def counting() -> bool:
    """Whether a count_macs() block is open (callers skip preparing a record's arguments otherwise)."""
    return bool(_open_counts)


def record(part: str, macs: int, weight_bits: int = FLOAT_BITS, act_bits: int = FLOAT_BITS) -> None:
    """Called by the runtime's ops once per matrix product; adds to every open count_macs() block."""
    if not _open_counts:
        return
    for counts in _open_counts:
        counts.add(part, macs, weight_bits, act_bits)


@contextlib.contextmanager
def count_macs() -> Iterator[Counts]:
    """`with count_macs() as c: model.transcribe(...)`: c holds the MACs (and bit-operations) of every product
    recorded inside the block. Blocks nest; each sees everything recorded while it is open."""
    counts = Counts()
    _open_counts.append(counts)
    try:
        yield counts
    finally:
        _open_counts.remove(counts)


def part_of(name: str) -> str:
    """The part a weight belongs to, from its checkpoint name ("model.decoder.layers.0.fc1.weight" -> MLP)."""
    for component in name.split("."):
        part = _PART_BY_COMPONENT.get(component)
        if part is not None:
            return part
    raise ValueError(f"no compute part is known for tensor {name!r}")


# -- the tensor table -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorCost:
    """What the accounting needs of one stored tensor."""

    shape: tuple[int, ...]
    nbytes: int  # stored bytes: what reading it costs
    weight_bits: int = FLOAT_BITS  # code bits when quantized
    act_bits: int = FLOAT_BITS  # activation spec bits when its input is quantized

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Table = Mapping[str, TensorCost]


def table_from_file(wq) -> dict[str, TensorCost]:
    """The table of an open WqFile (formats.reader): stored sizes, code bits, activation bits."""
    return {
        name: TensorCost(
            info.shape,
            info.nbytes,
            info.bits if info.quantized else FLOAT_BITS,
            info.activation.bits if info.activation is not None else FLOAT_BITS,
        )
        for name, info in wq.tensors.items()
    }


def table_from_arrays(arrays: Mapping[str, Any]) -> dict[str, TensorCost]:
    """The table of float arrays (a model held in memory): float32 compute, their own byte sizes."""
    return {name: TensorCost(tuple(a.shape), int(a.nbytes)) for name, a in arrays.items()}


def _linear(counts: Counts, table: Table, name: str, rows: int) -> None:
    """rows x (out x in) MACs of the product with weight `name` (any rank: its 2-D view), at its bits."""
    t = table[name]
    counts.add(part_of(name), rows * t.numel, t.weight_bits, t.act_bits)


def _projections(counts: Counts, table: Table, attention: str, rows: int) -> None:
    """q, k, v and out projections of the attention module `attention` over the same rows."""
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _linear(counts, table, f"{attention}.{proj}.weight", rows)


# -- Whisper ---------------------------------------------------------------------------------------------------


def _whisper_layers(dims: Mapping[str, Any], side: str) -> list[str]:
    return [f"model.{side}.layers.{i}." for i in range(int(dims[f"{side}_layers"]))]


def whisper_encoder(dims: Mapping[str, Any], table: Table) -> Counts:
    """One 30-s window through the encoder: conv1 (stride 1, 2 * n_audio_ctx frames), conv2 (stride 2),
    then per layer q/k/v/out over n_audio_ctx rows, the score products (2 x T^2 x d_model), fc1 and fc2."""
    c, t, d = Counts(), int(dims["n_audio_ctx"]), int(dims["d_model"])
    _linear(c, table, "model.encoder.conv1.weight", 2 * t)
    _linear(c, table, "model.encoder.conv2.weight", t)
    for p in _whisper_layers(dims, "encoder"):
        _projections(c, table, f"{p}self_attn", t)
        c.add(ATTENTION_SCORES, 2 * t * t * d)
        _linear(c, table, f"{p}fc1.weight", t)
        _linear(c, table, f"{p}fc2.weight", t)
    return c


def whisper_cross_kv(dims: Mapping[str, Any], table: Table) -> Counts:
    """Cross-attention keys and values of every decoder layer, once per window."""
    c, t = Counts(), int(dims["n_audio_ctx"])
    for p in _whisper_layers(dims, "decoder"):
        _linear(c, table, f"{p}encoder_attn.k_proj.weight", t)
        _linear(c, table, f"{p}encoder_attn.v_proj.weight", t)
    return c


def whisper_output_name(table: Table) -> str:
    return "proj_out.weight" if "proj_out.weight" in table else "model.decoder.embed_tokens.weight"


def whisper_decoder_step(
    dims: Mapping[str, Any], table: Table, n_new: int = 1, offset: int = 0, batch: int = 1
) -> Counts:
    """One decoder call on `n_new` tokens of `batch` hypotheses after `offset` cached ones: projections over
    batch x n_new rows; self-attention scores of every new query against all offset + n_new keys (the causal mask
    is added to full score rows), cross-attention scores against n_audio_ctx keys; logits for the last position
    of each hypothesis only."""
    c, d, t = Counts(), int(dims["d_model"]), int(dims["n_audio_ctx"])
    rows, keys = batch * n_new, offset + n_new
    for p in _whisper_layers(dims, "decoder"):
        _projections(c, table, f"{p}self_attn", rows)
        c.add(ATTENTION_SCORES, 2 * rows * keys * d)
        _linear(c, table, f"{p}encoder_attn.q_proj.weight", rows)
        _linear(c, table, f"{p}encoder_attn.out_proj.weight", rows)
        c.add(ATTENTION_SCORES, 2 * rows * t * d)
        _linear(c, table, f"{p}fc1.weight", rows)
        _linear(c, table, f"{p}fc2.weight", rows)
    _linear(c, table, whisper_output_name(table), batch)
    return c


def whisper_greedy_window(
    dims: Mapping[str, Any], table: Table, prompt_len: int, generated: int, detect_language: bool = False
) -> Counts:
    """One window decoded greedily: encoder, cross K/V, (a language-detection step), the prompt in one step,
    then one step per generated token after the first (`generated` counts the end-of-text token if emitted)."""
    c = whisper_encoder(dims, table) + whisper_cross_kv(dims, table)
    if detect_language:
        c += whisper_decoder_step(dims, table, 1, 0)
    c += whisper_decoder_step(dims, table, prompt_len, 0)
    for i in range(max(0, generated - 1)):
        c += whisper_decoder_step(dims, table, 1, prompt_len + i)
    return c


def whisper_weight_bytes(table: Table, batch: int = 1) -> dict[str, int]:
    """Stored weight bytes read per window (encoder and the cross-attention K/V projections) and per decoded
    token (the rest of the decoder, the whole output projection, `batch` rows of the token and position tables)."""
    per_window = per_token = 0
    for name, t in table.items():
        if name.startswith("model.encoder.") or ".encoder_attn.k_proj." in name or ".encoder_attn.v_proj." in name:
            per_window += t.nbytes
        elif name.startswith("model.decoder.") or name == "proj_out.weight":
            looked_up = name in ("model.decoder.embed_positions.weight",) or (
                name == "model.decoder.embed_tokens.weight" and whisper_output_name(table) != name
            )
            per_token += -(-t.nbytes * batch // t.shape[0]) if looked_up else t.nbytes
    return {"per_window": per_window, "per_token": per_token}


def whisper_peak_activation_bytes(dims: Mapping[str, Any], table: Table) -> int:
    """float32 bytes the largest encoder operation holds at once for one 30-s window: the residual stream plus the
    operation's inputs, temporaries and output (conv: input, im2col copy, output; attention: the layer-normed
    input, q, k, v, one head's scores and the merged heads; MLP: the layer-normed input and fc1's output before and
    after GELU). The decoder's per-token activations are far smaller."""
    t, d, mels = int(dims["n_audio_ctx"]), int(dims["d_model"]), int(dims["n_mels"])
    ff = table["model.encoder.layers.0.fc1.weight"].shape[0] if int(dims["encoder_layers"]) else 0
    conv1 = mels * 2 * t + 2 * t * 3 * mels + d * 2 * t
    conv2 = d * 2 * t + t * 3 * d + d * t
    attention = t * d * 6 + t * t
    mlp = t * d * 2 + 2 * t * ff
    return FLOAT_BYTES * max(conv1, conv2, attention, mlp)


# -- Wav2Vec2 --------------------------------------------------------------------------------------------------


def _wav2vec2_dims(dims: Mapping[str, Any]):
    from .wav2vec2 import Wav2Vec2Dims  # not at import time: the runtime's ops import this module

    return Wav2Vec2Dims.from_meta(dict(dims))


def wav2vec2_forward(dims: Mapping[str, Any], table: Table, n_samples: int, chunk_frames: int | None = None) -> Counts:
    """One utterance of `n_samples` (unpadded, unmasked, not windowed) through a Wav2Vec2-style CTC model, counted
    as the runtime computes it: the feature encoder in chunks of `chunk_frames` output frames that overlap by the
    receptive field (conv layers after the first recompute the overlap), for "group" models conv layer 0 once more
    for its statistics, then the feature projection, positional conv(s), the layers and the CTC head over T frames."""
    from .wav2vec2 import FEATURE_CHUNK_FRAMES, conv_output_length

    d = _wav2vec2_dims(dims)
    chunk_frames = FEATURE_CHUNK_FRAMES if chunk_frames is None else chunk_frames
    c, p = Counts(), d.prefix
    convs = [f"{p}.feature_extractor.conv_layers.{i}.conv.weight" for i in range(len(d.conv_kernel))]
    total = int(conv_output_length(n_samples, d.conv_kernel, d.conv_stride))
    if d.feat_extract_norm == "group":
        _linear(c, table, convs[0], int(conv_output_length(n_samples, d.conv_kernel[:1], d.conv_stride[:1])))
    for a in range(0, total, chunk_frames):
        b = min(a + chunk_frames, total)
        n = (b - 1 - a) * d.total_stride + d.receptive_field  # the chunk's samples
        for i, name in enumerate(convs):
            _linear(c, table, name, int(conv_output_length(n, d.conv_kernel[: i + 1], d.conv_stride[: i + 1])))
    _linear(c, table, f"{p}.feature_projection.projection.weight", total)
    for name in (n for n in table if n.startswith(f"{p}.encoder.pos_conv_embed.") and n.endswith("conv.weight")):
        _linear(c, table, name, total)
    for i in range(d.num_hidden_layers):
        lp = f"{p}.encoder.layers.{i}."
        _projections(c, table, f"{lp}attention", total)
        c.add(ATTENTION_SCORES, 2 * total * total * d.hidden_size)
        _linear(c, table, f"{lp}feed_forward.intermediate_dense.weight", total)
        _linear(c, table, f"{lp}feed_forward.output_dense.weight", total)
    _linear(c, table, "lm_head.weight", total)
    return c


def wav2vec2_peak_activation_bytes(dims: Mapping[str, Any], n_samples: int, chunk_frames: int | None = None) -> int:
    """float32 bytes the largest operation holds at once for one utterance of `n_samples`: a feature-encoder chunk
    (its samples, then per conv layer the input, the im2col copy and the output), or an attention query block
    (the input rows, q, k, v, the scores of all heads for the block, capped as the runtime caps them, and the
    output), or a feed-forward row block (input, the intermediate before and after the activation, output)."""
    from .ops import ATTENTION_SCORE_BYTES
    from .wav2vec2 import FEATURE_CHUNK_FRAMES, ROW_BLOCK, conv_output_length

    d = _wav2vec2_dims(dims)
    chunk_frames = FEATURE_CHUNK_FRAMES if chunk_frames is None else chunk_frames
    total = int(conv_output_length(n_samples, d.conv_kernel, d.conv_stride))
    n = (min(chunk_frames, total) - 1) * d.total_stride + d.receptive_field
    conv, channels, length = 0, 1, n
    for c_out, k, s in zip(d.conv_dim, d.conv_kernel, d.conv_stride):
        out = (length - k) // s + 1
        conv = max(conv, channels * length + channels * k * out + c_out * out)
        channels, length = c_out, out
    h, heads = d.hidden_size, d.num_attention_heads
    block = min(total, max(1, ATTENTION_SCORE_BYTES // (4 * heads * total)))
    attention = total * h * 4 + heads * block * total + total * h
    rows = min(total, ROW_BLOCK)
    ffn = rows * h * 2 + 2 * rows * d.intermediate_size
    return FLOAT_BYTES * max(conv, attention, ffn)


# -- summary ---------------------------------------------------------------------------------------------------

WAV2VEC2_SAMPLE_RATE = 16_000  # Hz; the rate every released Wav2Vec2-style model takes


def integer_products(table: Table) -> list[str]:
    """The weights whose products run on integer codes (quantized, with an activation spec); every other product,
    the attention scores, softmax, norms and activation functions run in float32."""
    return [n for n, t in table.items() if t.weight_bits < FLOAT_BITS and t.act_bits < FLOAT_BITS]


def summary(meta: Mapping[str, Any], table: Table, prompt_len: int = 4) -> dict[str, Any]:
    """What `wavq info --compute` prints: for Whisper the MACs and bit-operations of one 30-s window's encoder and
    cross-attention K/V and of one decoded token (at position `prompt_len`), weight bytes read per window and per
    token, peak activation bytes; for Wav2Vec2 the same per second of a 30-s input. `float_bitops` is what the same
    MACs cost at 32 x 32 bits."""
    dims, arch = meta["dims"], meta.get("architecture")
    if arch == "whisper":
        window = whisper_encoder(dims, table) + whisper_cross_kv(dims, table)
        token = whisper_decoder_step(dims, table, 1, prompt_len)
        out: dict[str, Any] = {
            "per_window": window.as_dict(),
            "per_token": token.as_dict(),
            "window_seconds": WHISPER_WINDOW_S,
            "weight_bytes": whisper_weight_bytes(table),
            "peak_activation_bytes": whisper_peak_activation_bytes(dims, table),
        }
        counted = window + token
    elif arch == "wav2vec2-ctc":
        n = int(WHISPER_WINDOW_S * WAV2VEC2_SAMPLE_RATE)
        counted = wav2vec2_forward(dims, table, n)
        per_second = {k: v // int(WHISPER_WINDOW_S) for k, v in counted.macs.items()}
        out = {
            "per_window": counted.as_dict(),
            "per_second_macs": per_second,
            "window_seconds": WHISPER_WINDOW_S,
            "weight_bytes": {"per_window": sum(t.nbytes for t in table.values())},
            "peak_activation_bytes": wav2vec2_peak_activation_bytes(dims, n),
        }
    else:
        raise ValueError(f"no compute accounting for architecture {arch!r}")
    out["bitops_vs_float"] = counted.total_bitops / (counted.total_macs * FLOAT_BITS * FLOAT_BITS or 1)
    out["integer_products"] = integer_products(table)
    return out
