"""Incoherence processing: quantize W R instead of W, R an orthogonal block Hadamard transform with fixed signs.

A weight row's large entries (and a Hessian's dominant directions) line up with a few input columns; spreading
each block of columns over all of them with a randomised Hadamard transform makes the values inside a group
look Gaussian, so a group's range is set by its typical values instead of its extremes (QuIP, Chee et al.,
2023; QuIP#, Tseng et al., 2024; QuaRot, Ashkboos et al., 2024). The file stores the codes of W R and the block
size; every reader applies R^T when it dequantizes (SPEC.md 5.4), so nothing downstream changes.

Whether it helps depends on the tensor: layers whose inputs GPTQ already compensates well (fc2, after GELU) can
get worse. So a rotated tensor is quantized both ways and keeps whichever has the smaller error on its calibration
statistics (weight.quantize_weight); without calibration the weight error decides. Measured effect:
benchmarks/results/quant_table_whisper-base.md.

For GPTQ and clip search the statistics move with the weight: H = E[x x^T] of the inputs becomes R^T H R, the
statistics of R^T x, the inputs a rotated weight sees.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ...formats.codecs import rotation_signs
from .stats import FullStats, IdentityStats, Stats

MAX_BLOCK = 128  # Hadamard block: the largest power of two dividing the columns, at most this (one group)
MIN_BLOCK = 16  # below this a rotation mixes too few columns to matter; such tensors are not rotated


def block_size(cols: int) -> int:
    """The rotation block for a tensor with `cols` columns in its 2-D view, or 0 when it is not rotated."""
    b = min(cols & -cols, MAX_BLOCK) if cols > 0 else 0
    return b if b >= MIN_BLOCK else 0


@functools.cache
def _hadamard(block: int) -> torch.Tensor:
    """float64 H_B / sqrt(B) (Sylvester order; symmetric, its own inverse). Cached: never modify it in place."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(block)


@functools.cache
def _signs(cols: int) -> torch.Tensor:
    return torch.from_numpy(rotation_signs(cols).astype(np.float64))


def _blocks(v: torch.Tensor, block: int) -> torch.Tensor:
    """(rows, cols) with each row's blocks of `block` columns multiplied by H_B / sqrt(B), in v's dtype."""
    rows, cols = v.shape
    return (v.reshape(rows, cols // block, block) @ _hadamard(block).to(v.dtype)).reshape(rows, cols)


def rotate_torch(w: torch.Tensor, block: int) -> torch.Tensor:
    """(rows, cols) W R in torch, as formats.codecs.rotate_columns computes it (signs, then blocks)."""
    return _blocks(w * _signs(w.shape[1]).to(w.dtype), block)


def unrotate_torch(v: torch.Tensor, block: int) -> torch.Tensor:
    """(rows, cols) V R^T in torch (differentiable), as formats.codecs.unrotate_columns computes it."""
    return _blocks(v, block) * _signs(v.shape[1]).to(v.dtype)


def rotation_matrix(cols: int, block: int) -> torch.Tensor:
    """float64 (cols, cols): R with W R = formats.codecs.rotate_columns(W, block)."""
    return rotate_torch(torch.eye(cols, dtype=torch.float64), block)


def rotate_hessian(hessian: torch.Tensor, block: int) -> torch.Tensor:
    """float64 R^T H R: the second moment of the inputs R^T x that W R sees. Block by block (cols^2 * B
    multiply-adds per side, not the cols^3 of a dense R)."""
    hr = rotate_torch(hessian.to(torch.float64), block)  # H R
    return rotate_torch(hr.T.contiguous(), block)  # (H R)^T R = R^T H R (H is symmetric)


def rotate_stats(stats: Stats, block: int) -> Stats | None:
    """The statistics of the rotated inputs, or None when they cannot be rotated (per-row-group DiagStats)."""
    if isinstance(stats, IdentityStats):
        return stats  # |dW R|^2 = |dW|^2
    if isinstance(stats, FullStats):
        out = FullStats(stats.cols)
        out._h = rotate_hessian(stats.hessian, block)
        out._abs = torch.full_like(stats.mean_abs, float("nan"))  # AWQ's salience has no rotated meaning
        out.n = 1
        return out
    return None
