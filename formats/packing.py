"""Dense bit packing of b-bit codes, vectorised in both directions: scalar codes (2 <= b <= 8, uint8) and
codebook indices (2 <= b <= 16, uint16) share one layout.

Layout (SPEC.md, "Packed codes"): codes are packed row by row; each row is padded with zero codes to a
multiple of 8, and every run of 8 codes becomes exactly b bytes: code i of the run occupies bits
[b*i, b*i + b) of the run read as a little-endian integer. Rows therefore start on byte boundaries,
so any range of rows is a contiguous byte range.
"""

from __future__ import annotations

import numpy as np

from .constants import CODES_PER_BLOCK, MAX_BITS, MAX_PACKED_BITS, MIN_BITS

# Bound the size of the uint64 temporaries used for the widths that straddle bytes (3, 5, 6, 7).
_CHUNK_CODES = 1 << 20


def row_bytes(cols: int, bits: int) -> int:
    """Bytes one packed row of `cols` codes takes."""
    return -(-cols // CODES_PER_BLOCK) * bits


def _check_bits(bits: int, max_bits: int = MAX_BITS) -> None:
    if not (isinstance(bits, (int, np.integer)) and MIN_BITS <= bits <= max_bits):
        raise ValueError(f"bit width must be an integer from {MIN_BITS} to {max_bits}, got {bits!r}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 2-D array of codes (< 2**bits) into uint8 rows of row_bytes(cols, bits) bytes."""
    _check_bits(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits} bits")
    rows, cols = codes.shape
    nblk = -(-cols // CODES_PER_BLOCK)
    padded = np.zeros((rows, nblk * CODES_PER_BLOCK), dtype=np.uint8)
    padded[:, :cols] = codes
    if bits == 8:
        return padded
    if 8 % bits == 0:  # 2 and 4 bits: whole codes per byte
        per_byte = 8 // bits
        grouped = padded.reshape(rows, nblk * bits, per_byte)  # explicit sizes: rows may be 0
        shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
        return np.bitwise_or.reduce(grouped << shifts, axis=2).astype(np.uint8)
    out = np.empty((rows, nblk * bits), dtype=np.uint8)
    shifts = np.arange(CODES_PER_BLOCK, dtype=np.uint64) * np.uint64(bits)
    step = max(1, _CHUNK_CODES // max(1, padded.shape[1]))
    for r0 in range(0, rows, step):
        r = min(step, rows - r0)
        blk = padded[r0 : r0 + r].reshape(r, nblk, CODES_PER_BLOCK).astype(np.uint64)
        words = np.bitwise_or.reduce(blk << shifts, axis=2).astype("<u8")  # (r, nblk)
        out[r0 : r0 + r] = words.view(np.uint8).reshape(r, nblk, 8)[:, :, :bits].reshape(r, nblk * bits)
    return out


def unpack_codes(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of pack_codes: uint8 rows of packed bytes -> uint8 codes of shape (rows, cols)."""
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != row_bytes(cols, bits):
        raise ValueError(f"packed rows of {row_bytes(cols, bits)} bytes expected, got shape {packed.shape}")
    rows = packed.shape[0]
    if bits == 8:
        return np.array(packed[:, :cols])
    mask = np.uint8((1 << bits) - 1)
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
        codes = (packed[:, :, None] >> shifts) & mask
        return codes.reshape(rows, packed.shape[1] * per_byte)[:, :cols]  # explicit sizes: rows may be 0
    nblk = packed.shape[1] // bits
    out = np.empty((rows, cols), dtype=np.uint8)
    shifts = np.arange(CODES_PER_BLOCK, dtype=np.uint64) * np.uint64(bits)
    step = max(1, _CHUNK_CODES // max(1, nblk * CODES_PER_BLOCK))
    for r0 in range(0, rows, step):
        r = min(step, rows - r0)
        blk = packed[r0 : r0 + r].reshape(r, nblk, bits)
        wide = np.zeros((r, nblk, 8), dtype=np.uint8)
        wide[:, :, :bits] = blk
        words = wide.view("<u8")  # (r, nblk, 1)
        codes = (words >> shifts) & np.uint64(mask)  # (r, nblk, 8)
        out[r0 : r0 + r] = codes.reshape(r, nblk * CODES_PER_BLOCK)[:, :cols]
    return out


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 2-D array of indices (< 2**bits, 2 <= bits <= 16) into uint8 rows of row_bytes(cols, bits) bytes:
    the layout of pack_codes, extended to the widths of codebook indices (identical bytes for bits <= 8)."""
    _check_bits(bits, MAX_PACKED_BITS)
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be 2-D (rows, cols), got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= (1 << bits)):
        raise ValueError(f"indices out of range for {bits} bits")
    rows, cols = indices.shape
    nblk = -(-cols // CODES_PER_BLOCK)
    out = np.empty((rows, nblk * bits), dtype=np.uint8)
    weights = np.arange(bits, dtype=np.uint32)
    step = max(1, _CHUNK_CODES // max(1, nblk * CODES_PER_BLOCK * bits))
    for r0 in range(0, rows, step):  # bit planes: each index becomes its `bits` bits, least significant first
        r = min(step, rows - r0)
        padded = np.zeros((r, nblk * CODES_PER_BLOCK), dtype=np.uint32)
        padded[:, :cols] = indices[r0 : r0 + r]
        bitplanes = ((padded[:, :, None] >> weights) & np.uint32(1)).astype(np.uint8)
        out[r0 : r0 + r] = np.packbits(bitplanes.reshape(r, -1), axis=1, bitorder="little")
    return out


def unpack_indices(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of pack_indices: uint8 rows of packed bytes -> uint16 indices of shape (rows, cols).

    Up to 8 bits this is unpack_codes. Wider runs of 8 indices (9..16 bytes) are read as two little-endian 64-bit
    words: indices 0..3 lie in the run's first 8 bytes, indices 4..7 in its bytes from b//2 on (starting at bit 0
    of that byte for even b, bit 4 for odd b), so each word yields four indices by shifts and a mask."""
    _check_bits(bits, MAX_PACKED_BITS)
    if bits <= MAX_BITS:
        return unpack_codes(packed, bits, cols).astype(np.uint16)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != row_bytes(cols, bits):
        raise ValueError(f"packed rows of {row_bytes(cols, bits)} bytes expected, got shape {packed.shape}")
    rows, nblk = packed.shape[0], packed.shape[1] // bits
    runs = packed.reshape(rows, nblk, bits)
    half = bits // 2
    wide = np.zeros((rows, nblk, 2, 8), dtype=np.uint8)
    wide[:, :, 0, :] = runs[:, :, :8]
    wide[:, :, 1, : bits - half] = runs[:, :, half:]
    words = wide.view("<u8")  # (rows, nblk, 2, 1)
    quarter = np.arange(4, dtype=np.uint64) * np.uint64(bits)
    shifts = np.stack([quarter, quarter + np.uint64(4 * bits - 8 * half)])  # (2, 4)
    codes = (words >> shifts) & np.uint64((1 << bits) - 1)  # (rows, nblk, 2, 4)
    return codes.reshape(rows, nblk * CODES_PER_BLOCK)[:, :cols].astype(np.uint16)
