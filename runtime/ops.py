"""Numpy building blocks shared by the runtime models: every matrix product of Whisper and Wav2Vec2 runs through
`linear`, `attention` or `conv1d` here, so counting or replacing the arithmetic means changing these three.
Each records its multiply-accumulates with compute.record (a no-op unless a compute.count_macs() block is open).

Shapes: T = time, C = channels, D = model width, H = heads, hd = head width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from ..formats.activation import ActivationSpec
from ..formats.codecs import QuantizedTensor, rotate_columns
from . import compute, kernel
from .intlinear import int_linear, packed_int_linear
from .weights import Weights

Activation = Callable[[np.ndarray], np.ndarray]

_INV_SQRT_2 = 1 / math.sqrt(2.0)
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
ATTENTION_SCORE_BYTES = 64 << 20  # float32 attention scores computed at once (all heads, a block of queries)


# ---------------------------------------------------------------------------------------------------- linear


ProductKind = Literal["integer", "packed", "float"]


def product_kind(w: Weights, name: str) -> ProductKind:
    """How the product with the weight `name` runs, decided here only: "integer" when it has an activation spec
    (SPEC.md 5.5: integer codes times integer codes, runtime/intlinear.py), "packed" when the compiled kernel
    multiplies its packed codes (a quantized weight that is not kept, `Weights.packed`), else "float" (x @ W^T on
    float32 weights, whole or by row blocks)."""
    if w.activation(name) is not None:
        return "integer"
    return "float" if w.packed(name) is None else "packed"


@dataclasses.dataclass(frozen=True)
class Linear:
    """One Hugging Face Linear ready to multiply: `weight` is W (out, in), or the stored V = W R when `rotation`
    is set (SPEC.md 5.4), in which case the inputs are rotated instead (x W^T = (x R) V^T). A weight with an
    activation spec (`act`, SPEC.md 5.5) multiplies on the integer path: on its `packed` codes with the compiled
    kernel, else on its unpacked `codes`. With only `packed` set (a quantized weight that is not kept, with the
    compiled kernel) the kernel multiplies the packed codes as floats. Both rotate the inputs themselves; `weight`
    is None on these paths."""

    name: str  # state_dict name of the weight, e.g. "model.decoder.layers.0.fc1.weight"
    weight: np.ndarray | None  # None on the integer and the kernel paths
    bias: np.ndarray | None
    input_scale: np.ndarray | None  # activation-aware quantization's unfolded per-input-channel scale
    rotation: int = 0
    weight_bits: int = compute.FLOAT_BITS  # stored code bits (compute accounting)
    act: ActivationSpec | None = None  # set: the input is quantized and multiplied as integer codes
    codes: QuantizedTensor | None = None  # the stored weight unpacked, for the numpy integer path
    packed: kernel.PackedTensor | None = None  # the stored weight's packed views, for the compiled kernel

    @classmethod
    def load(cls, w: Weights, prefix: str, n_rows: int | None = None, *, bias: bool = True) -> Linear:
        """The Linear `prefix` for products with `n_rows` input rows (None: many, e.g. reused over row blocks).

        A rotated weight stays rotated only when that is cheaper: fewer input rows than weight rows (a decoding
        step) and weights that are not cached (`Weights.uncached_rotation`); otherwise W itself is used.
        """
        name = prefix + ".weight"
        b = w.get(prefix + ".bias") if bias else None
        scale = w.get(prefix + ".input_scale")
        kind = product_kind(w, name)
        if kind == "integer":
            packed = w.packed(name)
            codes = w.codes(name) if packed is None else None
            return cls(name, None, b, scale, 0, w.bits(name), w.activation(name), codes, packed)
        if kind == "packed":
            return cls(name, None, b, scale, weight_bits=w.bits(name), packed=w.packed(name))
        block = w.uncached_rotation(name)
        if block and n_rows is not None and n_rows < w.shape(name)[0]:
            weight = w.stored(name)
        else:
            weight, block = w[name], 0
        return cls(name, weight, b, scale, block, w.bits(name))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return apply_linear(self, x)

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the product."""
        if self.packed is not None:
            return self.packed.rows, self.packed.cols
        if self.codes is not None:
            return self.codes.shape[0], int(np.prod(self.codes.shape[1:]))
        assert self.weight is not None  # one of the three is always set (load)
        return self.weight.shape[0], self.weight.shape[-1]


def apply_linear(layer: Linear, x: np.ndarray) -> np.ndarray:
    """x @ W.T + b: the one place where an input meets a named weight."""
    if layer.input_scale is not None:
        x = x / layer.input_scale
    if compute.counting():
        out_features, in_features = layer.shape
        act_bits = compute.FLOAT_BITS if layer.act is None else layer.act.bits
        macs = (x.size // x.shape[-1]) * out_features * in_features
        compute.record(compute.part_of(layer.name), macs, layer.weight_bits, act_bits)
    if layer.act is not None and layer.packed is not None:  # integer codes x integer codes, compiled (intlinear.py)
        y = packed_int_linear(x, layer.packed, layer.act)
    elif layer.act is not None and layer.codes is not None:  # the same in numpy
        y = int_linear(x, layer.codes, layer.act)
    elif layer.packed is not None:  # the compiled kernel, straight from the packed codes
        y = kernel.matmul(x.reshape(-1, x.shape[-1]), layer.packed).reshape(x.shape[:-1] + (layer.packed.rows,))
    else:
        assert layer.weight is not None
        if layer.rotation:
            x = rotate_columns(x.reshape(-1, x.shape[-1]), layer.rotation).reshape(x.shape)
        y = x @ layer.weight.T
    if layer.bias is not None:
        y += layer.bias
    return y


def linear(w: Weights, prefix: str, x: np.ndarray, *, bias: bool = True, block_bytes: int | None = None) -> np.ndarray:
    """x (..., in) @ W.T + b for the Linear `prefix` (an optional `{prefix}.input_scale` divides the input first).

    `block_bytes`: when a weight is multiplied as float32 (`product_kind` "float") and not kept, dequantize it at
    most this many float32 bytes (a block of output rows) at a time, so a large table (Whisper's output embedding)
    never exists whole; the other paths multiply in one call.
    """
    rows = x.size // x.shape[-1]
    name = prefix + ".weight"
    out_rows = w.shape(name)[0]
    step = out_rows if block_bytes is None else max(1, block_bytes // (4 * int(np.prod(w.shape(name)[1:]))))
    if product_kind(w, name) != "float" or w.keeps(name) or step >= out_rows:
        return apply_linear(Linear.load(w, prefix, rows, bias=bias), x)
    scale = w.get(prefix + ".input_scale")
    b = w.get(prefix + ".bias") if bias else None
    out = np.empty(x.shape[:-1] + (out_rows,), dtype=np.float32)
    for s in range(0, out_rows, step):
        e = min(out_rows, s + step)
        part = Linear(name, w.rows(name, s, e), None if b is None else b[s:e], scale, weight_bits=w.bits(name))
        out[..., s:e] = apply_linear(part, x)
    return out


# ---------------------------------------------------------------------------------------------------- norms


def norm(x: np.ndarray, eps: float) -> np.ndarray:
    """Normalise over the last axis without affine parameters (a fresh array). The sums are np.mean's (the same
    reduction, then a division by the count) without its Python wrapper, which costs more than the arithmetic on
    a decoding step's single rows."""
    n = x.shape[-1]
    mean = np.add.reduce(x, axis=-1, keepdims=True)
    mean /= n
    xc = x - mean
    var = np.add.reduce(xc * xc, axis=-1, keepdims=True)
    var /= n
    var += np.float32(eps)
    xc /= np.sqrt(var, out=var)
    return xc


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """torch.nn.LayerNorm over the last axis."""
    y = norm(x, eps)
    y *= weight
    y += bias
    return y


def group_norm(
    x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """torch.nn.GroupNorm with one group per channel, in place on x (C, T), given each channel's mean and
    1 / sqrt(var + eps) over the whole row (computed by the caller, possibly over time chunks)."""
    x -= mean[:, None]
    x *= (inv_std * weight)[:, None]
    x += bias[:, None]
    return x


# ---------------------------------------------------------------------------------------------------- activations


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def log_softmax(x: np.ndarray) -> np.ndarray:
    y = x - x.max(axis=-1, keepdims=True)
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


# Abramowitz & Stegun 7.1.26: erfc(z) ~ t * P(t) * exp(-z^2), t = 1 / (1 + p z), |error| <= 1.5e-7 for z >= 0
_AS_P = 0.3275911
_AS_COEF = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_HALF_AS_COEF = tuple(0.5 * c for c in _AS_COEF)  # P(t) / 2: halving is exact, so the sum gives erfc / 2 directly
_AS_P_OVER_SQRT_2 = _AS_P * _INV_SQRT_2  # t from |x| without forming |x| / sqrt 2
_GELU_IS_RELU = 1e3  # |x| beyond which erfc(|x| / sqrt 2) underflows float64: GELU(x) = max(x, 0) exactly
_ELEMENTWISE_BLOCK = 1 << 16  # elements per step: the temporaries stay in cache (~20x faster than whole arrays)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as torch's default (max abs deviation ~1.5e-7 * |x|), float32 in and out.

    Evaluated block by block so the temporaries stay in cache: the first conv layers produce tens of millions of
    activations per utterance. Each block is computed in float64: a float32 erfc carries a small systematic bias
    (~1e-8 per activation) that the following fc2 sums accumulate to ~4e-4 in a Whisper encoder, 6x torch's own
    float32 error; float64 blocks remove the rounding part of it. What remains is the polynomial's own error
    (mean -1.5e-8 on N(0, 2^2) inputs, torch float32 ~1e-10; tests/test_ops_gelu.py bounds it).
    The passes are few: with h = erfc(|x| / sqrt 2) / 2,
    x Phi(x) = max(x, 0) - |x| h for either sign (no select), and exp(-x^2 / 2) needs no |x| / sqrt 2.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    a0, a1, a2, a3, a4 = _HALF_AS_COEF
    for a in range(0, flat.size, _ELEMENTWISE_BLOCK):
        v = flat[a : a + _ELEMENTWISE_BLOCK].astype(np.float64)
        z = np.abs(v)
        np.minimum(z, _GELU_IS_RELU, out=z)  # finite, so that |x| h is 0, not inf * 0, at x = inf
        t = z * _AS_P_OVER_SQRT_2
        t += 1
        np.reciprocal(t, out=t)
        h = a4 * t
        for c in (a3, a2, a1, a0):
            h += c
            h *= t
        e = v * v
        e *= -0.5
        np.exp(e, out=e)
        h *= e  # erfc(|v| / sqrt 2) / 2
        h *= z
        np.maximum(v, 0, out=v)
        v -= h
        flat_out[a : a + _ELEMENTWISE_BLOCK] = v
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# transformers' ACT2FN names the runtime implements
ACTIVATIONS: dict[str, Activation] = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "swish": silu,
}


def activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not implemented (supported: {', '.join(ACTIVATIONS)})") from None


# ---------------------------------------------------------------------------------------------------- convolution


def conv1d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    weight_bits: int = compute.FLOAT_BITS,
) -> np.ndarray:
    """torch conv1d, (C_in, N) -> (C_out, T) with T = (N + 2 padding - K) // stride + 1, as one im2col matmul per
    group (an einsum is ~15x slower on Wav2Vec2's 1-channel first layer, which sees every sample). Every
    convolution is part of the front end; `weight_bits` are the stored bits of `weight` (compute accounting)."""
    if padding:
        x = np.pad(x, ((0, 0), (padding, padding)))
    _, n = x.shape
    c_out, c_per_group, k = weight.shape
    t_out = (n - k) // stride + 1
    out_per_group = c_out // groups
    out = np.empty((c_out, max(t_out, 0)), dtype=np.float32)
    if t_out <= 0:
        return out
    compute.record(compute.FRONT_END, t_out * weight.size, weight_bits)
    for g in range(groups):
        xg = x[g * c_per_group : (g + 1) * c_per_group]
        cols = np.lib.stride_tricks.as_strided(  # (Cg, K, T) view -> (Cg*K, T) copy
            xg,
            shape=(c_per_group, k, t_out),
            strides=(xg.strides[0], xg.strides[1], xg.strides[1] * stride),
            writeable=False,
        ).reshape(c_per_group * k, t_out)
        wg = weight[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, c_per_group * k)
        np.matmul(wg, cols, out=out[g * out_per_group : (g + 1) * out_per_group])
    if bias is not None:
        out += bias[:, None]
    return out


# ---------------------------------------------------------------------------------------------------- attention


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """softmax(q k^T + mask) v for q (..., Tq, hd) (already scaled), k and v (..., Tk, hd) -> (..., Tq, hd).

    `mask` is added to the scores and broadcasts to (..., Tq, Tk) (-inf hides a key). Query rows are processed in
    blocks so the float32 scores of one block stay within ATTENTION_SCORE_BYTES. Operands are multiplied where
    they lie when BLAS can read them so (`_blas_ready`): a k that is the transposed view of a (..., hd, Tk) array
    with unit stride along Tk (`WhisperModel.cross_kv`, the decoder's key cache) is never copied, nor are the
    head views `split_heads` makes of a projection's output.
    """
    kt = _blas_ready(np.swapaxes(k, -1, -2))  # (..., hd, Tk)
    v = _blas_ready(v)
    tq, tk = q.shape[-2], kt.shape[-1]
    stack = math.prod(np.broadcast_shapes(q.shape[:-2], kt.shape[:-2]))
    compute.record(compute.ATTENTION_SCORES, 2 * stack * tq * tk * q.shape[-1])  # q k^T and p v, float x float
    block = max(1, ATTENTION_SCORE_BYTES // (4 * stack * tk))
    if block >= tq:
        return _attend(q, kt, v, mask)
    out = np.empty(np.broadcast_shapes(q.shape[:-1], v.shape[:-2] + (tq,)) + (v.shape[-1],), dtype=np.float32)
    for s in range(0, tq, block):
        rows = slice(s, s + block)
        m = None if mask is None else mask[..., rows, :] if mask.shape[-2] > 1 else mask
        out[..., rows, :] = _attend(q[..., rows, :], kt, v, m)
    return out


def _attend(q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """softmax(q kt + mask) v with the softmax's division moved after the product: (e v) / sum(e) divides Tq x hd
    values instead of Tq x Tk scores (Whisper's encoder: 64 instead of 1500 per query)."""
    scores = np.matmul(_blas_ready(q), kt)  # (..., Tq, Tk)
    if mask is not None:
        scores += mask
    scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    out = np.matmul(scores, v)
    out /= np.add.reduce(scores, axis=-1, keepdims=True)
    return out


def _blas_ready(a: np.ndarray) -> np.ndarray:
    """`a` itself when numpy's matmul hands its matrices to BLAS as they lie (unit stride along the last axis, rows
    at least a row apart: numpy's own test), else a C-contiguous copy (numpy would fall back to a slow loop)."""
    row, col = a.strides[-2:]
    if col == a.itemsize and row % a.itemsize == 0 and row >= a.shape[-1] * a.itemsize:
        return a
    return np.ascontiguousarray(a)


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(..., T, D) -> (..., H, T, D / H), a view."""
    *lead, t, dm = x.shape
    return x.reshape(*lead, t, heads, dm // heads).swapaxes(-2, -3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(..., H, T, hd) -> (..., T, H * hd)."""
    *lead, h, t, hd = x.shape
    return x.swapaxes(-3, -2).reshape(*lead, t, h * hd)
