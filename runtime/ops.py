"""Numpy building blocks shared by the runtime models. Shapes: T = time, C = channels, D = model width."""

from __future__ import annotations

import math

import numpy as np

from ..formats.codecs import rotate_columns
from .weights import Weights

_INV_SQRT_2 = 1 / math.sqrt(2.0)


def linear(w: Weights, prefix: str, x: np.ndarray, bias: bool | None = None) -> np.ndarray:
    """x @ W.T + b for the Hugging Face Linear `prefix` (weight (out, in)).

    An optional `{prefix}.input_scale` (per input channel, written by activation-aware quantization where the
    scale could not be folded into a preceding operation) divides the input first.
    """
    scale_name = prefix + ".input_scale"
    if scale_name in w:
        x = x / w[scale_name]
    name = prefix + ".weight"
    block = w.rotation(name)
    if block and x.size // x.shape[-1] < w.shape(name)[0]:
        # a rotated weight (SPEC.md 5.4), applied to fewer rows than it has: x W^T = (x R) V^T, rotating the few
        # input rows (a decoding step) instead of undoing the rotation on the whole weight
        y = rotate_columns(x.reshape(-1, x.shape[-1]), block).reshape(x.shape) @ w.stored(name).T
    else:
        y = x @ w[name].T
    if bias is not False and (prefix + ".bias") in w:
        y += w[prefix + ".bias"]
    return y


def layer_norm(w: Weights, prefix: str, x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    y = xc / np.sqrt(var + eps)
    y *= w[prefix + ".weight"]
    y += w[prefix + ".bias"]
    return y


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


# Abramowitz & Stegun 7.1.26: erfc(z) ~ t * P(t) * exp(-z^2), t = 1 / (1 + p z), |error| <= 1.5e-7 for z >= 0
_AS_P = 0.3275911
_AS_COEF = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_ELEMENTWISE_BLOCK = 1 << 16  # elements per step: the temporaries stay in cache (~20x faster than whole arrays)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as torch's default (max abs deviation ~1.5e-7 * |x|), float32 in and out.

    Evaluated block by block so the temporaries stay in cache: the first conv layers produce tens of millions of
    activations per utterance. Each block is computed in float64: a float32 erfc carries a small systematic bias
    (~1e-8 per activation) that the following fc2 sums accumulate to ~4e-4 in a Whisper encoder, 6x torch's own
    float32 error; float64 blocks cost ~10 % of the encoder time and remove it.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    a0, a1, a2, a3, a4 = _AS_COEF
    for a in range(0, flat.size, _ELEMENTWISE_BLOCK):
        v = flat[a : a + _ELEMENTWISE_BLOCK].astype(np.float64)
        z = np.abs(v)
        z *= _INV_SQRT_2
        t = _AS_P * z
        t += 1
        np.reciprocal(t, out=t)
        erfc = a4 * t
        for c in (a3, a2, a1, a0):
            erfc += c
            erfc *= t
        z *= z
        np.negative(z, out=z)
        np.exp(z, out=z)
        erfc *= z  # erfc(|v| / sqrt 2)
        # 1 + erf(v / sqrt 2) is 2 - erfc for v >= 0 and erfc for v < 0
        r = np.where(v >= 0, 2 - erfc, erfc)
        r *= v
        r *= 0.5
        flat_out[a : a + _ELEMENTWISE_BLOCK] = r
    return out
