"""Helpers for the .wq format tests: small valid files (revision 1, and revision 2 with decomposed tensors), and a
way to rebuild a file from a modified header.

`rebuild` writes prefix + header + padding + data with a *correct* header CRC (unless told otherwise), so a test
that edits one header field reaches the check it targets instead of stopping at the header checksum.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import zlib
from typing import Any

import msgpack
import numpy as np

from wavq.formats import QuantizedTensor, WqFile, quantize, write_wq
from wavq.formats.codecs import CodebookTensor, n_groups, view_2d_shape
from wavq.formats.constants import CONTAINER_VERSION, MAGIC, PREFIX, PREFIX_FLAGS, PREFIX_SIZE, align

SAMPLE_META = {"architecture": "test", "dims": {"n_state": 6, "eps": 1e-5}, "note": "sample"}


def sample_tensors() -> dict[str, Any]:
    """A few tensors covering every encoding and the awkward shapes (odd columns, 3-D, scalar, empty)."""
    rng = np.random.default_rng(1234)
    sym3, _ = quantize(rng.standard_normal((5, 13)).astype(np.float32), 3, group_size=4, symmetric=True)
    asym5, _ = quantize(rng.standard_normal((4, 3, 3)).astype(np.float32), 5, group_size=0, symmetric=False)
    return {
        "q.sym3": sym3,
        "q.asym5": asym5,
        "f.f16": rng.standard_normal(6).astype(np.float16),
        "f.f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f.scalar": np.float32(0.5).reshape(()),
        "f.empty": np.zeros((0, 4), np.float32),
    }


def decompose(qt: QuantizedTensor, offset, columns, outliers) -> QuantizedTensor:
    """qt with an offset row and float outlier columns (a decomposed tensor, layout revision 2)."""
    return dataclasses.replace(
        qt,
        offset=np.asarray(offset, np.float32),
        outlier_columns=np.asarray(columns, np.int64).reshape(-1),
        outliers=np.asarray(outliers, np.float16),
    )


def decomposed_tensors() -> dict[str, Any]:
    """A decomposed QASYM tensor with k = 3, a decomposed 3-D QSYM tensor with k = 0, a plain quantized and a
    float tensor: the revision-2 sample."""
    rng = np.random.default_rng(4321)
    asym, _ = quantize(rng.standard_normal((6, 20)).astype(np.float32), 4, group_size=8, symmetric=False)
    sym, _ = quantize(rng.standard_normal((3, 4, 3)).astype(np.float32), 3, group_size=5, symmetric=True)
    plain, _ = quantize(rng.standard_normal((4, 9)).astype(np.float32), 5, group_size=4, symmetric=True)
    return {
        "d.asym": decompose(asym, rng.standard_normal(20), [2, 11, 19], rng.standard_normal((6, 3)) * 30),
        "d.sym0": decompose(sym, rng.standard_normal(12), [], np.zeros((3, 0))),
        "q.plain": plain,
        "f.f32": rng.standard_normal((2, 3)).astype(np.float32),
    }


def codebook_tensor(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dim: int,
    index_bits: int,
    group_size: int,
    rows_per_book: int,
    rotation: int = 0,
) -> CodebookTensor:
    """A random codebook (VQ) tensor: uniform indices, normal codebook vectors and scales."""
    rows, cols = view_2d_shape(shape)
    books = -(-rows // rows_per_book)
    return CodebookTensor(
        shape,
        dim,
        index_bits,
        group_size,
        rows_per_book,
        rng.integers(0, 1 << index_bits, (rows, cols // dim)).astype(np.uint16),
        rng.standard_normal((books, 1 << index_bits, dim)).astype(np.float16),
        rng.standard_normal((rows, n_groups(cols, group_size))).astype(np.float16),
        rotation,
    )


def codebook_tensors() -> dict[str, Any]:
    """Codebook tensors (two codebooks with a short last band; 3-D, rotated, 9-bit indices; one codebook per row)
    beside a quantized and a float tensor: the revision-5 sample."""
    rng = np.random.default_rng(555)
    plain, _ = quantize(rng.standard_normal((4, 9)).astype(np.float32), 4, group_size=4, symmetric=True)
    return {
        "v.books": codebook_tensor(rng, (7, 24), 4, 5, 8, 4),
        "v.rot": codebook_tensor(rng, (3, 2, 8), 2, 9, 6, 3, rotation=4),
        "v.row": codebook_tensor(rng, (3, 16), 8, 3, 16, 1),
        "q.plain": plain,
        "f.f32": rng.standard_normal((2, 3)).astype(np.float32),
    }


def codebook_equal(a: CodebookTensor, b: CodebookTensor) -> bool:
    """Same keys and the same bits in indices, codebooks and scales."""
    keys = ("shape", "dim", "index_bits", "group_size", "rows_per_book", "rotation")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and all(
        _same_bits(getattr(a, f), getattr(b, f)) for f in ("indices", "codebooks", "scales")
    )


def _file_bytes(meta: dict, tensors: dict[str, Any]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sample.wq")
        write_wq(path, meta, tensors)
        with open(path, "rb") as f:
            return f.read()


@functools.cache
def sample_bytes() -> bytes:
    """Bytes of a valid (layout revision 1) file holding sample_tensors()."""
    return _file_bytes(SAMPLE_META, sample_tensors())


@functools.cache
def decomposed_bytes() -> bytes:
    """Bytes of a valid (layout revision 2) file holding decomposed_tensors()."""
    return _file_bytes(SAMPLE_META, decomposed_tensors())


@functools.cache
def codebook_bytes() -> bytes:
    """Bytes of a valid (layout revision 5) file holding codebook_tensors()."""
    return _file_bytes(SAMPLE_META, codebook_tensors())


def split(buf: bytes) -> tuple[dict, dict, bytes]:
    """(prefix fields, decoded header, data region bytes) of a valid file."""
    magic, version, header_len, crc, flags = PREFIX.unpack_from(buf, 0)
    header = msgpack.unpackb(buf[PREFIX_SIZE : PREFIX_SIZE + header_len], raw=False)
    data_start = align(PREFIX_SIZE + header_len)
    prefix = {"magic": magic, "version": version, "header_len": header_len, "crc": crc, "flags": flags}
    return prefix, header, buf[data_start:]


def rebuild(
    header: dict | bytes,
    data: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = CONTAINER_VERSION,
    flags: int = PREFIX_FLAGS,
    header_len: int | None = None,
    crc: int | None = None,
    pad: bytes | None = None,
) -> bytes:
    """A file from a header (dict to msgpack, or raw bytes) and a data region, with a correct header CRC
    and zero padding unless overridden."""
    raw = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    n = len(raw) if header_len is None else header_len
    c = zlib.crc32(raw) if crc is None else crc
    if pad is None:
        pad = b"\0" * (align(PREFIX_SIZE + len(raw)) - PREFIX_SIZE - len(raw))
    return PREFIX.pack(magic, version, n, c, flags) + raw + pad + data


def fix_tensor_crc(buf: bytes, name: str) -> bytes:
    """Recompute one tensor's CRC after its bytes were edited, so the edit reaches the value checks."""
    _, header, data = split(buf)
    for e in header["tensors"]:
        if e["name"] == name:
            e["crc32"] = zlib.crc32(data[e["offset"] : e["offset"] + e["nbytes"]])
    return rebuild(header, data)


def tensor_span(buf: bytes, name: str) -> tuple[int, int, dict]:
    """(file offset of a tensor, its nbytes, its entry)."""
    prefix, header, _ = split(buf)
    start = align(PREFIX_SIZE + prefix["header_len"])
    for e in header["tensors"]:
        if e["name"] == name:
            return start + e["offset"], e["nbytes"], e
    raise KeyError(name)


def read_everything(path: str) -> None:
    """Open a file and touch every tensor every way the reader offers; raises whatever the reader raises."""
    with WqFile(path) as f:
        for name, info in f.tensors.items():
            f.array(name)
            if info.shape:
                f.array(name, rows=slice(0, 1))
            if info.quantized:
                f.quantized(name)
            if info.codebook:
                f.codebook(name)
        f.verify()


def _same_bits(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both absent, or equal in dtype, shape and every bit (so -0.0 differs from 0.0)."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def quantized_codes_equal(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    """Same shape, width, group size, codes, scales, zero points, decomposition (offset, columns, outliers) and
    rotation."""
    return (
        a.shape == b.shape
        and a.bits == b.bits
        and a.group_size == b.group_size
        and a.rotation == b.rotation
        and all(
            _same_bits(getattr(a, f), getattr(b, f))
            for f in ("codes", "scales", "zeros", "offset", "outlier_columns", "outliers")
        )
    )


def spec_lowbias32(x: int) -> int:
    """SPEC.md 5.4's column hash on Python ints, every product reduced mod 2**32 (independent of the numpy
    uint32 version in formats/codecs.py)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def spec_unpack(row: bytes, bits: int, n: int) -> list[int]:
    """SPEC.md 5.1 on Python ints: each run of 8 codes is `bits` bytes; code i sits at bits [b*i, b*i+b) (LE).
    The independent decoder the golden and VQ tests check the packed bytes against."""
    out = []
    for blk in range(len(row) // bits):
        run = int.from_bytes(row[blk * bits : (blk + 1) * bits], "little")
        out += [(run >> (bits * i)) & ((1 << bits) - 1) for i in range(8)]
    assert all(c == 0 for c in out[n:]), "padding codes are zero"
    return out[:n]
