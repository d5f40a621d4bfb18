"""Activation-aware scaling (AWQ, Lin et al., 2023): per input channel scales s that move quantization precision
to the channels with large activations.

The layers sharing one input x (e.g. q, k and v after a LayerNorm) are rewritten as (W * s)(x / s): W's columns
are multiplied by s before quantization, and 1/s is folded into whatever produced x (a LayerNorm's weight and
bias, or the rows of a preceding linear such as v_proj before out_proj), so the float function is unchanged.
Where nothing foldable produces x (fc2 after GELU, inputs that also feed a residual), the pipeline stores
s as `<prefix>.input_scale` and the runtime divides x by it before the matmul.

Search: s = mean|x|^alpha, normalised so that sqrt(max(s) * min(s)) = 1, for alpha on a grid from 0 to
(AWQ_GRID - 1) / AWQ_GRID; the objective is the summed output error of the round-to-nearest-quantized layers,

    sum_layers mean_t |W x_t - Q(W * s) (x_t / s)|^2 = sum_layers tr(dW H dW^T),  dW = W - Q(W * s) / s,

on the calibration inputs (a layer-level objective; AWQ proper measures the whole block's output). alpha = 0
(s = 1, plain round-to-nearest) is tried first and only a strictly better alpha replaces it.
Scales are rounded to float16 values so they survive a float16 file exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .rtn import QuantSpec, fake_quant
from .stats import FullStats

AWQ_GRID = 20  # alphas tried
MIN_SCALE = 1e-4  # floor on mean|x|^alpha, so channels that never fire do not get infinite 1/s


def candidate_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """float32 (cols,) scales for one alpha, float16-representable."""
    s = mean_abs.to(torch.float64).pow(alpha).clamp(min=MIN_SCALE)
    s = s / torch.sqrt(s.max() * s.min())
    return s.to(torch.float16).to(torch.float32)


def scaled_error(weights: list[np.ndarray], specs: list[QuantSpec], stats: FullStats, s: torch.Tensor) -> float:
    """Summed output error of round-to-nearest quantizing each W * s and undoing s on the input side."""
    s_np = s.numpy()
    total = 0.0
    for w2d, spec in zip(weights, specs):
        deq = fake_quant(w2d * s_np[None, :], spec) / s_np[None, :]
        total += float(stats.row_error(torch.from_numpy(w2d - deq)).sum())
    return total


def search_scales(weights: list[np.ndarray], specs: list[QuantSpec], stats: FullStats) -> tuple[torch.Tensor, dict]:
    """Best per-input-channel scale for layers sharing one input: (s float32 (cols,), report)."""
    mean_abs = stats.mean_abs
    best_s = torch.ones(stats.cols)
    best_err = scaled_error(weights, specs, stats, best_s)
    base, best_alpha = best_err, 0.0
    for i in range(1, AWQ_GRID):
        alpha = i / AWQ_GRID
        s = candidate_scales(mean_abs, alpha)
        err = scaled_error(weights, specs, stats, s)
        if err < best_err:
            best_s, best_err, best_alpha = s, err, alpha
    return best_s, {"alpha": best_alpha, "error_before": base, "error_after": best_err}


# Folding into torch modules (the calibration runners' working copy of the model). Each returns the state_dict
# suffixes it changed, so the pipeline can return the modified float tensors.


@torch.no_grad()
def scale_columns(linear: torch.nn.Linear, s: torch.Tensor) -> None:
    """W <- W * s (per input column)."""
    linear.weight.mul_(s.to(linear.weight.dtype)[None, :])


@torch.no_grad()
def fold_into_layer_norm(norm: torch.nn.Module, s: torch.Tensor) -> tuple[str, ...]:
    """LayerNorm output / s: weight and bias divided by s."""
    norm.weight.div_(s)
    changed = ("weight",)
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s)
        changed += ("bias",)
    return changed


@torch.no_grad()
def fold_into_linear_rows(linear: torch.nn.Linear, s: torch.Tensor) -> tuple[str, ...]:
    """Linear output / s: rows of the weight and the bias divided by s (e.g. v_proj, whose output reaches
    out_proj through attention, which is linear in v per channel)."""
    linear.weight.div_(s[:, None])
    changed = ("weight",)
    if linear.bias is not None:
        linear.bias.div_(s)
        changed += ("bias",)
    return changed


def add_input_scale(linear: torch.nn.Linear, s: torch.Tensor):
    """x / s before the linear, as the runtime does with `<prefix>.input_scale`. Returns the hook handle."""
    s = s.clone()

    def divide(module, args):
        return (args[0] / s,) + tuple(args[1:])

    return linear.register_forward_pre_hook(divide)


def norm_fold(norm: torch.nn.Module, name: str):
    """A ScaleSite fold into the LayerNorm `norm` (checkpoint prefix `name`)."""

    def fold(s: torch.Tensor) -> list[str]:
        return [f"{name}.{suffix}" for suffix in fold_into_layer_norm(norm, s)]

    return fold


def rows_fold(linear: torch.nn.Linear, name: str):
    """A ScaleSite fold into the output rows of `linear` (checkpoint prefix `name`)."""

    def fold(s: torch.Tensor) -> list[str]:
        return [f"{name}.{suffix}" for suffix in fold_into_linear_rows(linear, s)]

    return fold
