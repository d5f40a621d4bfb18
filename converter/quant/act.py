"""Static activation ranges: per linear input, accumulate |x| over the calibration audio, then choose the clip.

An `ActRange` collects statistics with add_batch calls (the calibration hooks feed it the exact rows the layer's
codes will multiply: after any `input_scale` division, and rotated, x R, for a rotated weight). It keeps the
maximum and a histogram of |x| whose range grows by doubling: when a batch exceeds the range, adjacent bin
pairs merge (exactly: each new bin is the union of two old ones), so the histogram never depends on the order of
the batches beyond the final range, and memory stays HIST_BINS counts per layer.

Three clips, for `choose_clip`:
  absmax      the largest |x| seen: nothing clips; one outlier frame sets the step for every frame;
  percentile  the `PERCENTILE` quantile of |x|: the rare largest values clip;
  mse         the clip c minimising the squared error of symmetric b-bit rounding (step c / Q, codes up to Q)
              over the histogram, each bin's values taken at its centre. (Not the uniform-noise (c / Q)^2 / 12:
              at 4 bits most values round to zero, and that estimate would push the clip far too high.)
DEFAULT_CLIP says which served best on held-out train-clean-100 audio. `static_spec` turns a clip
into the stored ActivationSpec (scale = clip / Q, rounded up to binary32). `fake_quantize` is the runtime's
activation rounding (runtime/intlinear.quantize_activations) in torch, for evaluating a model with quantized
inputs during conversion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from ...formats.activation import ActivationSpec
from ...formats.codecs import rotate_columns

HIST_BINS = 2048  # bins of |x| over [0, range]; the clip search resolves range / HIST_BINS
PERCENTILE = 0.9999  # fraction of |x| values the percentile clip keeps inside
CLIP_METHODS = ("absmax", "percentile", "mse")
# The static default. Chosen on held-out train-clean-100 audio (Whisper encoder linears, clips from other
# utterances): the lowest layer output error of the three at 4, 6 and 8 bits. The percentile clip does worst at
# 8 bits: the rare large values it cuts are the outlier channels these models rely on.
DEFAULT_CLIP = "mse"
MIN_RANGE = 2.0**-24  # the histogram's initial range, so a first batch of zeros still has one


class ActRange:
    """add_batch-style accumulator of one linear input's |x| (maximum and a doubling-range histogram)."""

    def __init__(self, bins: int = HIST_BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = MIN_RANGE
        self.absmax = 0.0
        self.n = 0

    def add_batch(self, x: torch.Tensor | np.ndarray) -> None:
        a = np.abs(np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
        a = a.reshape(-1)
        if not a.size:
            return
        if not np.isfinite(a).all():
            raise ValueError("activation statistics got a non-finite value")
        top = float(a.max())
        while top >= self.range:  # bins are right-open: every value lies below the range
            self._double()
        idx = np.minimum((a / self.range * self.bins).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.absmax = max(self.absmax, top)
        self.n += a.size

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros(self.bins - merged.size, dtype=np.int64)])
        self.range *= 2

    def _upper_edges(self) -> np.ndarray:
        return (np.arange(1, self.bins + 1) / self.bins) * self.range

    def percentile(self, fraction: float = PERCENTILE) -> float:
        """The upper edge of the first bin by which `fraction` of the values are counted (at most absmax)."""
        if not self.n:
            return 0.0
        cumulative = np.cumsum(self.counts)
        i = int(np.searchsorted(cumulative, fraction * self.n))
        return float(min(self._upper_edges()[min(i, self.bins - 1)], self.absmax))

    def mse_clip(self, bits: int) -> float:
        """The clip (a bin edge, at most absmax) minimising the expected squared error of b-bit symmetric rounding."""
        if not self.n:
            return 0.0
        qmax = (1 << (bits - 1)) - 1
        centers = (np.arange(self.bins) + 0.5) / self.bins * self.range
        clips = np.append(self._upper_edges()[self._upper_edges() < self.absmax], self.absmax)
        step = (clips / qmax)[:, None]
        levels = np.minimum(np.rint(centers[None, :] / step), qmax)
        err = ((centers[None, :] - levels * step) ** 2) @ self.counts
        return float(clips[int(np.argmin(err))])

    def choose_clip(self, method: str, bits: int) -> float:
        if method == "absmax":
            return self.absmax
        if method == "percentile":
            return self.percentile()
        if method == "mse":
            return self.mse_clip(bits)
        raise ValueError(f"clip method must be one of {CLIP_METHODS}, got {method!r}")


def static_spec(observed: ActRange, bits: int, method: str = DEFAULT_CLIP) -> ActivationSpec:
    """The stored static spec for one layer input."""
    return ActivationSpec.static_from_range(bits, observed.choose_clip(method, bits))


def fake_quantize(x: torch.Tensor, spec: ActivationSpec) -> torch.Tensor:
    """float32 s * clip(rint(x / s), -Q, Q) over the last dimension's rows, as the runtime rounds them (dynamic:
    s = max|row| / Q; static: the spec's scale). torch.round rounds half to even, like numpy's rint."""
    x = x.to(torch.float32)
    qmax = torch.tensor(float(spec.qmax), dtype=torch.float32)
    if spec.scale is not None:
        s = torch.full(x.shape[:-1] + (1,), spec.scale, dtype=torch.float32)
    else:
        s = x.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.clamp(torch.round(x / safe), -qmax, qmax) + 0.0  # + 0.0: integer codes have no -0
    return q * s


@contextlib.contextmanager
def observe_inputs(
    modules: Mapping[str, torch.nn.Linear], rotations: Mapping[str, int] | None = None
) -> Iterator[dict[str, ActRange]]:
    """Within the block, every call of a module (by weight name) adds its input rows to that name's ActRange:
    the rows its codes multiply, i.e. after any `input_scale` hook registered before this one, and rotated (x R)
    for a name in `rotations` (its Hadamard block size)."""
    rotations = rotations or {}
    ranges = {name: ActRange() for name in modules}

    def add(name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).cpu().numpy()
        ranges[name].add_batch(rotate_columns(rows, rotations[name]) if rotations.get(name) else rows)

    with input_hooks(modules, add):
        yield ranges


@contextlib.contextmanager
def input_hooks(
    modules: Mapping[str, torch.nn.Module], on_input: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Within the block, every call of a module (by weight name) passes (name, its input) to `on_input`."""
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: on_input(name, args[0])) for name, m in modules.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
