"""Storage accounting shared by `wavq info` and the bit allocator, so both count bits the same way."""

from __future__ import annotations

import math

import numpy as np

from . import codecs
from .constants import CODEBOOK_DTYPE, FLOAT_ENCODINGS, OFFSET_DTYPE, OUTLIER_DTYPE, Encoding
from .layout import VqParams, quant_params

SCALE_BITS = 16  # every group stores one float16 scale
OFFSET_BITS = 8 * np.dtype(OFFSET_DTYPE).itemsize  # a decomposed tensor stores one float32 offset per column
OUTLIER_BITS = 8 * np.dtype(OUTLIER_DTYPE).itemsize  # ... and one float16 per row for each float column
CODEBOOK_BITS = 8 * np.dtype(CODEBOOK_DTYPE).itemsize  # a codebook tensor stores its vectors' entries as float16


def payload_bits(
    encoding: Encoding,
    shape: tuple[int, ...],
    bits: int | None = None,
    group_size: int | None = None,
    outliers: int | None = None,
    vq: VqParams | None = None,
) -> int:
    """Bits of information a tensor stores: codes, scales and zero points (row padding and alignment excluded);
    for a decomposed tensor (`outliers` = k, its number of float columns; None = not decomposed) also the
    offset row and the float columns. The codes of the float columns are still stored, so they still count.
    A codebook tensor (`vq` given) stores its indices, its scales and its codebooks.

    Effective bits per weight of a quantized tensor = payload_bits / numel.
    """
    numel = math.prod(int(d) for d in shape)  # () -> 1
    if encoding in FLOAT_ENCODINGS:
        return numel * 8 * np.dtype(FLOAT_ENCODINGS[encoding]).itemsize
    if encoding == Encoding.VQ:
        if vq is None or group_size is None:
            raise ValueError("codebook tensors need dim, index bits, rows per codebook and a group size")
        rows, cols = codecs.view_2d_shape(shape)
        books = math.prod(vq.book_shape(rows))  # float16 entries of all codebooks
        return (
            rows * (cols // vq.dim) * vq.index_bits
            + rows * codecs.n_groups(cols, group_size) * SCALE_BITS
            + books * CODEBOOK_BITS
        )
    bits, group_size = quant_params(bits, group_size)
    rows, cols = codecs.view_2d_shape(shape)
    groups = rows * codecs.n_groups(cols, group_size)
    zero_bits = bits if encoding == Encoding.QASYM else 0
    total = numel * bits + groups * (SCALE_BITS + zero_bits)
    if outliers is not None:
        total += OFFSET_BITS * cols + OUTLIER_BITS * rows * outliers
    return total


def bits_per_weight(
    bits: int, group_size: int, symmetric: bool, shape: tuple[int, ...], outliers: int | None = None
) -> float:
    """Effective bits per weight of one quantized tensor of `shape` (group_size 0 = per-channel); `outliers` is
    the number k of float columns of a decomposed tensor (None = not decomposed)."""
    rows, cols = codecs.view_2d_shape(shape)
    enc = Encoding.QSYM if symmetric else Encoding.QASYM
    gs = codecs.resolve_group_size(cols, group_size)
    return payload_bits(enc, tuple(shape), bits, gs, outliers) / (rows * cols)


def codebook_bits_per_weight(
    dim: int, index_bits: int, group_size: int, rows_per_book: int, shape: tuple[int, ...]
) -> float:
    """Effective bits per weight of one codebook tensor of `shape`: indices, scales and codebooks counted."""
    rows, cols = codecs.view_2d_shape(shape)
    return payload_bits(Encoding.VQ, tuple(shape), None, group_size, None, VqParams(dim, index_bits, rows_per_book)) / (
        rows * cols
    )
