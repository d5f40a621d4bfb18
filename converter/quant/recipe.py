"""What to quantize and how: the Recipe the CLI builds and the pipeline follows.

Method syntax: stages joined by '+', e.g. "rtn", "gptq", "awq", "awq+gptq", "awq+clip", "clip+gptq",
"awq+clip+gptq", "gptq+tune". Stages are always applied in this order, whatever order they are written in:
  awq   activation-aware per-input-channel scaling (searched on calibration activations, folded into the
        preceding operation where the graph allows);
  clip  per-group range clipping search (minimises the group's output error on calibration activations, or the
        weight error when there is no calibration audio);
  rtn | gptq | vq   the rounding stage: round-to-nearest, GPTQ's Hessian-based error compensation, or vector
        (codebook) quantization with the same compensation (vq.py; `bits` may then be fractional: the index
        bits per vector are bits * vq_dim). vq combines only with --rotate: AWQ and clip search scalar ranges,
        tune tunes scalar scales, and mixed precision allocates scalar widths;
  tune  after rounding, distil the float model into the quantized one's scales and float tensors (tune.py).
A method without a rounding stage rounds to nearest ("awq" = "awq+rtn"). "none" exports float weights.
`Recipe.clip=True` is the same as adding "+clip".
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

from ...formats.constants import MAX_BITS, MIN_BITS, VQ_DIMS, VQ_MAX_INDEX_BITS, VQ_MIN_INDEX_BITS

ROUNDERS = ("rtn", "gptq", "vq")
SCALERS = ("awq", "clip")
TUNERS = ("tune",)
FLOAT_KEEP_BITS = (16, 32)  # --keep PATTERN=16|32: leave matching tensors unquantized (stored in the file dtype)
DEFAULT_DAMP = 0.01  # GPTQ dampening, as a fraction of the mean Hessian diagonal (the GPTQ paper's default)
DEFAULT_CALIB_SAMPLES = 128
DEFAULT_OUTLIER_COLUMNS = 4  # float16 columns of a decomposed embedding table (decompose.py)
DEFAULT_TUNE_EPOCHS = 2  # passes of the tune stage over the calibration audio (tune.py)
MAX_OUTLIER_COLUMNS = 64
DEFAULT_VQ_DIM = 2  # weights per codebook vector (vq.py docstring: why 2)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A parsed method: which stages run."""

    awq: bool
    clip: bool
    rounder: str  # "rtn" | "gptq" | "vq"
    tune: bool = False

    @property
    def name(self) -> str:
        return "+".join(
            [s for s, on in (("awq", self.awq), ("clip", self.clip)) if on]
            + [self.rounder]
            + (["tune"] if self.tune else [])
        )


def parse_method(method: str, clip: bool = False) -> Plan | None:
    """Plan for a method string; None for "none". Raises ValueError with the accepted syntax on mistakes."""
    text = (method or "").strip().lower()
    if text == "none":
        if clip:
            raise ValueError("method 'none' exports float weights; it cannot be combined with clip")
        return None
    parts = [p.strip() for p in text.split("+")]
    known = ROUNDERS + SCALERS + TUNERS
    bad = [p for p in parts if p not in known]
    if not text or bad:
        raise ValueError(
            f"unknown quantization method {method!r}: use {', '.join(known)} or a '+' combination such as "
            "awq+clip+gptq (or 'none')"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"method {method!r} names a stage twice")
    rounders = [p for p in parts if p in ROUNDERS]
    if len(rounders) > 1:
        raise ValueError(f"method {method!r} has two rounding stages ({' and '.join(rounders)}); pick one")
    if "vq" in parts and len(parts) > 1:
        raise ValueError(
            f"method {method!r}: vq combines with no other stage (AWQ, clip and tune work on scalar codes); "
            "use 'vq' with --rotate"
        )
    return Plan(
        awq="awq" in parts,
        clip=clip or "clip" in parts,
        rounder=rounders[0] if rounders else "rtn",
        tune="tune" in parts,
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Quantization settings. Validated on construction; every field has the CLI's default."""

    method: str = "rtn"  # see the module docstring; normalised to the canonical order, e.g. "awq+clip+gptq"
    bits: float | None = 4  # bits per weight code (2..8; vq: index bits / vq_dim, may be fractional); None: target_bpw
    group_size: int = 128  # input columns per scale; 0 = one scale per output channel
    symmetric: bool = False  # asymmetric by default: Whisper's weight groups are skewed (half the error)
    clip: bool = False  # same as adding "+clip" to the method
    target_bpw: float | None = None  # mixed precision: average bits per quantized weight, scales included
    # mixed precision may also choose each tensor's group size among group_size and these (0 = per channel)
    mixed_group_sizes: tuple[int, ...] = ()
    mixed_min_bits: int = MIN_BITS  # mixed precision: the smallest width the allocation may give a free tensor
    keep: tuple[tuple[str, int], ...] = ()  # (fnmatch pattern, bits); the last matching pattern wins
    act_order: bool = False  # GPTQ: columns in order of decreasing Hessian diagonal (codes stay in natural order)
    damp: float = DEFAULT_DAMP
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    seed: int = 0
    true_sequential: bool = True  # re-collect a layer's inputs after the layers before it in its block are quantized
    # embedding tables are stored decomposed (offset row + this many float16 columns + codes); 0 = plain codes
    outlier_columns: int = DEFAULT_OUTLIER_COLUMNS
    tune_epochs: int = DEFAULT_TUNE_EPOCHS  # passes of the tune stage (methods with "+tune")
    # also quantize each weight under a block Hadamard rotation (rotate.py) and keep the smaller output error
    rotate: bool = False
    # activation bits of every quantized linear weight's input (dynamic per-row scale; rotated weights quantize
    # x R, QuaRot-style); None: float inputs
    act_bits: int | None = None
    # static per-tensor activation scales (MSE clip on the calibration audio's inputs) instead of dynamic ones
    act_static: bool = False
    # SmoothQuant migration strength alpha (smooth.py): activation outliers moved into the weights, where foldable
    smooth: float | None = None
    vq_dim: int = DEFAULT_VQ_DIM  # vq: weights per codebook vector (2, 4 or 8)

    def __post_init__(self) -> None:
        plan = parse_method(self.method, self.clip)
        object.__setattr__(self, "method", "none" if plan is None else plan.name)
        object.__setattr__(self, "clip", bool(plan and plan.clip))
        object.__setattr__(self, "keep", tuple((str(p), int(b)) for p, b in self.keep))
        extra = tuple(dict.fromkeys(int(g) for g in self.mixed_group_sizes if int(g) != self.group_size))
        object.__setattr__(self, "mixed_group_sizes", extra)
        if self.bits is None and self.target_bpw is None and plan is not None:
            raise ValueError("give the number of bits, or a target bits-per-weight for mixed precision")
        if self.bits is not None and not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if plan is not None and plan.rounder == "vq":
            self._check_vq()
        elif self.vq_dim != DEFAULT_VQ_DIM:
            raise ValueError("a vector dimension is a setting of the vq method (--method vq)")
        elif self.bits is not None and self.bits != int(self.bits):
            raise ValueError(f"fractional bits ({self.bits}) need the vq method; scalar codes have whole bits")
        if self.bits is not None:
            object.__setattr__(self, "bits", self.bits if plan is not None and plan.rounder == "vq" else int(self.bits))
        if self.group_size < 0:
            raise ValueError(f"group size must be >= 0 (0 = per output channel), got {self.group_size}")
        if self.target_bpw is not None and not self.target_bpw > 0:
            raise ValueError(f"target bits per weight must be positive, got {self.target_bpw}")
        if any(g < 0 for g in self.mixed_group_sizes):
            raise ValueError(
                f"mixed-precision group sizes must be >= 0 (0 = per output channel), got {list(self.mixed_group_sizes)}"
            )
        if not MIN_BITS <= self.mixed_min_bits <= MAX_BITS:
            raise ValueError(
                f"the smallest mixed-precision width must be {MIN_BITS}..{MAX_BITS}, got {self.mixed_min_bits}"
            )
        if (self.mixed_group_sizes or self.mixed_min_bits != MIN_BITS) and self.target_bpw is None:
            raise ValueError(
                "choosing group sizes per tensor or a smallest width is part of mixed precision: it "
                "needs a target bits per weight"
            )
        for pattern, bits in self.keep:
            if not pattern:
                raise ValueError("a --keep pattern is empty")
            if not (MIN_BITS <= bits <= MAX_BITS or bits in FLOAT_KEEP_BITS):
                raise ValueError(
                    f"--keep {pattern}={bits}: bits must be {MIN_BITS}..{MAX_BITS} "
                    f"(or {' / '.join(map(str, FLOAT_KEEP_BITS))} to keep the tensors float)"
                )
        if not 0 < self.damp < 1:
            raise ValueError(
                f"GPTQ dampening must be between 0 and 1 (fraction of the mean Hessian diagonal), got {self.damp}"
            )
        if not 0 <= self.outlier_columns <= MAX_OUTLIER_COLUMNS:
            raise ValueError(f"embedding outlier columns must be 0..{MAX_OUTLIER_COLUMNS}, got {self.outlier_columns}")
        if self.calib_samples < 1:
            raise ValueError(f"calibration samples must be >= 1, got {self.calib_samples}")
        if self.rotate and plan is not None and plan.awq:
            raise ValueError(
                "rotation and AWQ do not combine: AWQ scales input channels that a rotation mixes (use one of them)"
            )
        if self.rotate and plan is None:
            raise ValueError("method 'none' exports float weights; there is nothing to rotate")
        if self.tune_epochs < 1:
            raise ValueError(f"tune epochs must be >= 1, got {self.tune_epochs}")
        if self.act_bits is not None and not MIN_BITS <= self.act_bits <= MAX_BITS:
            raise ValueError(f"activation bits must be {MIN_BITS}..{MAX_BITS}, got {self.act_bits}")
        if self.act_static and self.act_bits is None:
            raise ValueError("static activation scales need activation bits (--act-bits)")
        if self.act_static and plan is not None and plan.awq:
            raise ValueError("static activation scales are observed without AWQ's input scales: not with AWQ")
        if self.act_bits is not None and plan is None:
            raise ValueError("activation quantization needs quantized weights (integer codes to multiply)")
        if self.smooth is not None and (plan is None or not 0.0 <= self.smooth <= 1.0):
            raise ValueError(f"smoothing needs quantized weights and an alpha in [0, 1], got {self.smooth}")

    def _check_vq(self) -> None:
        if self.vq_dim not in VQ_DIMS:
            raise ValueError(f"vector dimension must be one of {', '.join(map(str, VQ_DIMS))}, got {self.vq_dim}")
        if self.bits is None or self.target_bpw is not None:
            raise ValueError("vq needs --bits: mixed precision (--target-bpw) allocates scalar widths only")
        index_bits = self.bits * self.vq_dim
        if index_bits != int(index_bits) or not VQ_MIN_INDEX_BITS <= index_bits <= VQ_MAX_INDEX_BITS:
            raise ValueError(
                f"vq at {self.bits} bits per weight in vectors of {self.vq_dim} needs {index_bits:g} index bits: "
                f"choose bits so that bits * {self.vq_dim} is a whole number from {VQ_MIN_INDEX_BITS} to "
                f"{VQ_MAX_INDEX_BITS}"
            )
        if self.group_size % self.vq_dim:
            raise ValueError(f"vq scale groups of {self.group_size} columns do not hold whole vectors of {self.vq_dim}")
        if self.act_bits is not None:
            raise ValueError("activation quantization multiplies integer weight codes: not with vq codebooks")

    @property
    def vq_index_bits(self) -> int:
        """Bits per vector index of the vq method (bits * vq_dim)."""
        assert self.bits is not None
        return int(self.bits * self.vq_dim)

    @classmethod
    def from_options(cls, *, method: str = "rtn", bits: float | None = None, keep: Iterable = (), **kwargs) -> Recipe:
        """Build from CLI options: `bits` may be None with a target_bpw; `keep` is any iterable of pairs."""
        if bits is None and kwargs.get("target_bpw") is None:
            bits = 4
        return cls(method=method, bits=bits, keep=tuple(tuple(k) for k in keep), **kwargs)

    @property
    def plan(self) -> Plan | None:
        return parse_method(self.method)

    @property
    def needs_calibration(self) -> bool:
        """True when the method cannot run without calibration audio (GPTQ, AWQ, tuning)."""
        plan = self.plan
        return plan is not None and (plan.awq or plan.rounder in ("gptq", "vq") or plan.tune)

    @property
    def uses_calibration(self) -> bool:
        """True when calibration audio, if given, changes the result (adds clip search and mixed precision,
        which fall back to weight-error objectives without it)."""
        plan = self.plan
        return self.needs_calibration or (
            plan is not None
            and (plan.clip or self.target_bpw is not None or self.act_static or self.smooth is not None)
        )

    def keep_bits(self, name: str) -> int | None:
        """Pinned bits for a tensor name (the last matching --keep pattern wins), or None."""
        found = None
        for pattern, bits in self.keep:
            if fnmatch.fnmatchcase(name, pattern):
                found = bits
        return found

    def to_meta(self) -> dict:
        """The settings as plain msgpack-able values for the file header (meta["quantization"])."""
        return {
            "method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "target_bpw": self.target_bpw,
            **({"mixed_group_sizes": list(self.mixed_group_sizes)} if self.mixed_group_sizes else {}),
            **({"mixed_min_bits": self.mixed_min_bits} if self.mixed_min_bits != MIN_BITS else {}),
            "keep": [[p, b] for p, b in self.keep],
            "act_order": self.act_order,
            "damp": self.damp,
            "calib_samples": self.calib_samples,
            "seed": self.seed,
            "true_sequential": self.true_sequential,
            "outlier_columns": self.outlier_columns,
            **({"tune_epochs": self.tune_epochs} if self.plan is not None and self.plan.tune else {}),
            **({"rotate": True} if self.rotate else {}),
            **({"vq_dim": self.vq_dim} if self.plan is not None and self.plan.rounder == "vq" else {}),
            **(
                {"act_bits": self.act_bits, "act_scale": "static" if self.act_static else "dynamic"}
                if self.act_bits is not None
                else {}
            ),
            **({"smooth": self.smooth} if self.smooth is not None else {}),
        }
