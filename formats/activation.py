"""How the input of a quantized weight's matrix product is quantized (SPEC.md section 5.5, layout revision 4).

An `ActivationSpec` is stored in the weight's tensor entry under the key "activation": the input x of the product
x @ W^T (the im2col rows for a convolution, x R for a rotated weight) is rounded to signed b-bit integers
q = clip(rint(x / s), -Q, Q), Q = 2**(b-1) - 1, with s one float32 scale per row (dynamic: max|x_row| / Q, computed
at run time) or one per tensor (static: stored, calibrated by the converter). Symmetric and restricted to +-Q so
that -x quantizes to -q and a product of codes is bounded by Q * (2**b_w - 1), which sets the exact-accumulation
block length of runtime/intlinear.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .constants import MAX_BITS, MIN_BITS

ACTIVATION_KEY = "activation"  # tensor entry key (layout revision 4)
_BITS, _SCALE = "bits", "scale"  # keys of the entry's map; "scale" present iff static
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """bits: 2..8 signed code width; scale: the static per-tensor scale (a positive finite binary32 value), or
    None for a dynamic per-row (per-token) scale."""

    bits: int
    scale: float | None = None

    def __post_init__(self) -> None:
        problem = activation_problem(self.bits, self.scale)
        if problem:
            raise ValueError(problem)

    @property
    def qmax(self) -> int:
        """Q = 2**(bits-1) - 1: codes lie in -Q..Q."""
        return (1 << (self.bits - 1)) - 1

    @property
    def static(self) -> bool:
        return self.scale is not None

    def to_entry(self) -> dict[str, Any]:
        """The msgpack map the writer stores."""
        return {_BITS: self.bits} if self.scale is None else {_BITS: self.bits, _SCALE: float(self.scale)}

    @classmethod
    def static_from_range(cls, bits: int, absmax: float) -> ActivationSpec:
        """The static spec whose codes span -absmax..absmax: scale = absmax / Q rounded up to binary32 (so the range
        is never shrunk), at least the smallest normal binary32 value (an all-zero input still gets a valid
        scale)."""
        qmax = (1 << (bits - 1)) - 1
        s = max(float(absmax) / qmax, float(np.finfo(np.float32).tiny))
        s32 = np.float32(s)
        if float(s32) < s:
            s32 = np.nextafter(s32, np.float32(np.inf))
        return cls(bits, float(s32))


def activation_problem(bits: Any, scale: Any) -> str | None:
    """Why (bits, scale) is not a valid activation spec, or None. Shared by the reader, the writer and
    ActivationSpec, so the three accept exactly the same values."""
    if type(bits) is not int or not MIN_BITS <= bits <= MAX_BITS:
        return f"activation bits {bits!r} outside {MIN_BITS}..{MAX_BITS}"
    if scale is None:
        return None
    if type(scale) is not float:
        return f"activation scale {scale!r} is not a float"
    if not math.isfinite(scale) or scale <= 0:
        return f"activation scale {scale!r} is not a positive finite number"
    if scale > _FLOAT32_MAX or float(np.float32(scale)) != scale:
        return f"activation scale {scale!r} is not exactly a binary32 value"
    return None


def parse_activation_entry(value: Any) -> ActivationSpec | str:
    """The spec an entry's "activation" map describes, or a message saying why it is invalid (the reader turns it
    into a MalformedHeaderError naming the file and tensor)."""
    if not isinstance(value, dict):
        return "activation is not a map"
    extra = set(value) - {_BITS, _SCALE}
    if extra:
        return f"activation has unknown keys {sorted(extra)}"
    if _BITS not in value:
        return "activation lacks 'bits'"
    if _SCALE in value and value[_SCALE] is None:
        return "activation scale is nil (a dynamic spec has no 'scale' key)"
    problem = activation_problem(value[_BITS], value.get(_SCALE))
    if problem:
        return problem
    return ActivationSpec(value[_BITS], value.get(_SCALE))
