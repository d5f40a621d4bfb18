"""Products with quantized weights computed on their packed codes: an optional compiled kernel and its numpy twin.

`matmul(x, t)` is x @ W^T for a quantized tensor `t` as stored (SPEC.md 5): packed 2..8-bit codes, float16 group
scales, packed zero points when asymmetric, decomposed (offset row + float16 outlier columns) or rotated (codes
of W R, the inputs rotated instead). `matmul_int8(x, t)` is the integer path: x quantized to int8 per block of
`act_block` columns on the fly, integer dot products, one rescale per (block, group) segment.

The compiled kernel (runtime/_kernel/wq_kernel.c, a CPython extension built at install when a C compiler is
present; `pip install -e .` rebuilds it in place after an edit) is used when `available()`; otherwise, or with
WAVQ_NO_KERNEL=1, the same functions run their numpy reference. What each path promises against the other:

* dequantize: bit for bit (the same float32 operations in the same order, SPEC.md 5.2 / 5.3).
* matmul, float path: both sum the same terms x * w, w dequantized exactly as numpy does it; only the summation
  order (and BLAS's fused multiply-adds) differ, so |kernel - numpy| stays within `float_error_bound`,
  (2 cols + 16) * eps32 * (|x| @ |W|^T).
* matmul_int8: bit for bit. Integer: the int8 activation codes, the (code - zero point) differences and their
  int32 segment sums. Float (float32, each step rounded once, in this order): the activation scales
  amax / 127 and inverses 127 / amax, the rounding x * inverse -> code (half to even), and per segment
  y = y + float(sum) * (weight scale * activation scale), segments in increasing column order. A decomposed
  tensor's offset row and outlier columns stay float (numpy, shared by both paths); its codes at the outlier
  columns meet zeroed activations.

Large row counts (the encoder's 1500 frames) go to BLAS on weight tiles the kernel dequantizes: the kernel's own
loops are written for the few rows of a decoding step. matmul_int8 has no such split: at encoder sizes it runs
several times slower than BLAS (benchmarks/results/kernel.md), so it is meant for decoding steps.

`code_products(qx, t)` is the integer products of a weight with an activation spec (runtime/intlinear.py, whose
docstring states the contract; intlinear.int_linear is its numpy twin, equal bit for bit): activation codes
already made, exact integer group sums, one float32 rescale per group. It unpacks a tile of weight rows once
into centered int16 codes and reuses it for every input row, so it serves a decoding step's few rows and the
encoder's 1500 alike. Its inner loop is AVX2 where the CPU has it (vpmaddwd on int16 codes; vpmaddubsw on bytes
when the weight and activation codes are small enough for exact int16 sums, e.g. 4-bit weights), else a plain
loop.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..formats import WqFile, codecs, packing

try:
    from . import _wq_kernel  # type: ignore[attr-defined]
except ImportError:  # not built: no compiler at install time, or a source checkout without `pip install -e .`
    _wq_kernel = None

DISABLE_ENV = "WAVQ_NO_KERNEL"
THREADS_ENV = "WAVQ_KERNEL_THREADS"
# One thread by default: splitting output rows over two measured no faster than one on the 2-core machine while
# other work shared it (benchmarks/results/kernel.md); WAVQ_KERNEL_THREADS=2 turns the split on.
DEFAULT_THREADS = 1
ACT_BLOCK = 32  # activation columns per int8 scale, as ggml's Q8_0 blocks
ACT_LEVELS = 127  # int8 activation codes are symmetric: -127..127
# At most this many input rows go through the kernel's row-by-row loops (a decoding step: one row per beam); more
# go to BLAS on dequantized tiles, which measured faster from about 8 rows on (benchmarks/results/kernel.md).
SMALL_M = 8
# Float32 elements per dequantized weight tile of the large-M path (2 MiB): narrower tiles left BLAS measurably
# slower on 1500 x 2048 inputs, and the tile is small next to the model.
TILE_ELEMENTS = 1 << 19
_LANES = 16  # the kernel's independent partial sums per dot product (wq_kernel.c LANES)


@dataclasses.dataclass(frozen=True)
class PackedTensor:
    """A quantized tensor's stored parts (SPEC.md 5) in its 2-D view: what the kernel reads, never unpacked."""

    codes: np.ndarray  # uint8 (rows, row_bytes(cols, bits))
    scales: np.ndarray  # float16 (rows, n_groups)
    zeros: np.ndarray | None  # uint8 (rows, row_bytes(n_groups, bits)) for QASYM, None for QSYM
    bits: int
    cols: int
    group_size: int
    offset: np.ndarray | None = None  # decomposed: float32 (cols,)
    outlier_columns: np.ndarray | None = None  # decomposed: int64 (k,)
    outliers: np.ndarray | None = None  # decomposed: float16 (rows, k)
    rotation: int = 0  # Hadamard block size of a rotated tensor (SPEC.md 5.4), 0 = not rotated

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): the 2-D view the codes are stored in."""
        return self.rows, self.cols

    @classmethod
    def from_file(cls, f: WqFile, name: str) -> PackedTensor:
        """Zero-copy views of a quantized tensor of an open file."""
        info = f.info(name)
        if not info.quantized:
            raise TypeError(f"{name!r} is stored as {info.encoding.name}, not quantized")
        parts = dict(zip(info.part_names, f.raw(name)))
        rows, cols = codecs.view_2d_shape(info.shape)
        dec = {}
        if info.decomposed:
            k = len(info.outlier_columns or ())
            dec = {
                "offset": parts["offset"],
                "outlier_columns": np.array(info.outlier_columns, dtype=np.int64).reshape(k),
                "outliers": parts.get("outliers", np.zeros((rows, 0), np.float16)),
            }
        return cls(
            parts["codes"], parts["scales"], parts.get("zeros"), int(info.bits or 0), cols, int(info.group_size or 0),
            **dec, rotation=info.rotation,
        )  # fmt: skip

    @classmethod
    def from_quantized(cls, qt: codecs.QuantizedTensor) -> PackedTensor:
        """Pack an in-memory QuantizedTensor the way the writer stores it."""
        rows, cols = codecs.view_2d_shape(qt.shape)
        zeros = None if qt.zeros is None else packing.pack_codes(qt.zeros, qt.bits)
        return cls(
            packing.pack_codes(qt.codes.reshape(rows, cols), qt.bits), qt.scales, zeros, qt.bits, cols,
            qt.group_size, qt.offset, qt.outlier_columns, qt.outliers, qt.rotation,
        )  # fmt: skip

    def quantized(self) -> codecs.QuantizedTensor:
        """The unpacked codes (the inverse of from_quantized, in the 2-D view)."""
        ng = codecs.n_groups(self.cols, self.group_size)
        zeros = None if self.zeros is None else packing.unpack_codes(self.zeros, self.bits, ng)
        return codecs.QuantizedTensor(
            self.shape, self.bits, self.group_size, packing.unpack_codes(self.codes, self.bits, self.cols),
            np.asarray(self.scales, dtype=np.float16), zeros, self.offset, self.outlier_columns, self.outliers,
            self.rotation,
        )  # fmt: skip

    def row_slice(self, start: int, stop: int) -> PackedTensor:
        """Rows [start, stop): contiguous views of every per-row part (the offset applies to every row)."""
        sel = slice(start, stop)
        return dataclasses.replace(
            self,
            codes=self.codes[sel],
            scales=self.scales[sel],
            zeros=None if self.zeros is None else self.zeros[sel],
            outliers=None if self.outliers is None else self.outliers[sel],
        )

    def _c_args(self, with_decomposition: bool = True) -> tuple:
        dec = self.offset is not None and with_decomposition
        return (
            np.ascontiguousarray(self.codes),
            np.ascontiguousarray(self.scales).view(np.uint16),
            None if self.zeros is None else np.ascontiguousarray(self.zeros),
            np.ascontiguousarray(self.offset, dtype=np.float32) if dec else None,
            np.ascontiguousarray(self.outlier_columns, dtype=np.int64) if dec else None,
            np.ascontiguousarray(self.outliers).view(np.uint16) if dec else None,
            self.rows,
            self.bits,
            self.cols,
            self.group_size,
        )


def available() -> bool:
    """True when the compiled kernel is built and not turned off with WAVQ_NO_KERNEL=1."""
    return _wq_kernel is not None and os.environ.get(DISABLE_ENV, "") in ("", "0")


def kernel_status() -> str:
    """One line for `wavq --version` / `wavq info`: whether products on packed codes use the compiled kernel."""
    if _wq_kernel is None:
        return "compiled kernel: not built (numpy path)"
    if not available():
        return f"compiled kernel: off ({DISABLE_ENV}=1, numpy path)"
    n = threads()
    simd = "AVX2" if _wq_kernel.AVX2 else "portable"
    return f"compiled kernel: in use ({n} thread{'s' if n > 1 else ''}; integer products {simd})"


def threads() -> int:
    """Threads the kernel splits a product's output rows over (WAVQ_KERNEL_THREADS, default DEFAULT_THREADS)."""
    value = os.environ.get(THREADS_ENV, "")
    return max(1, int(value)) if value.isdigit() else DEFAULT_THREADS


def _rows(x: np.ndarray, cols: int) -> np.ndarray:
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"inputs must be float32 (M, {cols}), got shape {x.shape}")
    return x


def dequantize(t: PackedTensor) -> np.ndarray:
    """float32 (rows, cols) of the stored codes (V for a rotated tensor), bit for bit codecs.dequantize_packed."""
    if not available():
        return _reference_dequantize(t)
    out = np.empty((t.rows, t.cols), dtype=np.float32)
    _wq_kernel.dequantize(out, t._c_args())
    return out


def _reference_dequantize(t: PackedTensor) -> np.ndarray:
    dec = {}
    if t.offset is not None:
        dec = {"offset": t.offset, "outlier_columns": t.outlier_columns, "outliers": t.outliers}
    return codecs.dequantize_packed(t.codes, t.scales, t.zeros, t.bits, t.cols, t.group_size, **dec)


def _rotated_inputs(x: np.ndarray, t: PackedTensor) -> np.ndarray:
    """x R for a rotated tensor (x W^T = (x R) V^T, SPEC.md 5.4), else x."""
    return codecs.rotate_columns(x, t.rotation) if t.rotation else x


def matmul(x: np.ndarray, t: PackedTensor) -> np.ndarray:
    """float32 (M, rows) = x @ W^T, x float32 (M, cols): the compiled kernel when available, else numpy."""
    x = _rows(x, t.cols)
    if t.rotation:
        x = codecs.rotate_columns(x, t.rotation)
    if not available():
        return x @ _reference_dequantize(t).T
    m = x.shape[0]
    out = np.empty((m, t.rows), dtype=np.float32)
    if m <= SMALL_M:  # a decoding step: called ~50 times per token, so nothing here but the call
        _wq_kernel.matmul(out, x, m, t._c_args(), threads())
        return out
    step = max(1, TILE_ELEMENTS // t.cols)
    for r0 in range(0, t.rows, step):
        r1 = min(t.rows, r0 + step)
        np.matmul(x, dequantize(t.row_slice(r0, r1)).T, out=out[:, r0:r1])
    return out


def float_error_bound(x: np.ndarray, t: PackedTensor) -> np.ndarray:
    """Bound on |matmul(kernel) - matmul(numpy)| per output. Both sum the same terms x * w (w the exactly
    dequantized weight) in different orders; a sum whose tree is d deep errs by at most (d + 1) * eps32 * sum|terms|
    (first order, the 1 for rounding the product). The kernel's tree is cols / LANES + log2(LANES) + 1 deep (plus a
    tail under LANES), a BLAS dot product's at most cols, so the two differ by at most
    (2 * cols + LANES) * eps32 * (|x| @ |W|^T)."""
    x = _rotated_inputs(_rows(x, t.cols), t)
    depth = 2 * t.cols + _LANES
    return np.float32(depth * np.finfo(np.float32).eps) * (np.abs(x) @ np.abs(_reference_dequantize(t)).T)


# ---- the integer path ----


def quantize_activations(x: np.ndarray, act_block: int = ACT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (M, cols) and float32 scales (M, ceil(cols / act_block)): x ~ codes * scale per block.
    x must be finite (a NaN is not propagated the same way by the two paths)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"inputs must be 2-D (M, cols), got shape {x.shape}")
    m, cols = x.shape
    nb = codecs.n_groups(cols, act_block)
    if not available():
        return _reference_quantize_activations(x, act_block)
    qx = np.empty((m, cols), dtype=np.int8)
    sx = np.empty((m, nb), dtype=np.float32)
    _wq_kernel.quantize_act(qx, sx, x, m, cols, act_block)
    return qx, sx


def _reference_quantize_activations(x: np.ndarray, act_block: int) -> tuple[np.ndarray, np.ndarray]:
    m, cols = x.shape
    nb = codecs.n_groups(cols, act_block)
    blocks = np.zeros((m, nb * act_block), dtype=np.float32)
    blocks[:, :cols] = x
    blocks = blocks.reshape(m, nb, act_block)
    amax = np.abs(blocks).max(axis=2) if m and nb else np.zeros((m, nb), np.float32)
    levels = np.float32(ACT_LEVELS)
    inv = np.divide(levels, amax, out=np.zeros_like(amax), where=amax > 0)
    codes = np.clip(np.rint(blocks * inv[:, :, None]), -ACT_LEVELS, ACT_LEVELS).astype(np.int8)
    return np.ascontiguousarray(codes.reshape(m, nb * act_block)[:, :cols]), amax / levels


def _decomposition_split(x: np.ndarray, t: PackedTensor) -> tuple[np.ndarray, np.ndarray | None]:
    """For a decomposed tensor: x with its outlier columns zeroed (what meets the codes) and the float part
    x_zeroed @ offset + x[:, outliers] @ outliers^T; for any other tensor (x, None)."""
    if t.offset is None or t.outliers is None:
        return x, None
    xz = x.copy()
    xz[:, t.outlier_columns] = 0
    rest = (xz @ t.offset)[:, None] + x[:, t.outlier_columns] @ t.outliers.astype(np.float32).T
    return xz, rest.astype(np.float32, copy=False)


def matmul_int8(x: np.ndarray, t: PackedTensor, act_block: int = ACT_BLOCK) -> np.ndarray:
    """float32 (M, rows) ~ x @ W^T by the integer path (module docstring), compiled when available, else the
    numpy simulation of the same arithmetic (equal bit for bit)."""
    x, rest = _decomposition_split(_rotated_inputs(_rows(x, t.cols), t), t)
    qx, sx = quantize_activations(x, act_block)
    if available():
        out = np.empty((x.shape[0], t.rows), dtype=np.float32)
        _wq_kernel.matmul_int8(out, qx, sx, x.shape[0], act_block, t._c_args(with_decomposition=False), threads())
    else:
        out = _reference_int8_products(qx, sx, t, act_block)
    if rest is not None:
        out += rest
    return out


def _segments(cols: int, group_size: int, act_block: int) -> list[int]:
    """Column starts of the ranges inside one weight group and one activation block, then cols."""
    starts = sorted(set(range(0, cols, group_size)) | set(range(0, cols, act_block)))
    return starts + [cols]


def _reference_int8_products(qx: np.ndarray, sx: np.ndarray, t: PackedTensor, act_block: int) -> np.ndarray:
    """The kernel's integer arithmetic in numpy: int32 segment sums, then float32 rescales in column order."""
    ng = codecs.n_groups(t.cols, t.group_size)
    q = packing.unpack_codes(t.codes, t.bits, t.cols).astype(np.int32)
    if t.zeros is None:
        z = np.full((t.rows, ng), 1 << (t.bits - 1), np.int32)
    else:
        z = packing.unpack_codes(t.zeros, t.bits, ng).astype(np.int32)
    d = q - np.repeat(z, t.group_size, axis=1)[:, : t.cols]
    sw = t.scales.astype(np.float32)
    qx32 = qx.astype(np.int32)
    out = np.zeros((qx.shape[0], t.rows), dtype=np.float32)
    bounds = _segments(t.cols, t.group_size, act_block)
    for k0, k1 in zip(bounds[:-1], bounds[1:]):
        acc = qx32[:, k0:k1] @ d[:, k0:k1].T  # exact: |sum| < 2^31 (act_block <= the kernel's MAX_ACT_BLOCK)
        scale = sx[:, k0 // act_block, None] * sw[None, :, k0 // t.group_size]
        out += acc.astype(np.float32) * scale
    return out


def code_products(qx: np.ndarray, t: PackedTensor, *, portable: bool = False) -> np.ndarray:
    """float32 (M, rows): out[m, n] = sum over groups g, in order, of float32(I[m, n, g]) * s_w[n, g], each step
    rounded to float32, I = sum_{k in g} qx[m, k] * (q_w[n, k] - z[n, g]) exact (runtime/intlinear.py). qx: int8
    (M, cols) activation codes, already zero at a decomposed tensor's outlier columns (the float parts and the
    activation scale are the caller's). Compiled only (RuntimeError when not built; intlinear.int_linear is the
    numpy twin). `portable`: the plain C loop instead of the AVX2 one (tests compare the two)."""
    if _wq_kernel is None:
        raise RuntimeError(f"code_products: {kernel_status()}")
    qx = np.ascontiguousarray(qx)
    if qx.dtype != np.int8 or qx.ndim != 2 or qx.shape[1] != t.cols:
        raise ValueError(f"activation codes must be int8 (M, {t.cols}), got {qx.dtype} {qx.shape}")
    out = np.empty((qx.shape[0], t.rows), dtype=np.float32)
    _wq_kernel.matmul_codes(out, qx, qx.shape[0], t._c_args(with_decomposition=False), threads(), portable)
    return out
