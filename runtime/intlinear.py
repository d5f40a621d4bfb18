"""Integer linear layers: y = x @ W^T with b_a-bit activation codes times the stored b_w-bit weight codes.

The activation spec of a weight (formats/activation.py, SPEC.md 5.5) says how its input is rounded to signed codes
q_x in -Q..Q (Q = 2**(b_a-1) - 1) with one float32 scale s_x per row (dynamic) or per tensor (static). The weight
is used as stored: unsigned codes q_w in 0..2**b_w - 1, a float16 scale s_w and a zero point z (2**(b_w-1) for
QSYM) per row and group of columns (SPEC.md 5.2). With G_g the columns of group g:

    y[m, n] = s_x[m] * sum_g s_w[n, g] * I[m, n, g]
    I[m, n, g] = sum_{k in G_g} q_x[m, k] * (q_w[n, k] - z[n, g]) = P[m, n, g] - z[n, g] * S[m, g]
    P[m, n, g] = sum_{k in G_g} q_x[m, k] * q_w[n, k],     S[m, g] = sum_{k in G_g} q_x[m, k]

P is the only product over the inner dimension: integer codes times integer codes, accumulated exactly. numpy's
integer matmul has no BLAS, so P is computed as float32 BLAS products over blocks of at most `block_length` columns
of a group: every product of codes is an integer of magnitude <= Q * (2**b_w - 1), so every partial sum of a block
of L columns, in whatever order and blocking the BLAS adds them (with or without fused multiply-add), is an integer
of magnitude <= L * Q * (2**b_w - 1) <= 2**24, and every such integer is a binary32 value: no sum is ever rounded.
(8-bit activations x 8-bit codes: 127 * 255 * 518 = 16,775,430 <= 2**24 < 127 * 255 * 519, so L = 518.) The
zero-point correction z * S (S the sum of the group's activation codes) is subtracted in float32 when the group
is one block (z * S and I are then integers of magnitude <= 2**24 as well: exact), otherwise the block results and
the correction are added in float64 (exact: far below 2**53). Then each group's I, as float32 (exact when
|I| <= 2**24, else rounded once), is rescaled once per output by s_w, the groups are summed in float32 in group
order, and the sum is multiplied by s_x.
`accumulate="int32"` computes P with numpy's int32 matmul instead (the plain reference; checked against 2**31).
`packed_int_linear` takes the weight's packed codes (kernel.PackedTensor) and, with the compiled kernel, computes
the rescaled group sums in C (kernel.code_products: I summed exactly in integers, converted to float32 once, then
the same float32 steps in the same order); everything around them is this module's, so it equals int_linear bit
for bit too.

Rotated weights (SPEC.md 5.4) store V = W R: the input is rotated first, x W^T = (x R) V^T, and x R is what is
quantized (QuaRot-style rotated activations). Decomposed weights (5.3) add two float terms on the activation
codes: the offset row times the codes of the non-outlier columns, and the float outlier columns times the codes of
theirs (the integer part leaves those columns out: dequantization ignores their codes).

`fake_linear` is the float simulation of the same quantization: the same activation codes, the weight's centered
codes q_w - z as float64, one float64 matmul per group (every product and partial sum is an integer below 2**53,
so exact), I rounded once to float32, then the same rescale in the same order. Its output equals `int_linear`'s
bit for bit: the same float32 bit pattern in every element (signed zeros included), because both arrive at the
same float32(I) for every group and then run identical float32 arithmetic on them. Bias, `input_scale` division,
softmax, norms and activations are the caller's (they stay float).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from ..formats.activation import ActivationSpec
from ..formats.codecs import QuantizedTensor, rotate_columns, view_2d_shape
from . import kernel

EXACT_FLOAT32_INTEGER = 1 << 24  # every integer of magnitude <= 2**24 is exactly a binary32 value
INT32_LIMIT = (1 << 31) - 1
ACCUMULATORS = ("float32", "int32")

# (codes of the group's activation columns as float32, their uint8 weight codes, block length) -> float64 P
_GroupProduct = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
# int8 activation codes (M, K), outlier columns zeroed -> float32 (M, N) sum_g float32(I_g) * s_w[:, g] in group order
_CodeProducts = Callable[[np.ndarray], np.ndarray]


class _StoredWeight(Protocol):
    """What the shared steps read of a stored weight: a QuantizedTensor, or a kernel.PackedTensor's packed views."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def rotation(self) -> int: ...
    @property
    def scales(self) -> np.ndarray: ...
    @property
    def offset(self) -> np.ndarray | None: ...
    @property
    def outlier_columns(self) -> np.ndarray | None: ...
    @property
    def outliers(self) -> np.ndarray | None: ...


def block_length(act_bits: int, weight_bits: int) -> int:
    """Largest L with L * Q * (2**weight_bits - 1) <= 2**24, Q = 2**(act_bits-1) - 1: the inner-dimension block
    over which a float32 product of codes is exact (module docstring)."""
    return EXACT_FLOAT32_INTEGER // (((1 << (act_bits - 1)) - 1) * ((1 << weight_bits) - 1))


def quantize_activations(x: np.ndarray, spec: ActivationSpec) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 (M, K) in -Q..Q, scales float32 (M,)) for x (M, K): q = clip(rint(x / s), -Q, Q), rint rounding
    half to even, all in float32. Dynamic: s = max|x_row| / Q per row (a zero row gets s = 0 and zero codes).
    Static: the spec's scale for every row; values beyond Q * s are clipped."""
    x = np.asarray(x, dtype=np.float32)
    qmax = np.float32(spec.qmax)
    rows = x.shape[0]
    if spec.scale is not None:
        s = np.full(rows, np.float32(spec.scale), dtype=np.float32)
    else:
        s = (np.abs(x).max(axis=1, initial=np.float32(0)) / qmax).astype(np.float32)
    safe = np.where(s == 0, np.float32(1), s)
    q = np.rint(x / safe[:, None])
    np.clip(q, -qmax, qmax, out=q)
    return q.astype(np.int8), s


def int_linear(
    x: np.ndarray, qt: QuantizedTensor, spec: ActivationSpec, *, accumulate: str = "float32", block: int = 0
) -> np.ndarray:
    """x (..., K) @ W^T -> float32 (..., N) with integer activations and weight codes accumulated exactly.

    `qt` is the weight as stored (any rank; its 2-D view (N, K) is used; rotated or decomposed), `x` its input after
    any `input_scale` division and before rotation (rotated weights rotate x here). `block` overrides the block
    length (tests); it must not exceed block_length(spec.bits, qt.bits)."""
    if accumulate not in ACCUMULATORS:
        raise ValueError(f"accumulate must be one of {ACCUMULATORS}, got {accumulate!r}")
    limit = block_length(spec.bits, qt.bits)
    if block > limit:
        raise ValueError(f"block {block} exceeds {limit}, the exact float32 block for {spec.bits}x{qt.bits} bits")
    product = _product_float32 if accumulate == "float32" else _product_int32
    return _linear(
        x, qt, spec, _rescaled(qt, lambda coded, zeros: _integer_groups(coded, qt, zeros, product, block or limit))
    )


def packed_int_linear(x: np.ndarray, t: kernel.PackedTensor, spec: ActivationSpec) -> np.ndarray:
    """int_linear on a weight's packed codes: the compiled kernel's integer products (kernel.code_products) when
    `kernel.available()`, else int_linear on the unpacked codes. The same float32 bits either way."""
    if not kernel.available():
        return int_linear(x, t.quantized(), spec)
    return _linear(x, t, spec, lambda coded: kernel.code_products(coded, t))


def fake_linear(x: np.ndarray, qt: QuantizedTensor, spec: ActivationSpec) -> np.ndarray:
    """The float simulation of int_linear's quantization: activation codes times the weight's centered codes,
    float64 matmuls (exact), the same rescale. Equal to int_linear bit for bit (module docstring)."""
    return _linear(x, qt, spec, _rescaled(qt, lambda coded, zeros: _centered_groups(coded, qt, zeros)))


def _linear(x: np.ndarray, weight: _StoredWeight, spec: ActivationSpec, products: _CodeProducts) -> np.ndarray:
    """The steps every route shares around `products`: rotate, quantize x, zero the outlier columns' codes; then
    add the decomposition terms and multiply by s_x."""
    n, k = view_2d_shape(weight.shape)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the weight {weight.shape} takes {k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if weight.rotation:
        x2 = rotate_columns(x2, weight.rotation)
    qx, sx = quantize_activations(x2, spec)
    coded = qx
    if weight.outlier_columns is not None and weight.outlier_columns.size:
        coded = qx.copy()
        coded[:, weight.outlier_columns] = 0  # dequantization ignores these codes; the outlier term covers them
    acc = products(coded)
    if weight.offset is not None:
        acc += _decomposition_terms(qx, coded, weight).astype(np.float32)
    acc *= sx[:, None]
    return acc.reshape(lead + (n,))


def _rescaled(qt: QuantizedTensor, groups: Callable[[np.ndarray, np.ndarray], Iterator[np.ndarray]]) -> _CodeProducts:
    """The numpy products: each group's float32(I) from `groups(coded, zero points)`, times s_w, summed in group
    order from +0.0 (the arithmetic kernel.code_products repeats in C)."""

    def products(coded: np.ndarray) -> np.ndarray:
        acc = np.zeros((coded.shape[0], qt.shape[0]), dtype=np.float32)
        s_w = qt.scales.astype(np.float32)
        for g, i_g in enumerate(groups(coded, _zero_points(qt))):
            i_g *= s_w[None, :, g]  # one rescale per output and group
            acc += i_g
        return acc

    return products


def _zero_points(qt: QuantizedTensor) -> np.ndarray:
    """float64 (N, n_groups) zero points: stored (QASYM) or 2**(bits-1) (QSYM)."""
    if qt.zeros is not None:
        return qt.zeros.astype(np.float64)
    return np.full(qt.scales.shape, float(1 << (qt.bits - 1)))


def _group_bounds(cols: int, group_size: int) -> Iterator[tuple[int, int]]:
    for c0 in range(0, cols, group_size):
        yield c0, min(cols, c0 + group_size)


def _integer_groups(
    coded: np.ndarray, qt: QuantizedTensor, zeros: np.ndarray, product: _GroupProduct, block: int
) -> Iterator[np.ndarray]:
    """Per group, float32(I), I = P - z * S, with P from `product` on the raw unsigned weight codes. A group of
    one block has P, z * S and I all integers of magnitude <= 2**24, so float32 subtracts exactly; a longer group
    comes as float64 (exact) and is rounded once to float32 like the simulation's I."""
    codes = qt.codes.reshape(qt.codes.shape[0], -1)
    for g, (c0, c1) in enumerate(_group_bounds(codes.shape[1], qt.group_size)):
        xg = coded[:, c0:c1]
        p = product(xg, codes[:, c0:c1], block)
        s = xg.sum(axis=1, dtype=np.int64).astype(p.dtype)  # S: exact (<= Q * group length)
        p -= np.multiply.outer(s, zeros[:, g].astype(p.dtype))
        yield p.astype(np.float32, copy=False)


def _product_float32(xg: np.ndarray, wg: np.ndarray, block: int) -> np.ndarray:
    """P over one group: float32 BLAS products of `block` columns at a time (each exact); float32 when the group
    is one block, else the blocks summed in float64."""
    xf = xg.astype(np.float32)
    if xg.shape[1] <= block:
        return xf @ wg.astype(np.float32).T
    p = np.zeros((xg.shape[0], wg.shape[0]), dtype=np.float64)
    for b0 in range(0, xg.shape[1], block):
        b1 = b0 + block
        p += xf[:, b0:b1] @ wg[:, b0:b1].astype(np.float32).T
    return p


def _product_int32(xg: np.ndarray, wg: np.ndarray, block: int) -> np.ndarray:
    """P over one group with numpy's int32 matmul (no BLAS: the plain reference accumulation)."""
    bound = int(np.abs(xg).max(initial=0)) * int(wg.max(initial=0)) * xg.shape[1]
    if bound > INT32_LIMIT:
        raise OverflowError(f"a group of {xg.shape[1]} columns can reach {bound}, beyond int32")
    return (xg.astype(np.int32) @ wg.astype(np.int32).T).astype(np.float64)


def _centered_groups(coded: np.ndarray, qt: QuantizedTensor, zeros: np.ndarray) -> Iterator[np.ndarray]:
    """Per group, float32(I), I = codes @ (q_w - z)^T in float64 (exact): the simulation's route to the same
    integers."""
    codes = qt.codes.reshape(qt.codes.shape[0], -1)
    for g, (c0, c1) in enumerate(_group_bounds(codes.shape[1], qt.group_size)):
        centered = codes[:, c0:c1].astype(np.float64) - zeros[:, g : g + 1]
        yield (coded[:, c0:c1].astype(np.float64) @ centered.T).astype(np.float32)


def _decomposition_terms(qx: np.ndarray, coded: np.ndarray, weight: _StoredWeight) -> np.ndarray:
    """float64 (M, N) in activation-code units: offset . codes of the non-outlier columns (the same for every
    output) plus the outlier columns' float values times their codes (SPEC.md 5.3)."""
    assert weight.offset is not None and weight.outlier_columns is not None and weight.outliers is not None
    offset_term = coded.astype(np.float64) @ weight.offset.astype(np.float64)  # (M,)
    out = np.repeat(offset_term[:, None], weight.shape[0], axis=1)
    if weight.outlier_columns.size:
        out += qx[:, weight.outlier_columns].astype(np.float64) @ weight.outliers.astype(np.float64).T
    return out
