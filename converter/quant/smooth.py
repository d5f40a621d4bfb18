"""SmoothQuant-style migration (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For the linears sharing one input x (a ScaleSite of the architecture's calibration blocks), per input channel j

    s_j = max|x_j|^alpha / max_i |W_ij|^(1 - alpha)       (max over the calibration rows, and over all consumers'
                                                            output rows i)

and the layers become (W * s)(x / s): the channel that spikes in x is divided down, its weight column multiplied up,
so with alpha = 0.5 both sides of the product see the same per-channel range. The float function is unchanged: 1/s
is folded into whatever produced x exactly as AWQ folds its scales (awq.py: a LayerNorm's weight and bias, or the
output rows of v_proj before out_proj), and where nothing foldable produces x the consumers get `<prefix>.input_scale`
(the runtime divides x by it before the product, and the activation quantizer sees the divided x). Scales are
float16 values, like AWQ's, so they survive a float16 file exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import cast

import numpy as np
import torch

from .act import input_hooks
from .awq import add_input_scale, scale_columns
from .sequential import Calibration, ScaleSite

MIN_MAGNITUDE = 1e-5  # floor on max|x_j| and max|W_ij|: a channel that never fires is left alone (s_j = 1)


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """float32 (cols,) migration scales for one site, float16-representable; 1 where a channel or its weights
    are (near) zero, so no scale is infinite or zero."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    a = act_absmax.detach().to(torch.float64)
    w = torch.stack([wt.detach().to(torch.float64).abs().amax(dim=0) for wt in weights]).amax(dim=0)
    dead = (a < MIN_MAGNITUDE) | (w < MIN_MAGNITUDE)
    s = a.clamp(min=MIN_MAGNITUDE).pow(alpha) / w.clamp(min=MIN_MAGNITUDE).pow(1.0 - alpha)
    s = torch.where(dead, torch.ones_like(s), s)
    return s.to(torch.float16).to(torch.float32)


@dataclasses.dataclass
class Smoothed:
    scales: torch.Tensor  # float32 (cols,) applied at this site
    changed: list[str]  # float tensor names the fold modified (LayerNorm weight/bias, v_proj rows)
    input_scales: dict[str, np.ndarray]  # `<prefix>.input_scale` -> float32 scale, where no fold exists


def smooth_site(
    site: ScaleSite, modules: Mapping[str, torch.nn.Linear], act_absmax: torch.Tensor, alpha: float
) -> Smoothed:
    """Migrate one site's activation outliers into its consumers (modules by weight name) and fold 1/s."""
    consumers = [modules[name] for name in site.consumers]
    s = smooth_scales(act_absmax, [m.weight for m in consumers], alpha)
    for m in consumers:
        scale_columns(m, s)
    if site.fold is not None:
        return Smoothed(s, list(site.fold(s)), {})
    input_scales = {}
    for name, m in zip(site.consumers, consumers):
        add_input_scale(m, s)
        input_scales[name.rsplit(".", 1)[0] + ".input_scale"] = s.numpy().astype(np.float32)
    return Smoothed(s, [], input_scales)


@dataclasses.dataclass
class Migration:
    """What `smooth_model` did to the working model."""

    changed: set[str]  # tensor names whose values changed (consumer weights, folded norms and rows)
    folded: list[list[str]]  # consumers of each smoothed site
    skipped: list[list[str]]  # consumers of each site with nothing foldable before it (left unsmoothed)

    def report(self, alpha: float) -> dict:
        return {"alpha": alpha, "sites": self.folded, "skipped": self.skipped}


@contextlib.contextmanager
def channel_maxima(modules: Mapping[str, torch.nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every call of a module (by weight name) raises that name's per-input-channel max|x|."""
    maxima: dict[str, torch.Tensor] = {}

    def raise_max(name: str, x: torch.Tensor) -> None:
        a = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).to(torch.float32)
        maxima[name] = torch.maximum(maxima[name], a) if name in maxima else a

    with input_hooks(modules, raise_max):
        yield maxima


def smooth_model(cal: Calibration, alpha: float) -> Migration:
    """Smooth every scale site of the calibration's working model whose 1/s folds into the operation before it
    (a LayerNorm, or v_proj's rows before out_proj), with max|x_j| from one float forward pass over every
    calibration utterance. Sites without a fold (fc2 after GELU, cross-attention k/v on the encoder output that
    every decoder layer shares) are left alone: an `input_scale` there would be a runtime op of its own."""
    targets = cal.targets
    sites = [s for b in cal.blocks for s in b.scale_sites]

    def foldable(site: ScaleSite) -> bool:
        return site.fold is not None and all(
            c in targets and isinstance(targets[c].module, torch.nn.Linear) for c in site.consumers
        )

    chosen = [s for s in sites if foldable(s)]
    modules = {c: cast(torch.nn.Linear, targets[c].module) for s in chosen for c in s.consumers}
    with torch.no_grad(), channel_maxima(modules) as maxima:
        for loss in cal.losses(cal.model, cal.batches):
            loss()
    migration = Migration(set(), [], [list(s.consumers) for s in sites if not foldable(s)])
    with torch.no_grad():
        for site in chosen:
            if not all(c in maxima for c in site.consumers):  # never reached by the forward pass
                migration.skipped.append(list(site.consumers))
                continue
            absmax = torch.stack([maxima[c] for c in site.consumers]).amax(dim=0)
            done = smooth_site(site, {c: modules[c] for c in site.consumers}, absmax, alpha)
            migration.changed.update(site.consumers, done.changed)
            migration.folded.append(list(site.consumers))
    return migration
