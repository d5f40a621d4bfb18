"""Round-to-nearest quantization (the baseline) of a plain (rows, cols) matrix, optionally with per-group range
clipping; QuantSpec, how one tensor is stored.

Thin wrappers over wavq.formats' codecs, so codes and scales follow the file's conventions exactly:
scales are float16 and rounded outward, symmetric codes have zero point 2**(bits-1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...formats import QuantizedTensor, quantize, quantize_with_scales, rtn_scales
from ...formats.codecs import dequantize_rows, resolve_group_size, view_2d_shape


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    bits: int
    group_size: int  # as requested (0 = per output channel); resolve() gives the columns per group used
    symmetric: bool = True
    outliers: int = 0  # > 0: decomposed (decompose.py): offset row + this many float16 columns + codes
    rotation: int = 0  # > 0: the codes are of W R, R a Hadamard rotation in blocks of this many columns (rotate.py)
    vq_dim: int = 0  # > 0: codebook vectors of this many weights (vq.py); `bits` are then the index bits

    def __post_init__(self) -> None:
        if self.rotation and self.outliers:
            raise ValueError("a tensor is either decomposed or rotated, not both")
        if self.vq_dim and self.outliers:
            raise ValueError("a vector-quantized tensor is not decomposed")

    def resolve(self, cols: int) -> int:
        return resolve_group_size(cols, self.group_size)

    @property
    def plain(self) -> QuantSpec:
        """The same codes without decomposition or rotation: what rtn / gptq / fake_quant see (weight.py applies
        the layout)."""
        return dataclasses.replace(self, outliers=0, rotation=0)

    def check_plain(self) -> None:
        if self.outliers or self.rotation:
            raise ValueError("rtn, gptq and fake_quant take a plain spec: weight.py applies decomposition and rotation")


def as_2d(w: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) view of a weight, as the codecs see it."""
    rows, cols = view_2d_shape(w.shape)
    return np.ascontiguousarray(w, dtype=np.float32).reshape(rows, cols)


def rtn(w2d: np.ndarray, spec: QuantSpec, clip: np.ndarray | None = None) -> QuantizedTensor:
    """Round-to-nearest codes of a (rows, cols) matrix; `clip` (rows, n_groups) shrinks each group's range."""
    spec.check_plain()
    if clip is None:
        return quantize(w2d, spec.bits, spec.group_size, spec.symmetric)[0]
    w2d = np.ascontiguousarray(w2d, dtype=np.float32)
    gs = spec.resolve(w2d.shape[1])
    scales, zeros = rtn_scales(w2d, spec.bits, gs, spec.symmetric, clip)
    codes = quantize_with_scales(w2d, scales, zeros, spec.bits, gs)
    return QuantizedTensor(tuple(int(d) for d in w2d.shape), spec.bits, gs, codes, scales, zeros)


def grouped(x2d: np.ndarray, group_size: int) -> np.ndarray:
    """(rows, cols) -> (rows, n_groups, group_size): the codecs' column groups, the last one zero-padded."""
    rows, cols = x2d.shape
    pad = -cols % group_size
    if pad:
        x2d = np.concatenate([x2d, np.zeros((rows, pad), dtype=x2d.dtype)], axis=1)
    return x2d.reshape(rows, -1, group_size)


def fake_quant(w2d: np.ndarray, spec: QuantSpec, clip: np.ndarray | float = 1.0) -> np.ndarray:
    """float32 (rows, cols): what round-to-nearest would store for w2d, dequantized (for searches)."""
    spec.check_plain()
    gs = spec.resolve(w2d.shape[1])
    scales, zeros = rtn_scales(w2d, spec.bits, gs, spec.symmetric, clip)
    codes = quantize_with_scales(w2d, scales, zeros, spec.bits, gs)
    return dequantize_rows(codes, scales, zeros, spec.bits, gs)
