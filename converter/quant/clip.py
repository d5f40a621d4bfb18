"""Per-group range clipping search.

For every group (one row, `group_size` consecutive input columns) try shrinking the quantization range to
r * range for r on a grid from 1 down to 1 - MAX_SHRINK, and keep the r whose round-to-nearest codes give the
smallest output error of that group on the calibration inputs:

    objective(row, g) = mean_t (dW[row, g] . x_t[g])^2 = dW[row, g] H[g, g] dW[row, g]^T

(the block-diagonal part of H; cross-group terms are left out so every group is chosen independently, as AWQ's
clip search does). r = 1 is tried first and only a strictly better ratio replaces it, so the result is never
worse than no clipping on this objective. Without calibration inputs H = I (weight squared error).
"""

from __future__ import annotations

import numpy as np
import torch

from ...formats.codecs import n_groups
from .rtn import QuantSpec, fake_quant, grouped
from .stats import Stats

CLIP_GRID = 20  # ratios tried per group
MAX_SHRINK = 0.5  # the smallest ratio tried is 1 - MAX_SHRINK * (CLIP_GRID - 1) / CLIP_GRID


def clip_ratios() -> np.ndarray:
    return (1.0 - MAX_SHRINK * np.arange(CLIP_GRID) / CLIP_GRID).astype(np.float32)


def group_errors(w2d: np.ndarray, deq: np.ndarray, stats: Stats, group_size: int) -> torch.Tensor:
    """(rows, n_groups) clip objective of the dequantized weight `deq` against `w2d`."""
    dwg = grouped(np.asarray(w2d - deq, dtype=np.float32), group_size)  # (rows, ng, gs) zero-padded
    return stats.group_error(torch.from_numpy(dwg))


def search_clip(w2d: np.ndarray, spec: QuantSpec, stats: Stats) -> tuple[np.ndarray, float, float]:
    """Best clip ratio per group: (ratios float32 (rows, n_groups), objective at r=1, objective at the best)."""
    rows, cols = w2d.shape
    gs = spec.resolve(cols)
    best_err = torch.full((rows, n_groups(cols, gs)), float("inf"))
    best = np.ones((rows, n_groups(cols, gs)), dtype=np.float32)
    base = None
    for r in clip_ratios():
        err = group_errors(w2d, fake_quant(w2d, spec, float(r)), stats, gs)
        if base is None:
            base = float(err.sum())
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[better.numpy()] = r
    return best, base, float(best_err.sum())
