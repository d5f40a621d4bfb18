"""Where each part of a tensor lies, derived from its entry alone, so the reader and writer agree by construction."""

from __future__ import annotations

import math

import numpy as np

from . import codecs, packing
from .constants import FLOAT_ENCODINGS, SCALE_DTYPE, Encoding, align


def tensor_parts(encoding: Encoding, shape: tuple[int, ...], bits: int | None = None,
                 group_size: int | None = None) -> list[tuple[int, int]]:
    """(offset relative to the tensor start, byte length) of each part, in storage order.

    Float tensors have one part. Quantized tensors have packed codes, float16 scales (rows x groups) and,
    for QASYM, packed zero points; every part starts on the 64-byte alignment.
    """
    if encoding in FLOAT_ENCODINGS:
        n = math.prod(int(d) for d in shape)  # Python ints: a hostile shape cannot overflow; () -> 1
        return [(0, n * np.dtype(FLOAT_ENCODINGS[encoding]).itemsize)]
    rows, cols = codecs.view_2d_shape(shape)
    ng = codecs.n_groups(cols, group_size)
    sizes = [rows * packing.row_bytes(cols, bits), rows * ng * np.dtype(SCALE_DTYPE).itemsize]
    if encoding == Encoding.QASYM:
        sizes.append(rows * packing.row_bytes(ng, bits))
    parts, off = [], 0
    for n in sizes:
        parts.append((off, n))
        off = align(off + n)
    return parts


def tensor_nbytes(parts: list[tuple[int, int]]) -> int:
    off, n = parts[-1]
    return off + n
