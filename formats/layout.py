"""Where each part of a tensor lies, derived from its entry alone, so the reader and writer agree by construction."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import codecs, packing
from .constants import CODEBOOK_DTYPE, FLOAT_ENCODINGS, OFFSET_DTYPE, OUTLIER_DTYPE, SCALE_DTYPE, Encoding, align


class VqParams(NamedTuple):
    """The entry keys of a codebook tensor besides its group size (SPEC.md 5.6)."""

    dim: int  # weights per vector
    index_bits: int  # bits per stored index; each codebook holds 2**index_bits vectors
    rows_per_book: int  # rows sharing one codebook

    def n_books(self, rows: int) -> int:
        return -(-rows // self.rows_per_book)

    def book_shape(self, rows: int) -> tuple[int, int, int]:
        return self.n_books(rows), 1 << self.index_bits, self.dim


def part_names(encoding: Encoding, outliers: int | None = None) -> list[str]:
    """Names of a tensor's parts in storage order: "values" for float tensors; "codes", "scales", ["zeros"],
    then for a decomposed tensor (outliers = k, its number of float columns) "offset" and, if k > 0, "outliers";
    "indices", "codebooks", "scales" for codebook (VQ) tensors."""
    if encoding in FLOAT_ENCODINGS:
        return ["values"]
    if encoding == Encoding.VQ:
        return ["indices", "codebooks", "scales"]
    names = ["codes", "scales"] + (["zeros"] if encoding == Encoding.QASYM else [])
    if outliers is not None:
        names.append("offset")
        if outliers:  # k = 0 stores no (rows, 0) part: nothing to place
            names.append("outliers")
    return names


def quant_params(bits: int | None, group_size: int | None) -> tuple[int, int]:
    """(bits, group_size) of a quantized tensor; ValueError when either is missing (a float tensor's entry)."""
    if bits is None or group_size is None:
        raise ValueError("quantized encodings need bits and a group size")
    return bits, group_size


def tensor_parts(
    encoding: Encoding,
    shape: tuple[int, ...],
    bits: int | None = None,
    group_size: int | None = None,
    outliers: int | None = None,
    vq: VqParams | None = None,
) -> list[tuple[int, int]]:
    """(offset relative to the tensor start, byte length) of each part, in the order of part_names.

    Float tensors have one part. Quantized tensors have packed codes, float16 scales (rows x groups), for QASYM
    packed zero points, and when decomposed (outliers = k, not None) a float32 offset per column and, if k > 0,
    float16 outlier values (rows x k). Codebook tensors (`vq` given, `group_size` their scale group) have packed
    indices (rows x cols/dim), float16 codebooks (books x 2**index_bits x dim) and float16 scales (rows x groups).
    Every part starts on the 64-byte alignment.
    """
    if encoding in FLOAT_ENCODINGS:
        n = math.prod(int(d) for d in shape)  # Python ints: a hostile shape cannot overflow; () -> 1
        return [(0, n * np.dtype(FLOAT_ENCODINGS[encoding]).itemsize)]
    if encoding == Encoding.VQ:
        if vq is None or group_size is None:
            raise ValueError("codebook tensors need dim, index bits, rows per codebook and a group size")
        bits = vq.index_bits  # the packed part of a VQ tensor holds indices
    else:
        bits, group_size = quant_params(bits, group_size)
    rows, cols = codecs.view_2d_shape(shape)
    ng = codecs.n_groups(cols, group_size)
    size = {
        "codes": rows * packing.row_bytes(cols, bits),
        "scales": rows * ng * np.dtype(SCALE_DTYPE).itemsize,
        "zeros": rows * packing.row_bytes(ng, bits),
        "offset": cols * np.dtype(OFFSET_DTYPE).itemsize,
        "outliers": rows * (outliers or 0) * np.dtype(OUTLIER_DTYPE).itemsize,
    }
    if vq is not None:
        size["indices"] = rows * packing.row_bytes(cols // vq.dim, bits)
        size["codebooks"] = vq.n_books(rows) * (1 << bits) * vq.dim * np.dtype(CODEBOOK_DTYPE).itemsize
    parts, off = [], 0
    for name in part_names(encoding, outliers):
        parts.append((off, size[name]))
        off = align(off + size[name])
    return parts


def tensor_nbytes(parts: list[tuple[int, int]]) -> int:
    off, n = parts[-1]
    return off + n
