"""Mixed precision: the bits-per-weight measure, per-tensor sensitivities, and the bit allocation.

Bits per weight (bpw) counts exactly what a .wq file stores for its quantized tensors, per weight:

    bpw = sum_t (bits_t * numel_t + 16 * n_scales_t + [asymmetric] bits_t * n_scales_t) / sum_t numel_t

over every quantized tensor t, with n_scales_t = rows * ceil(cols / group_size) of its 2-D view (one float16
scale, and for asymmetric codes one zero point of bits_t bits, per group); a decomposed embedding table adds its
float32 offset row and float16 outlier columns (32 * cols + 16 * rows * k). Float tensors (norms, biases,
positions, tensors kept float) are not counted; neither are the container's alignment padding and header.
The per-tensor count is formats.stats.payload_bits, which `wavq info` uses too.

Allocation: each free tensor t gets an option o to minimise sum_t err_t(o) subject to the total storage
being <= target_bpw * sum_t numel_t. An option is a width b in 2..8 at the recipe's group size, or, when the
recipe lists more group sizes (Recipe.mixed_group_sizes), a pair (b, g): a tensor may then buy finer groups
instead of another bit (3 bits in groups of 64 costs 3.3 bits/weight asymmetric, between 3 and 4 bits at 128).
err_t(o) is the expected loss increase of round-to-nearest with option o, sum(F * dW^2) with F the diagonal
Fisher of the model's loss on the calibration audio (fisher.py; per-layer output errors are not comparable
across layers); without calibration audio, the weight squared error. The solver is the greedy walk along each
tensor's lower convex hull of (storage, error), best error reduction per stored bit first (the Lagrangian
solution at every budget it passes), then a local search that applies the best single or paired change (one
tensor down, another up) while it lowers the error within the budget; ties break by tensor order, so the
result is deterministic.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ...formats import QuantizedTensor
from ...formats.codecs import CodebookTensor, resolve_group_size, view_2d_shape
from ...formats.constants import MAX_BITS, MIN_BITS, Encoding
from ...formats.stats import payload_bits
from .rtn import QuantSpec
from .stats import Stats
from .vq import codebook_bits
from .weight import rounded_fake

EXCHANGE_ROUNDS = 1000  # bound on the local-search moves after the hull walk (each strictly lowers the error)
EXCHANGE_BLOCK = 512  # rows of the pairwise search evaluated at once (bounds its memory)
MIXED_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))

Option = int | tuple[int, int]  # bits (at the candidate's default group size) or (bits, group size)


def option_bits_group(option: Option, group_size: int) -> tuple[int, int]:
    """(bits, group size) of an allocation option; a bare width uses `group_size`."""
    return (int(option[0]), int(option[1])) if isinstance(option, tuple) else (int(option), group_size)


def mixed_options(group_sizes: Iterable[int], min_bits: int = MIN_BITS) -> list[tuple[int, int]]:
    """Every (bits, group size) pair with bits >= min_bits, in the order of the group sizes given (Recipe already
    drops repeats)."""
    return [(b, g) for g in group_sizes for b in MIXED_BITS if b >= min_bits]


def storage_bits(shape: tuple[int, ...], bits: int, group_size: int, symmetric: bool, outliers: int = 0) -> int:
    """Bits a .wq stores for one quantized tensor: codes, float16 scales, zero points when asymmetric, and the
    offset row and `outliers` float columns when decomposed (formats.stats.payload_bits, as `wavq info`)."""
    cols = view_2d_shape(shape)[1]
    encoding = Encoding.QSYM if symmetric else Encoding.QASYM
    return payload_bits(
        encoding, tuple(shape), bits, resolve_group_size(cols, group_size), outliers=outliers if outliers > 0 else None
    )


def bits_per_weight(tensors: Iterable[QuantizedTensor | CodebookTensor]) -> float:
    """Effective bits per weight over quantized tensors (0.0 when there are none); codebooks counted."""
    total = numel = 0
    for qt in tensors:
        if isinstance(qt, CodebookTensor):
            total += codebook_bits(qt)
            numel += int(np.prod(qt.shape))
            continue
        total += payload_bits(
            qt.encoding,
            tuple(qt.shape),
            qt.bits,
            qt.group_size,
            outliers=len(qt.outlier_columns) if qt.decomposed else None,
        )
        numel += int(np.prod(qt.shape))
    return total / numel if numel else 0.0


def sensitivity(
    w2d: np.ndarray,
    group_size: int,
    symmetric: bool,
    stats: Stats,
    bits_options: Iterable[Option] = MIXED_BITS,
    outliers: int = 0,
    rotation: int = 0,
) -> dict[Option, float]:
    """err(o): summed output (or, with IdentityStats, weight) squared error of round-to-nearest for each option
    (a width at `group_size`, or a (bits, group size) pair); with `rotation` (a block size) the smaller of the
    plain and the rotated tensor's error, as the quantizer keeps the better of the two."""

    def error(deq: np.ndarray) -> float:
        return float(stats.row_error(torch.from_numpy(w2d - deq)).sum())

    return {
        o: min(error(d) for d in option_fakes(w2d, o, group_size, symmetric, outliers, rotation)) for o in bits_options
    }


def option_fakes(
    w2d: np.ndarray, option: Option, group_size: int, symmetric: bool, outliers: int = 0, rotation: int = 0
) -> list[np.ndarray]:
    """What round-to-nearest with `option` would store for w2d, dequantized: plain, and rotated too when
    `rotation` is a block size (the quantizer keeps whichever errs less)."""
    b, g = option_bits_group(option, group_size)
    spec = QuantSpec(b, g, symmetric, outliers)
    fakes = [rounded_fake(w2d, spec)]
    if rotation:
        fakes.append(rounded_fake(w2d, dataclasses.replace(spec, rotation=rotation)))
    return fakes


@dataclasses.dataclass
class Candidate:
    name: str
    numel: int
    cost: dict[Option, int]  # option (bits, or (bits, group size)) -> stored bits
    error: dict[Option, float]  # option -> sensitivity


class AllocationError(ValueError):
    """The target cannot be met (even the smallest widths exceed it)."""


def _hull(c: Candidate) -> list[Option]:
    """Options on the lower convex hull of (cost, error), cheapest first, error strictly decreasing."""
    options = sorted(c.cost, key=lambda b: (c.cost[b], b))
    pts: list[Option] = []
    for b in options:
        if pts and c.error[b] >= c.error[pts[-1]]:
            continue  # costs more and is no better
        while len(pts) >= 2:
            b1, b2 = pts[-2], pts[-1]
            # drop b2 if it lies on or above the segment b1 -> b
            lhs = (c.error[b1] - c.error[b2]) * (c.cost[b] - c.cost[b1])
            rhs = (c.error[b1] - c.error[b]) * (c.cost[b2] - c.cost[b1])
            if lhs <= rhs:
                pts.pop()
            else:
                break
        pts.append(b)
    return pts


def allocate_bits(
    candidates: list[Candidate], target_bpw: float, fixed_bits: int = 0, fixed_numel: int = 0
) -> dict[str, Option]:
    """The option (bits, or (bits, group size)) per candidate minimising the summed error with
    (fixed + chosen storage) <= target * all weights.

    `fixed_bits` / `fixed_numel`: storage and weights of quantized tensors whose bits are pinned (--keep).
    """
    numel = fixed_numel + sum(c.numel for c in candidates)
    budget = int(np.floor(target_bpw * numel)) - fixed_bits
    hulls = [_hull(c) for c in candidates]
    level = [0] * len(candidates)
    spent = sum(c.cost[h[0]] for c, h in zip(candidates, hulls))
    if spent > budget:
        lowest = (spent + fixed_bits) / numel if numel else 0.0
        raise AllocationError(
            f"target {target_bpw:.3f} bits per weight is below the smallest this model can store with these "
            f"group sizes, smallest width, embedding outlier columns and --keep pins ({lowest:.3f})"
        )

    def push(heap, i):
        h, k = hulls[i], level[i]
        if k + 1 < len(h):
            c = candidates[i]
            d_cost = c.cost[h[k + 1]] - c.cost[h[k]]
            d_err = c.error[h[k]] - c.error[h[k + 1]]
            heapq.heappush(heap, (-d_err / d_cost, i, d_cost))

    heap: list = []
    for i in range(len(candidates)):
        push(heap, i)
    while heap:
        _, i, d_cost = heapq.heappop(heap)
        if spent + d_cost > budget:
            continue  # this tensor stops here; cheaper upgrades of others may still fit
        spent += d_cost
        level[i] += 1
        push(heap, i)
    bits = [h[k] for h, k in zip(hulls, level)]
    return dict(zip((c.name for c in candidates), _exchange(candidates, bits, budget - spent)))


def _exchange(candidates: list[Candidate], bits: list[Option], left: int) -> list[Option]:
    """Local search after the hull walk: apply the best single change, or pair of changes to two tensors
    (typically one down, one up), that lowers the total error and fits the budget; repeat until none does.
    This spends what the hull walk left and fixes its coarse steps on small or uneven problems."""
    options = sorted({b for c in candidates for b in c.cost})
    n = len(candidates)
    cost = np.array([[c.cost.get(b, np.inf) for b in options] for c in candidates], dtype=np.float64)
    err = np.array([[c.error.get(b, np.inf) for b in options] for c in candidates], dtype=np.float64)
    col = {b: k for k, b in enumerate(options)}
    cur = np.array([col[b] for b in bits])
    owner = np.repeat(np.arange(n), len(options))
    for _ in range(EXCHANGE_ROUNDS):
        rows = np.arange(n)
        dc = (cost - cost[rows, cur][:, None]).ravel()  # every single change (tensor, new width)
        de = (err - err[rows, cur][:, None]).ravel()
        dc = np.append(dc, 0.0)  # ... and "no change", so single changes are pairs too
        de = np.append(de, 0.0)
        who = np.append(owner, -1)
        gain, best = _best_pair(dc, de, who, left)
        if not gain < -1e-12 * max(1.0, float(err[rows, cur].sum())):
            break
        for m in best:
            if who[m] >= 0:
                left -= int(dc[m])
                cur[who[m]] = m % len(options)
    return [options[k] for k in cur]


def _best_pair(dc: np.ndarray, de: np.ndarray, who: np.ndarray, left: float) -> tuple[float, tuple[int, int]]:
    """The pair of changes (i, j) of different tensors with the lowest summed error change whose summed cost
    change fits in `left`: (error change, (i, j)); the first such pair in row-major order on ties, so the
    search is deterministic. Computed in row blocks: memory stays O(EXCHANGE_BLOCK * changes), not
    O(changes^2), which with several group sizes on a large model would be gigabytes."""
    gain, best = np.inf, (0, 0)
    for start in range(0, dc.size, EXCHANGE_BLOCK):
        stop = min(start + EXCHANGE_BLOCK, dc.size)
        total_e = de[start:stop, None] + de[None, :]
        ok = (
            (dc[start:stop, None] + dc[None, :] <= left)
            & (who[start:stop, None] != who[None, :])
            & np.isfinite(total_e)
        )
        total_e = np.where(ok, total_e, np.inf)
        k = int(np.argmin(total_e))  # first minimum of the block
        if total_e.flat[k] < gain:  # strict: an earlier block wins ties
            gain, best = float(total_e.flat[k]), (start + k // dc.size, k % dc.size)
    return gain, best


def fixed_storage(items: Mapping[str, tuple], group_size: int, symmetric: bool) -> tuple[int, int]:
    """(stored bits, weights) of pinned tensors given name -> (shape, bits) or (shape, bits, outlier columns)."""
    total = numel = 0
    for shape, b, *rest in items.values():
        total += storage_bits(shape, b, group_size, symmetric, *rest)
        numel += int(np.prod(shape))
    return total, numel


def make_candidate(
    name: str, shape: tuple[int, ...], group_size: int, symmetric: bool, error: dict[Option, float], outliers: int = 0
) -> Candidate:
    """A tensor's options (the keys of `error`: widths at `group_size`, or (bits, group size) pairs) with
    their stored bits."""
    cost = {o: storage_bits(shape, *option_bits_group(o, group_size), symmetric, outliers) for o in error}
    return Candidate(name, int(np.prod(shape)), cost, dict(error))
