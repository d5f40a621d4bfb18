"""Paired quantize / dequantize functions for the uniform integer encodings.

A weight of any rank is quantized as its 2-D view (rows = shape[0], cols = product of the rest), in groups
of `group_size` consecutive columns (the input dimension) per row; the last group of a row may be shorter.
Dequantization is w = (q - zero) * scale, zero = 2**(bits-1) for symmetric codes. A "decomposed" tensor
(SPEC.md section 5.3) also stores a float32 offset added to every row and a few columns kept in float16,
which replace whatever the codes of those columns say (`apply_decomposition`). A "rotated" tensor (section 5.4)
stores the codes of W R, R an orthogonal block Hadamard transform with fixed signs; dequantization applies R^T
(`unrotate_columns`), so every consumer sees W's approximation.

Algorithms that choose codes and scales themselves (GPTQ, AWQ, clipping search) build a QuantizedTensor
directly, using `quantize_with_scales` to turn their float scales into codes; this module never searches.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .constants import MAX_BITS, MIN_BITS, VQ_DIMS, VQ_MAX_INDEX_BITS, VQ_MIN_INDEX_BITS, Encoding


def view_2d_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the 2-D view a tensor of `shape` is quantized as."""
    if len(shape) < 2:
        raise ValueError(f"only tensors with 2 or more dimensions are quantized, got shape {tuple(shape)}")
    return int(shape[0]), math.prod(int(d) for d in shape[1:])  # Python ints: no int64 overflow


def n_groups(cols: int, group_size: int) -> int:
    return -(-cols // group_size)


def resolve_group_size(cols: int, group_size: int) -> int:
    """Group size actually used: 0 (or anything >= cols) means one group per row (per-channel)."""
    if group_size < 0:
        raise ValueError(f"group size must be >= 0, got {group_size}")
    return cols if group_size == 0 or group_size >= cols else int(group_size)


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """Unpacked integer codes with their group scales (and zero points when asymmetric).

    Decomposed (offset given): the dequantized 2-D view gets `offset` added to every row, then its
    `outlier_columns` are replaced by `outliers` (SPEC.md section 5.3). The codes at those columns are stored
    but ignored.
    """

    shape: tuple[int, ...]
    bits: int
    group_size: int  # columns per group in the 2-D view; == cols for per-channel
    codes: np.ndarray  # uint8 (rows, cols), each < 2**bits
    scales: np.ndarray  # float16 (rows, n_groups)
    zeros: np.ndarray | None = None  # uint8 (rows, n_groups) for asymmetric codes, None for symmetric
    offset: np.ndarray | None = None  # float32 (cols,): added to every row of the 2-D view; None = not decomposed
    outlier_columns: np.ndarray | None = None  # int64 (k,), k >= 0, strictly increasing, each < cols
    outliers: np.ndarray | None = None  # float16 (rows, k): the values of those columns
    rotation: int = 0  # block size of the Hadamard rotation the codes are stored under (SPEC.md 5.4); 0 = none

    def __post_init__(self) -> None:
        rows, cols = view_2d_shape(self.shape)
        if not (MIN_BITS <= self.bits <= MAX_BITS):
            raise ValueError(f"bits must be {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not (1 <= self.group_size <= cols):
            raise ValueError(f"group size {self.group_size} outside 1..{cols}")
        ng = n_groups(cols, self.group_size)
        if self.codes.shape != (rows, cols) or self.codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8 {(rows, cols)}, got {self.codes.dtype} {self.codes.shape}")
        if self.scales.shape != (rows, ng) or self.scales.dtype != np.float16:
            raise ValueError(f"scales must be float16 {(rows, ng)}, got {self.scales.dtype} {self.scales.shape}")
        if self.zeros is not None and (self.zeros.shape != (rows, ng) or self.zeros.dtype != np.uint8):
            raise ValueError(f"zeros must be uint8 {(rows, ng)}")
        validate_decomposition(self.shape, self.offset, self.outlier_columns, self.outliers)
        validate_rotation(cols, self.rotation, self.decomposed)

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def decomposed(self) -> bool:
        """True when the tensor stores an offset row and float outlier columns (layout revision 2)."""
        return self.offset is not None

    @property
    def encoding(self) -> Encoding:
        return Encoding.QSYM if self.symmetric else Encoding.QASYM


@dataclasses.dataclass(frozen=True)
class CodebookTensor:
    """Vector-quantized weight (encoding VQ, SPEC.md 5.6): each row of the 2-D view is cut into vectors of `dim`
    consecutive columns, and each vector is stored as an index into a codebook of 2**index_bits float16 vectors.
    Rows share a codebook in bands of `rows_per_book` (the last band may be shorter); every `group_size` columns
    of a row share one float16 scale, as the scalar encodings do:

        w[r, v*dim : (v+1)*dim] = codebooks[r // rows_per_book, indices[r, v]] * scales[r, (v*dim) // group_size]

    A rotated tensor (SPEC.md 5.4) stores the codes of W R, as for the scalar encodings.
    """

    shape: tuple[int, ...]
    dim: int  # weights per vector: 2, 4 or 8; divides cols and group_size
    index_bits: int  # bits per stored index, VQ_MIN_INDEX_BITS..VQ_MAX_INDEX_BITS
    group_size: int  # columns per scale group (a multiple of dim); == cols for one scale per row
    rows_per_book: int  # rows sharing one codebook; == rows for one codebook per tensor
    indices: np.ndarray  # uint16 (rows, cols // dim), each < 2**index_bits
    codebooks: np.ndarray  # float16 (n_books, 2**index_bits, dim), n_books = ceil(rows / rows_per_book)
    scales: np.ndarray  # float16 (rows, n_groups(cols, group_size))
    rotation: int = 0  # block size of the Hadamard rotation the codes are stored under; 0 = none

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError unless every field fits the others. Runs when built; the writer runs it again, because the
        arrays stay mutable."""
        rows, cols = view_2d_shape(self.shape)
        if self.dim not in VQ_DIMS:
            raise ValueError(f"vector dimension must be one of {VQ_DIMS}, got {self.dim}")
        if not (VQ_MIN_INDEX_BITS <= self.index_bits <= VQ_MAX_INDEX_BITS):
            raise ValueError(f"index bits must be {VQ_MIN_INDEX_BITS}..{VQ_MAX_INDEX_BITS}, got {self.index_bits}")
        if cols % self.dim or not (1 <= self.group_size <= cols) or self.group_size % self.dim:
            raise ValueError(f"dim {self.dim} must divide the {cols} columns and the group size {self.group_size}")
        if not (1 <= self.rows_per_book <= max(rows, 1)):
            raise ValueError(f"rows per codebook {self.rows_per_book} outside 1..{rows}")
        books = -(-rows // self.rows_per_book)
        want = {
            "indices": ((rows, cols // self.dim), np.uint16),
            "codebooks": ((books, 1 << self.index_bits, self.dim), np.float16),
            "scales": ((rows, n_groups(cols, self.group_size)), np.float16),
        }
        for what, (shape, dtype) in want.items():
            arr = getattr(self, what)
            if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{what} must be {np.dtype(dtype)} {shape}, got {got}")
        if self.indices.size and int(self.indices.max()) >= 1 << self.index_bits:
            raise ValueError(f"indices out of range for {self.index_bits} bits")
        validate_rotation(cols, self.rotation)

    @property
    def encoding(self) -> Encoding:
        return Encoding.VQ


def dequantize_codebook(ct: CodebookTensor) -> np.ndarray:
    """float32 array of the original shape: the reference decoder of the VQ encoding (SPEC.md 5.6)."""
    rows, cols = view_2d_shape(ct.shape)
    book_of_row = np.arange(rows) // ct.rows_per_book
    vectors = ct.codebooks[book_of_row[:, None], ct.indices.astype(np.intp)]  # (rows, cols // dim, dim)
    out = vectors.reshape(rows, cols).astype(np.float32)
    out *= _expand(ct.scales.astype(np.float32), ct.group_size, cols)
    if ct.rotation:
        out = unrotate_columns(out, ct.rotation)
    return out.reshape(ct.shape)


def validate_decomposition(
    shape: tuple[int, ...], offset: np.ndarray | None, outlier_columns: np.ndarray | None, outliers: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """ValueError unless the three decomposition fields fit a quantized tensor of `shape` (all None, or: offset
    float32 (cols,), outlier_columns int64 (k,) strictly increasing in 0..cols-1, outliers float16 (rows, k)).
    Returns (offset, outlier_columns, outliers) of a decomposed tensor, None for one that is not.

    QuantizedTensor checks this when built; the writer checks again because numpy arrays stay mutable.
    Values are not checked for finiteness here (the writer and reader do that, as for scales).
    """
    rows, cols = view_2d_shape(shape)
    if offset is None:
        if outlier_columns is not None or outliers is not None:
            raise ValueError("outlier_columns and outliers need an offset (a tensor without one is not decomposed)")
        return None
    if outlier_columns is None or outliers is None:
        raise ValueError("a decomposed tensor (offset given) needs outlier_columns and outliers (k may be 0)")
    for what, arr in (("offset", offset), ("outlier_columns", outlier_columns), ("outliers", outliers)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{what} must be a numpy array, got {type(arr).__name__}")
    if offset.shape != (cols,) or offset.dtype != np.float32:
        raise ValueError(f"offset must be float32 {(cols,)}, got {offset.dtype} {offset.shape}")
    if outlier_columns.ndim != 1 or outlier_columns.dtype != np.int64:
        raise ValueError(f"outlier_columns must be int64 (k,), got {outlier_columns.dtype} {outlier_columns.shape}")
    k = outlier_columns.shape[0]
    if outliers.shape != (rows, k) or outliers.dtype != np.float16:
        raise ValueError(f"outliers must be float16 {(rows, k)}, got {outliers.dtype} {outliers.shape}")
    if k and (outlier_columns[0] < 0 or outlier_columns[-1] >= cols or (np.diff(outlier_columns) <= 0).any()):
        raise ValueError(
            f"outlier_columns must be strictly increasing column indices in 0..{cols - 1}, "
            f"got {outlier_columns[:20].tolist()}"
        )
    return offset, outlier_columns, outliers


def validate_rotation(cols: int, block: int, decomposed: bool = False) -> None:
    """ValueError unless `block` is 0 (no rotation) or a power of two >= 2 that divides `cols` of a tensor that is
    not decomposed (SPEC.md 5.4). QuantizedTensor checks this when built; the writer checks again (its fields
    stay assignable)."""
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise ValueError(f"rotation block must be an integer, got {type(block).__name__}")
    if block and (block < 2 or block & (block - 1) or cols % block):
        raise ValueError(f"rotation block {block} must be a power of two >= 2 dividing the {cols} columns")
    if block and decomposed:
        raise ValueError("a tensor is either decomposed or rotated, not both")


def rotation_signs(cols: int) -> np.ndarray:
    """float32 (cols,) of +-1: the fixed sign of each column of a rotated tensor (SPEC.md 5.4). Column j is
    negated when the lowest bit of lowbias32(j mod 2**32) is set (a 32-bit integer hash, so the signs look
    random to the weights but need no storage and no random number generator)."""
    x = np.arange(cols, dtype=np.uint64).astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return np.where(x & np.uint32(1), np.float32(-1), np.float32(1))


def _hadamard_blocks(w2d: np.ndarray, block: int) -> np.ndarray:
    """float32 (rows, cols): each row's consecutive `block` columns multiplied by the normalised Sylvester
    Hadamard matrix H_b / sqrt(b) (symmetric and its own inverse), by log2(b) butterfly stages in float32."""
    rows, cols = w2d.shape
    x = np.array(w2d, dtype=np.float32).reshape(rows, cols // block, block)
    h = 1
    while h < block:
        v = x.reshape(rows, cols // block, block // (2 * h), 2, h)
        a, c = v[:, :, :, 0, :], v[:, :, :, 1, :]
        x = np.stack([a + c, a - c], axis=3).reshape(rows, cols // block, block)
        h *= 2
    x *= np.float32(1.0 / math.sqrt(block))
    return x.reshape(rows, cols)


def rotate_columns(w2d: np.ndarray, block: int) -> np.ndarray:
    """W R: what a rotated tensor's codes represent (column signs flipped, then each block transformed)."""
    return _hadamard_blocks(np.asarray(w2d, dtype=np.float32) * rotation_signs(w2d.shape[1]), block)


def unrotate_columns(v2d: np.ndarray, block: int) -> np.ndarray:
    """V R^T: the weight a rotated tensor stands for, from the dequantized values V of its codes (each block
    transformed, then the column signs flipped). Exact inverse of rotate_columns up to float32 rounding."""
    out = _hadamard_blocks(v2d, block)
    out *= rotation_signs(v2d.shape[1])
    return out


def apply_decomposition(
    w2d: np.ndarray, offset: np.ndarray, outlier_columns: np.ndarray, outliers_rows: np.ndarray
) -> np.ndarray:
    """Steps 2 and 3 of decomposed dequantization (SPEC.md 5.3), in place on a float32 row range; returns it.

    `w2d` holds rows [a, b) of (q - zero) * scale; `outliers_rows` the same rows of the outlier values. Every
    reader path applies exactly this, so a full read, a row slice and codecs.dequantize agree bit for bit.
    """
    rows, cols = w2d.shape
    k = outlier_columns.shape[0]
    if w2d.dtype != np.float32 or offset.shape != (cols,) or outliers_rows.shape != (rows, k):
        raise ValueError(
            f"apply_decomposition: float32 rows {w2d.dtype} {w2d.shape} do not fit an offset of "
            f"{offset.shape} and outliers of {outliers_rows.shape}"
        )
    np.add(w2d, offset.astype(np.float32, copy=False), out=w2d)  # float32 addition, rounded once
    if k:
        w2d[:, outlier_columns] = outliers_rows.astype(np.float32)  # float16 -> float32 is exact
    return w2d


def _grouped(x: np.ndarray, group_size: int) -> tuple[np.ndarray, int]:
    """(rows, cols) -> (rows, n_groups, group_size), padding the last group with zeros; returns pad."""
    rows, cols = x.shape
    ng = n_groups(cols, group_size)
    pad = ng * group_size - cols
    if pad:
        x = np.concatenate([x, np.zeros((rows, pad), dtype=x.dtype)], axis=1)
    return x.reshape(rows, ng, group_size), pad


def _expand(per_group: np.ndarray, group_size: int, cols: int) -> np.ndarray:
    return np.repeat(per_group, group_size, axis=1)[:, :cols]


def quantize_with_scales(
    w2d: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, group_size: int
) -> np.ndarray:
    """Codes for a 2-D weight given per-group scales (already float16) and optional zero points."""
    w2d = np.asarray(w2d, dtype=np.float32)
    rows, cols = w2d.shape
    s = scales.astype(np.float32)
    z = np.full(s.shape, 1 << (bits - 1), np.float32) if zeros is None else zeros.astype(np.float32)
    safe = np.where(s == 0, np.float32(1), s)
    g, pad = _grouped(w2d, group_size)
    q = np.rint(g / safe[:, :, None]) + z[:, :, None]
    codes = np.clip(q, 0, (1 << bits) - 1).astype(np.uint8).reshape(rows, g.shape[1] * group_size)  # rows may be 0
    return np.ascontiguousarray(codes[:, :cols])


def rtn_scales(
    w2d: np.ndarray, bits: int, group_size: int, symmetric: bool, clip: np.ndarray | float = 1.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Round-to-nearest scales (float16) and zero points for each group, after shrinking ranges by `clip`.

    Symmetric: the signed value of largest magnitude m maps to code 0, scale = -m / 2**(bits-1), so all
    2**bits levels are used. Asymmetric: the range [min(w, 0), max(w, 0)] spans codes 0 .. 2**bits - 1.
    """
    w2d = np.asarray(w2d, dtype=np.float32)
    g, _ = _grouped(w2d, group_size)
    # float64 for the range arithmetic: a tiny non-zero range must not underflow to a zero scale.
    clip = np.asarray(clip, dtype=np.float64)
    if clip.ndim:
        clip = clip.reshape(g.shape[0], g.shape[1])
    if symmetric:
        idx = np.abs(g).argmax(axis=2)
        m = np.take_along_axis(g, idx[:, :, None], axis=2)[:, :, 0].astype(np.float64) * clip
        return _to_f16_outward(-m / (1 << (bits - 1))), None
    lo = np.minimum(g.min(axis=2), 0).astype(np.float64) * clip
    hi = np.maximum(g.max(axis=2), 0).astype(np.float64) * clip
    s = _to_f16_outward((hi - lo) / ((1 << bits) - 1))
    s64 = s.astype(np.float64)
    z = np.where(s64 == 0, 0, np.rint(-lo / np.where(s64 == 0, 1, s64)))
    return s, np.clip(z, 0, (1 << bits) - 1).astype(np.uint8)


def _to_f16_outward(s: np.ndarray) -> np.ndarray:
    """float16 scales rounded away from zero, so a rounded scale never shrinks the range it must cover."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(over="ignore"):  # an out-of-range scale becomes inf and is reported just below
        h = s.astype(np.float16)
    short = np.abs(h.astype(np.float64)) < np.abs(s)
    h[short] = np.nextafter(h[short], np.copysign(np.float16(np.inf), h[short]))
    return _finite_f16(h)


def _finite_f16(s: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(s)):
        raise ValueError("weight range does not fit float16 scales (values beyond 65504 or not finite)")
    return s


def quantize(w: np.ndarray, bits: int, group_size: int = 0, symmetric: bool = True) -> tuple[QuantizedTensor, float]:
    """Round-to-nearest quantization. Returns the tensor and the max abs error it achieves."""
    w = np.asarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize a tensor with NaN or infinite values")
    rows, cols = view_2d_shape(w.shape)
    if cols == 0:
        raise ValueError(f"cannot quantize a tensor with no columns, shape {w.shape}")
    gs = resolve_group_size(cols, group_size)
    w2d = w.reshape(rows, cols)
    scales, zeros = rtn_scales(w2d, bits, gs, symmetric)
    codes = quantize_with_scales(w2d, scales, zeros, bits, gs)
    qt = QuantizedTensor(tuple(int(d) for d in w.shape), int(bits), gs, codes, scales, zeros)
    err = float(np.abs(dequantize(qt).reshape(rows, cols) - w2d).max()) if w.size else 0.0
    return qt, err


def error_bound(qt: QuantizedTensor) -> np.ndarray:
    """Per-group bound on |w - dequantize(q)| for round-to-nearest codes of weights inside the coded range.

    Half a step for values inside the range; the symmetric encoding has one level more below zero than above,
    so its positive extreme can be a whole step off.
    """
    s = np.abs(qt.scales.astype(np.float32))
    return s if qt.symmetric else s / 2


def dequantize_rows(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, group_size: int
) -> np.ndarray:
    """float32 (rows, cols) from unpacked codes of a row range and the matching scales / zero points."""
    rows, cols = codes.shape
    s = scales.astype(np.float32)
    z = np.float32(1 << (bits - 1)) if zeros is None else zeros.astype(np.float32)[:, :, None]
    if cols % group_size == 0:
        q = codes.reshape(rows, cols // group_size, group_size).astype(np.float32)  # rows may be 0
        q -= z
        q *= s[:, :, None]
        return q.reshape(rows, cols)
    zz = np.float32(1 << (bits - 1)) if zeros is None else _expand(zeros.astype(np.float32), group_size, cols)
    return (codes.astype(np.float32) - zz) * _expand(s, group_size, cols)


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """float32 array of the original shape (SPEC.md 5.2; 5.3 for a decomposed tensor, 5.4 for a rotated one)."""
    out = dequantize_rows(qt.codes, qt.scales, qt.zeros, qt.bits, qt.group_size)
    if qt.offset is not None and qt.outlier_columns is not None and qt.outliers is not None:  # decomposed
        apply_decomposition(out, qt.offset, qt.outlier_columns, qt.outliers)
    if qt.rotation:
        out = unrotate_columns(out, qt.rotation)
    return out.reshape(qt.shape)


# Rows per step of the fused dequantizer: small enough that a step's codes and floats stay in L2 cache.
_DEQUANT_BLOCK_ELEMENTS = 1 << 16


def dequantize_packed(
    packed: np.ndarray,
    scales: np.ndarray,
    packed_zeros: np.ndarray | None,
    bits: int,
    cols: int,
    group_size: int,
    *,
    offset: np.ndarray | None = None,
    outlier_columns: np.ndarray | None = None,
    outliers: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (rows, cols) straight from packed code rows, in cache-sized row blocks.

    Equal to dequantize_rows(unpack_codes(...)) bit for bit, several times faster: for 2, 4 and 8 bits the codes
    are shifted and masked straight into the float output, and each block is scaled while it is still in cache.
    With `offset` (a decomposed tensor; `outliers` holds the same rows as `packed`), each block also gets
    apply_decomposition while in cache, so the result equals codecs.dequantize bit for bit.
    """
    from . import packing  # codecs does not otherwise depend on the bit layout

    rows = packed.shape[0]
    ng = n_groups(cols, group_size)
    decomposition = None
    if offset is not None:
        if outlier_columns is None or outliers is None:
            raise ValueError("a decomposed tensor (offset given) needs outlier_columns and outliers (k may be 0)")
        decomposition = (offset, outlier_columns, outliers)
    out = np.empty((rows, cols), dtype=np.float32)
    if rows == 0 or cols == 0:
        return out
    step = max(1, _DEQUANT_BLOCK_ELEMENTS // cols)
    direct = 8 % bits == 0 and cols % (8 // bits) == 0  # whole bytes per row: shift straight into the output
    per_byte = 8 // bits if direct else 0
    mask = np.uint8((1 << bits) - 1)
    tmp = np.empty((min(step, rows), packed.shape[1] if direct else 0), dtype=np.uint8)  # the direct path's buffer
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        o = out[r0:r1]
        if direct:
            p = packed[r0:r1, : cols // per_byte]
            t = tmp[: r1 - r0, : p.shape[1]]
            o3 = o.reshape(r1 - r0, -1, per_byte)  # (r, bytes, codes per byte)
            for k in range(per_byte):
                np.right_shift(p, bits * k, out=t)
                if bits < 8:
                    np.bitwise_and(t, mask, out=t)
                o3[:, :, k] = t
        else:
            o[...] = packing.unpack_codes(packed[r0:r1], bits, cols)
        s = scales[r0:r1].astype(np.float32)
        if packed_zeros is None:
            z = np.float32(1 << (bits - 1))
            zg = None
        else:
            zg = packing.unpack_codes(packed_zeros[r0:r1], bits, ng).astype(np.float32)
        if cols % group_size == 0:
            og = o.reshape(r1 - r0, ng, group_size)
            og -= z if zg is None else zg[:, :, None]
            og *= s[:, :, None]
        else:
            o -= z if zg is None else _expand(zg, group_size, cols)
            o *= _expand(s, group_size, cols)
        if decomposition is not None:
            apply_decomposition(o, decomposition[0], decomposition[1], decomposition[2][r0:r1])
    return out


def dequantize_codebook_packed(
    packed: np.ndarray,
    book_of_row: np.ndarray,
    codebooks: np.ndarray,
    scales: np.ndarray,
    dim: int,
    index_bits: int,
    cols: int,
    group_size: int,
) -> np.ndarray:
    """float32 (rows, cols) of a codebook tensor's row range straight from its packed index rows (SPEC.md 5.6),
    before any rotation is undone; `book_of_row` holds the codebook number of each of those rows, `scales` their
    scales. Equal to dequantize_codebook bit for bit: per cache-sized block of rows the indices are unpacked, the
    vectors gathered by one fancy index into the codebooks and multiplied in float32 by their group's scale
    (float16 -> float32 is exact, so the product is rounded once, as in the reference)."""
    from . import packing  # codecs does not otherwise depend on the bit layout

    rows = packed.shape[0]
    n_vec = cols // dim
    out = np.empty((rows, cols), dtype=np.float32)
    if rows == 0 or cols == 0:
        return out
    book_len = 1 << index_bits
    vectors_per_group = group_size // dim
    first = int(book_of_row.min())
    # The codebooks these rows use, in float32 once per call (float16 -> float32 is exact): gathering float32
    # vectors and scaling them in place is several times faster than converting float16 per element.
    table = codebooks[first : int(book_of_row.max()) + 1].astype(np.float32).reshape(-1, dim)
    step = max(1, _DEQUANT_BLOCK_ELEMENTS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        flat = packing.unpack_indices(packed[r0:r1], index_bits, n_vec).astype(np.intp)
        flat += (book_of_row[r0:r1, None].astype(np.intp) - first) * book_len
        o = out[r0:r1].reshape(r1 - r0, n_vec, dim)
        np.take(table, flat, axis=0, out=o)
        s = scales[r0:r1].astype(np.float32)
        if n_vec % vectors_per_group == 0:  # whole groups: broadcast each scale over its group's vectors
            o.reshape(r1 - r0, s.shape[1], vectors_per_group, dim)[...] *= s[:, :, None, None]
        else:
            o *= np.repeat(s, vectors_per_group, axis=1)[:, :n_vec, None]
    return out
