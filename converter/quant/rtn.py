"""Round-to-nearest quantization (the baseline), optionally with per-group range clipping.

Thin wrappers over wavq.formats' codecs, so codes and scales follow the file's conventions exactly:
scales are float16 and rounded outward, symmetric codes have zero point 2**(bits-1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...formats import QuantizedTensor, dequantize, quantize, quantize_with_scales, rtn_scales
from ...formats.codecs import dequantize_rows, resolve_group_size, rotate_columns, unrotate_columns, view_2d_shape
from .decompose import Decomposition, decompose


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized."""

    bits: int
    group_size: int  # as requested (0 = per output channel); resolve() gives the columns per group used
    symmetric: bool = True
    outliers: int = 0  # > 0: decomposed (decompose.py): offset row + this many float16 columns + codes
    rotation: int = 0  # > 0: the codes are of W R, R a Hadamard rotation in blocks of this many columns (rotate.py)

    def __post_init__(self) -> None:
        if self.rotation and self.outliers:
            raise ValueError("a tensor is either decomposed or rotated, not both")

    def resolve(self, cols: int) -> int:
        return resolve_group_size(cols, self.group_size)

    @property
    def plain(self) -> QuantSpec:
        """The same codes without decomposition (what the residual of a decomposed tensor is quantized with)."""
        return dataclasses.replace(self, outliers=0)

    @property
    def unrotated(self) -> QuantSpec:
        """The same codes without the rotation (what W R itself is quantized with)."""
        return dataclasses.replace(self, rotation=0)


def as_2d(w: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) view of a weight, as the codecs see it."""
    rows, cols = view_2d_shape(w.shape)
    return np.ascontiguousarray(w, dtype=np.float32).reshape(rows, cols)


def rtn(
    w: np.ndarray, spec: QuantSpec, clip: np.ndarray | None = None, decomposition: Decomposition | None = None
) -> QuantizedTensor:
    """Round-to-nearest codes for `w` (any rank >= 2); `clip` (rows, n_groups) shrinks each group's range.

    A decomposed spec quantizes the residual of `decomposition` (by default chosen from the weight alone); a
    rotated one quantizes W R (`clip` then refers to the groups of W R)."""
    if spec.rotation:
        qt = rtn(rotate_columns(as_2d(w), spec.rotation).reshape(w.shape), spec.unrotated, clip)
        return dataclasses.replace(qt, rotation=spec.rotation)
    if spec.outliers:
        w2d = as_2d(w)
        dec = decomposition or decompose(w2d, spec.outliers)
        qt = rtn(dec.residual(w2d).reshape(w.shape), spec.plain, clip)
        return dec.attach(qt, dec.outliers(w2d))
    if clip is None:
        return quantize(w, spec.bits, spec.group_size, spec.symmetric)[0]
    w2d = as_2d(w)
    gs = spec.resolve(w2d.shape[1])
    scales, zeros = rtn_scales(w2d, spec.bits, gs, spec.symmetric, clip)
    codes = quantize_with_scales(w2d, scales, zeros, spec.bits, gs)
    return QuantizedTensor(tuple(int(d) for d in w.shape), spec.bits, gs, codes, scales, zeros)


def grouped(x2d: np.ndarray, group_size: int) -> np.ndarray:
    """(rows, cols) -> (rows, n_groups, group_size): the codecs' column groups, the last one zero-padded."""
    rows, cols = x2d.shape
    pad = -cols % group_size
    if pad:
        x2d = np.concatenate([x2d, np.zeros((rows, pad), dtype=x2d.dtype)], axis=1)
    return x2d.reshape(rows, -1, group_size)


def fake_quant(w2d: np.ndarray, spec: QuantSpec, clip: np.ndarray | float = 1.0) -> np.ndarray:
    """float32 (rows, cols): what round-to-nearest would store for w2d, dequantized (for searches)."""
    if spec.rotation:
        return unrotate_columns(fake_quant(rotate_columns(w2d, spec.rotation), spec.unrotated, clip), spec.rotation)
    if spec.outliers:
        clip_arr = (
            None
            if np.ndim(clip) == 0 and float(clip) == 1.0
            else np.broadcast_to(
                np.asarray(clip, dtype=np.float32), (w2d.shape[0], -(-w2d.shape[1] // spec.resolve(w2d.shape[1])))
            )
        )
        return dequantize(rtn(w2d, spec, clip_arr))
    gs = spec.resolve(w2d.shape[1])
    scales, zeros = rtn_scales(w2d, spec.bits, gs, spec.symmetric, clip)
    codes = quantize_with_scales(w2d, scales, zeros, spec.bits, gs)
    return dequantize_rows(codes, scales, zeros, spec.bits, gs)
