"""The one .wq reader. It validates everything it is about to trust before handing out a byte.

Opening a file reads the prefix and the header only; tensor data stays in an np.memmap and is read (and its
CRC32 checked, once) when a tensor is first used.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Iterator

import msgpack
import numpy as np

from . import codecs, packing
from .constants import (
    ALIGNMENT,
    FLOAT_ENCODINGS,
    MAGIC,
    MAX_BITS,
    MAX_HEADER_LEN,
    MAX_NAME_LEN,
    MAX_NDIM,
    MIN_BITS,
    PREFIX,
    PREFIX_FLAGS,
    PREFIX_SIZE,
    QUANT_ENCODINGS,
    SUPPORTED_CONTAINER_VERSIONS,
    SUPPORTED_LAYOUT_REVISIONS,
    Encoding,
    align,
)
from .errors import (
    AlignmentError,
    BadMagicError,
    ChecksumError,
    DuplicateNameError,
    FormatError,
    HeaderBoundsError,
    MalformedHeaderError,
    MissingTensorError,
    OutOfBoundsError,
    OverlapError,
    ShapeMismatchError,
    TrailingDataError,
    TruncatedFileError,
    UnknownEncodingError,
    UnsupportedVersionError,
)
from .layout import tensor_nbytes, tensor_parts

_MAX_DIM = 1 << 40


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    encoding: Encoding
    shape: tuple[int, ...]
    offset: int  # relative to the data region
    nbytes: int
    crc32: int
    bits: int | None = None
    group_size: int | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def quantized(self) -> bool:
        return self.encoding in QUANT_ENCODINGS

    @property
    def parts(self) -> list[tuple[int, int]]:
        return tensor_parts(self.encoding, self.shape, self.bits, self.group_size)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class WqFile:
    """A validated, memory-mapped .wq file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                prefix = f.read(PREFIX_SIZE)
                self._check_prefix(prefix)
                header_len = PREFIX.unpack(prefix)[2]
                raw = f.read(header_len)
        except FormatError:
            raise
        except OSError as e:
            raise FormatError(self.path, f"cannot read file: {e.strerror or e}") from None
        if len(raw) != header_len:
            raise TruncatedFileError(self.path, f"file ends inside the {header_len}-byte header")
        if zlib.crc32(raw) != self._header_crc:
            raise ChecksumError(self.path, "header checksum mismatch (header is corrupt)")
        self.data_start = align(PREFIX_SIZE + header_len)
        header = self._parse_header(raw)
        self.layout_revision: int = header["layout_revision"]
        self.meta: dict = header["meta"]
        self.data_size: int = header["data_size"]
        end = self.data_start + self.data_size
        if self.file_size < end:
            raise TruncatedFileError(self.path, f"file is {self.file_size} bytes, its data region ends at {end}")
        if self.file_size > end:
            raise TrailingDataError(self.path, f"{self.file_size - end} unexpected bytes after the data region")
        self.tensors: dict[str, TensorInfo] = self._parse_tensors(header["tensors"])
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r") if self.file_size else np.zeros(0, np.uint8)
        self._verified: set[str] = set()

    # ---- validation -------------------------------------------------------------------------------------
    def _check_prefix(self, prefix: bytes) -> None:
        if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
            if len(prefix) < len(MAGIC) and MAGIC.startswith(prefix):
                raise TruncatedFileError(self.path, "file is too short to be a .wq file")
            raise BadMagicError(self.path, "not a .wq file (bad magic)")
        if len(prefix) < PREFIX_SIZE:
            raise TruncatedFileError(self.path, f"file ends inside the {PREFIX_SIZE}-byte prefix")
        _, version, header_len, header_crc, flags = PREFIX.unpack(prefix)
        if version not in SUPPORTED_CONTAINER_VERSIONS:
            raise UnsupportedVersionError(
                self.path, f"container version {version} is not supported (this reader reads "
                f"{', '.join(map(str, SUPPORTED_CONTAINER_VERSIONS))}); upgrade wavq or re-convert the model")
        if flags != PREFIX_FLAGS:
            raise MalformedHeaderError(self.path, f"unknown prefix flags 0x{flags:08x}")
        if header_len == 0 or header_len > MAX_HEADER_LEN:
            raise HeaderBoundsError(self.path, f"header length {header_len} out of bounds (1..{MAX_HEADER_LEN})")
        if PREFIX_SIZE + header_len > self.file_size:
            raise HeaderBoundsError(
                self.path, f"header length {header_len} reaches past the end of the {self.file_size}-byte file")
        self._header_crc = header_crc

    def _parse_header(self, raw: bytes) -> dict:
        try:
            header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # msgpack raises many types (ExtraData, ValueError, UnicodeDecodeError, ...)
            raise MalformedHeaderError(self.path, f"header is not valid msgpack ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise MalformedHeaderError(self.path, "header is not a map")
        for key, typ in (("layout_revision", int), ("meta", dict), ("tensors", list), ("data_size", int)):
            if key not in header:
                raise MalformedHeaderError(self.path, f"header lacks {key!r}")
            if not isinstance(header[key], typ) or isinstance(header[key], bool):
                raise MalformedHeaderError(self.path, f"header field {key!r} is not {typ.__name__}")
        if header["layout_revision"] not in SUPPORTED_LAYOUT_REVISIONS:
            raise UnsupportedVersionError(
                self.path, f"layout revision {header['layout_revision']} is not supported (this reader reads "
                f"{', '.join(map(str, SUPPORTED_LAYOUT_REVISIONS))})")
        if header["data_size"] < 0 or header["data_size"] % ALIGNMENT:
            raise MalformedHeaderError(self.path, f"data size {header['data_size']} is not a multiple of {ALIGNMENT}")
        return header

    def _parse_tensors(self, entries: list) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for i, e in enumerate(entries):
            info = self._parse_entry(i, e)
            if info.name in tensors:
                raise DuplicateNameError(self.path, f"tensor name {info.name!r} appears more than once")
            tensors[info.name] = info
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise OverlapError(self.path, f"tensors {an!r} and {bn!r} overlap")
        return tensors

    def _parse_entry(self, i: int, e: Any) -> TensorInfo:
        bad = lambda what: MalformedHeaderError(self.path, f"tensor entry {i}: {what}")  # noqa: E731
        if not isinstance(e, dict):
            raise bad("not a map")
        name = e.get("name")
        if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_LEN:
            raise bad("missing or invalid name")
        where = f"tensor {name!r}"
        for key in ("encoding", "offset", "nbytes", "crc32"):
            if not _is_int(e.get(key)):
                raise MalformedHeaderError(self.path, f"{where}: missing or non-integer {key!r}")
        shape = e.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape)):
            raise MalformedHeaderError(self.path, f"{where}: invalid shape {shape!r}")
        try:
            encoding = Encoding(e["encoding"])
        except ValueError:
            raise UnknownEncodingError(self.path, f"{where}: unknown encoding {e['encoding']}") from None
        bits = group_size = None
        if encoding in QUANT_ENCODINGS:
            bits, group_size = e.get("bits"), e.get("group_size")
            if not _is_int(bits) or not MIN_BITS <= bits <= MAX_BITS:
                raise MalformedHeaderError(self.path, f"{where}: bits {bits!r} outside {MIN_BITS}..{MAX_BITS}")
            if len(shape) < 2:
                raise ShapeMismatchError(self.path, f"{where}: quantized tensors need 2 or more dimensions")
            cols = int(np.prod(shape[1:], dtype=np.int64))
            if not _is_int(group_size) or not 1 <= group_size <= max(cols, 1):
                raise MalformedHeaderError(self.path, f"{where}: group size {group_size!r} outside 1..{cols}")
        offset, nbytes, crc = e["offset"], e["nbytes"], e["crc32"]
        if offset < 0 or nbytes < 0 or offset + nbytes > self._data_size_hint:
            raise OutOfBoundsError(
                self.path, f"{where}: bytes {offset}..{offset + nbytes} lie outside the "
                f"{self._data_size_hint}-byte data region")
        if offset % ALIGNMENT:
            raise AlignmentError(self.path, f"{where}: offset {offset} is not a multiple of {ALIGNMENT}")
        if not 0 <= crc < (1 << 32):
            raise MalformedHeaderError(self.path, f"{where}: crc32 out of range")
        info = TensorInfo(name, encoding, tuple(shape), offset, nbytes, crc, bits, group_size)
        expected = tensor_nbytes(info.parts)
        if nbytes != expected:
            raise ShapeMismatchError(
                self.path, f"{where}: {nbytes} bytes stored, shape {tuple(shape)} as {encoding.name}"
                f"{'' if bits is None else f' {bits}-bit'} needs {expected}")
        return info

    @property
    def _data_size_hint(self) -> int:
        return self.data_size

    # ---- access -----------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise MissingTensorError(self.path, f"no tensor named {name!r}") from None

    def _bytes(self, info: TensorInfo, rel: int, n: int) -> np.ndarray:
        start = self.data_start + info.offset + rel
        return self._mm[start : start + n]

    def check(self, name: str) -> None:
        """Verify one tensor's CRC32 (once per open file)."""
        if name in self._verified:
            return
        info = self.info(name)
        crc = zlib.crc32(self._bytes(info, 0, info.nbytes))
        if crc != info.crc32:
            raise ChecksumError(self.path, f"tensor {name!r} is corrupt (checksum mismatch)", tensor=name)
        self._verified.add(name)

    def verify(self) -> list[ChecksumError]:
        """Check every tensor; returns the failures (empty when the file is intact)."""
        problems = []
        for name in self.tensors:
            try:
                self.check(name)
            except ChecksumError as e:
                problems.append(e)
        return problems

    def raw(self, name: str) -> list[np.ndarray]:
        """Zero-copy views of a tensor's parts (float data; or packed codes, scales, zero points)."""
        info = self.info(name)
        self.check(name)
        views = [self._bytes(info, rel, n) for rel, n in info.parts]
        if info.encoding in FLOAT_ENCODINGS:
            return [views[0].view(FLOAT_ENCODINGS[info.encoding]).reshape(info.shape)]
        rows, cols = codecs.view_2d_shape(info.shape)
        out = [views[0].reshape(rows, packing.row_bytes(cols, info.bits)),
               views[1].view("<f2").reshape(rows, -1)]
        if info.encoding == Encoding.QASYM:
            out.append(views[2].reshape(rows, -1))
        return out

    def quantized(self, name: str) -> codecs.QuantizedTensor:
        """The unpacked codes of a quantized tensor."""
        info = self.info(name)
        if not info.quantized:
            raise TypeError(f"{name!r} is stored as {info.encoding.name}, not quantized")
        parts = self.raw(name)
        cols = codecs.view_2d_shape(info.shape)[1]
        ng = codecs.n_groups(cols, info.group_size)
        zeros = packing.unpack_codes(parts[2], info.bits, ng) if len(parts) == 3 else None
        return codecs.QuantizedTensor(info.shape, info.bits, info.group_size,
                                      packing.unpack_codes(parts[0], info.bits, cols),
                                      np.asarray(parts[1], dtype=np.float16), zeros)

    def array(self, name: str, rows: slice | None = None, dtype=np.float32) -> np.ndarray:
        """A tensor as a float array of its stored shape (dequantized if needed); `rows` selects along dim 0.

        Float tensors stored in `dtype` come back as read-only memory-mapped views (no copy).
        """
        info = self.info(name)
        parts = self.raw(name)
        sel = slice(None) if rows is None else rows
        if not info.quantized:
            data = parts[0][sel] if info.shape else parts[0]
            return data if data.dtype == np.dtype(dtype) else data.astype(dtype)
        r_cols = codecs.view_2d_shape(info.shape)[1]
        codes = packing.unpack_codes(parts[0][sel], info.bits, r_cols)
        zeros = None
        if len(parts) == 3:
            zeros = packing.unpack_codes(parts[2][sel], info.bits, codecs.n_groups(r_cols, info.group_size))
        w = codecs.dequantize_rows(codes, parts[1][sel], zeros, info.bits, info.group_size)
        return w.reshape((w.shape[0],) + info.shape[1:]).astype(dtype, copy=False)

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if isinstance(mm, np.memmap):
            mm._mmap.close()  # noqa: SLF001 - np.memmap has no public close
        self._mm = np.zeros(0, np.uint8)

    def __enter__(self) -> "WqFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_wq(path: str | os.PathLike) -> WqFile:
    return WqFile(path)
