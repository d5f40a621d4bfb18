"""The one .wq reader. It validates everything it is about to trust before handing out a byte.

Opening a file reads the prefix and the header only; tensor data stays in an np.memmap and is read when a tensor
is first used, after its CRC32 and the finiteness of its values (float tensors) or scales (and offset and float
columns; codebooks of VQ tensors) are checked, once.
SPEC.md section 7 lists every rejection; any input bytes produce a FormatError subclass or a valid file, never
another exception (tests/test_formats_fuzz.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
import zlib
from collections.abc import Iterator
from typing import Any, TypeGuard

import msgpack
import numpy as np

from . import codecs, packing
from .activation import ACTIVATION_KEY, ActivationSpec, parse_activation_entry
from .constants import (
    ACTIVATION_LAYOUT_REVISION,
    ALIGNMENT,
    CODEBOOK_DTYPE,
    DECOMPOSED_LAYOUT_REVISION,
    FLOAT_ENCODINGS,
    MAGIC,
    MAX_BITS,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_HEADER_LEN,
    MAX_NAME_LEN,
    MAX_NDIM,
    MIN_BITS,
    OFFSET_DTYPE,
    OUTLIER_DTYPE,
    PREFIX,
    PREFIX_FLAGS,
    PREFIX_SIZE,
    QUANT_ENCODINGS,
    READABLE_ENCODINGS,
    RESERVED_ENCODINGS_END,
    ROTATED_LAYOUT_REVISION,
    SCALE_DTYPE,
    SUPPORTED_CONTAINER_VERSIONS,
    SUPPORTED_LAYOUT_REVISIONS,
    VQ_DIMS,
    VQ_LAYOUT_REVISION,
    VQ_MAX_INDEX_BITS,
    VQ_MIN_INDEX_BITS,
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
    InvalidValueError,
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
from .layout import VqParams, part_names, quant_params, tensor_nbytes, tensor_parts

_HEADER_KEYS = frozenset({"layout_revision", "meta", "tensors", "data_size"})
_ENTRY_KEYS = frozenset({"name", "encoding", "shape", "offset", "nbytes", "crc32"})
_QUANT_KEYS = frozenset({"bits", "group_size"})
_DECOMPOSED_KEY = "outlier_columns"  # layout revision 2: present iff the quantized tensor is decomposed
_ROTATION_KEY = "rotation"  # layout revision 3: present iff the quantized tensor is rotated (its block size)
_VQ_KEYS = ("dim", "index_bits", "rows_per_book")  # layout revision 5: codebook tensors (SPEC.md 5.6)
_EXOTIC = (msgpack.ExtType, msgpack.Timestamp)  # msgpack values that are not plain data


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
    outlier_columns: tuple[int, ...] | None = None  # decomposed tensors only: the float columns (may be empty)
    rotation: int = 0  # rotated tensors: the Hadamard block size (SPEC.md 5.4); 0 = not rotated
    activation: ActivationSpec | None = None  # how the input of its product is quantized (SPEC.md 5.5); None: float
    vq: VqParams | None = None  # codebook (VQ) tensors only: dim, index bits, rows per codebook (SPEC.md 5.6)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # () -> 1

    @property
    def quantized(self) -> bool:
        """Stored as scalar integer codes (QSYM, QASYM); a codebook tensor is not (see `codebook`)."""
        return self.encoding in QUANT_ENCODINGS

    @property
    def codebook(self) -> bool:
        """Stored as indices into codebooks (VQ, SPEC.md 5.6)."""
        return self.encoding == Encoding.VQ

    @property
    def decomposed(self) -> bool:
        return self.outlier_columns is not None

    @property
    def n_outlier_columns(self) -> int | None:
        """k, the number of float columns of a decomposed tensor; None when not decomposed (the `outliers`
        argument of layout.tensor_parts and stats.payload_bits)."""
        return None if self.outlier_columns is None else len(self.outlier_columns)

    @property
    def part_names(self) -> list[str]:
        return part_names(self.encoding, self.n_outlier_columns)

    @property
    def quant(self) -> tuple[int, int]:
        """(bits, group_size) of a quantized tensor (ValueError for a float one)."""
        return quant_params(self.bits, self.group_size)

    @property
    def parts(self) -> list[tuple[int, int]]:
        return tensor_parts(self.encoding, self.shape, self.bits, self.group_size, self.n_outlier_columns, self.vq)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


class _Reject(Exception):
    """Raised from the msgpack hooks; turned into MalformedHeaderError with the file's name."""


def _plain_map(pairs: list) -> dict:
    """msgpack object_pairs_hook: string keys, no repeats, no extension values (the msgpack dict would keep
    the last of two equal keys silently)."""
    out: dict = {}
    for k, v in pairs:
        if not isinstance(k, str):
            raise _Reject(f"map key {_short(k)} is not a string")
        if k in out:
            raise _Reject(f"map key {_short(k)} appears twice")
        if isinstance(v, _EXOTIC):
            raise _Reject(f"value of {_short(k)} is a msgpack extension type")
        out[k] = v
    return out


def _plain_list(items: list) -> list:
    if any(isinstance(v, _EXOTIC) for v in items):
        raise _Reject("an array holds a msgpack extension type")
    return items


def _no_ext(code: int, data: bytes) -> Any:
    raise _Reject(f"msgpack extension type {code} is not allowed")


class WqFile:
    """A validated, memory-mapped .wq file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._mm: np.ndarray | None = None
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                prefix = f.read(PREFIX_SIZE)
                header_len, header_crc = self._check_prefix(prefix)
                raw = f.read(header_len)
                if len(raw) != header_len:
                    raise TruncatedFileError(self.path, f"file ends inside the {header_len}-byte header")
                if zlib.crc32(raw) != header_crc:
                    raise ChecksumError(self.path, "header checksum mismatch (header is corrupt)")
                self.data_start = align(PREFIX_SIZE + header_len)
                pad = f.read(self.data_start - PREFIX_SIZE - header_len)
                header = self._parse_header(raw)
                if pad.count(0) != len(pad):
                    raise MalformedHeaderError(self.path, "non-zero bytes in the padding after the header")
                self.layout_revision: int = header["layout_revision"]
                self.meta: dict = header["meta"]
                self.data_size: int = header["data_size"]
                end = self.data_start + self.data_size
                if self.file_size < end:
                    raise TruncatedFileError(
                        self.path, f"file is {self.file_size} bytes, its data region ends at {end}"
                    )
                if self.file_size > end:
                    raise TrailingDataError(self.path, f"{self.file_size - end} unexpected bytes after the data region")
                self.tensors: dict[str, TensorInfo] = self._parse_tensors(header["tensors"])
                # Map the file we validated (not the path again, which may have been replaced meanwhile), and keep
                # a descriptor of it to notice a truncation by another program before touching the lost pages.
                self._mm = np.memmap(f, dtype=np.uint8, mode="r", shape=(self.file_size,))
                self._fd = os.dup(f.fileno())
                self._release_fd = weakref.finalize(self, os.close, self._fd)
        except FormatError:
            raise
        except OSError as e:
            raise FormatError(self.path, f"cannot read file: {e.strerror or e}") from None
        self._verified: set[str] = set()

    # ---- validation -------------------------------------------------------------------------------------
    def _check_prefix(self, prefix: bytes) -> tuple[int, int]:
        """(header_len, header_crc32) from a prefix that passed every check."""
        if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
            if len(prefix) < len(MAGIC) and MAGIC.startswith(prefix):
                raise TruncatedFileError(self.path, "file is too short to be a .wq file")
            raise BadMagicError(self.path, "not a .wq file (bad magic)")
        if len(prefix) < PREFIX_SIZE:
            raise TruncatedFileError(self.path, f"file ends inside the {PREFIX_SIZE}-byte prefix")
        _, version, header_len, header_crc, flags = PREFIX.unpack(prefix)
        if version not in SUPPORTED_CONTAINER_VERSIONS:
            raise UnsupportedVersionError(
                self.path,
                f"container version {version} is not supported (this reader reads "
                f"{', '.join(map(str, SUPPORTED_CONTAINER_VERSIONS))}); upgrade wavq or re-convert the model",
            )
        if flags != PREFIX_FLAGS:
            raise MalformedHeaderError(self.path, f"unknown prefix flags 0x{flags:08x}")
        if header_len == 0 or header_len > MAX_HEADER_LEN:
            raise HeaderBoundsError(self.path, f"header length {header_len} out of bounds (1..{MAX_HEADER_LEN})")
        if PREFIX_SIZE + header_len > self.file_size:
            raise HeaderBoundsError(
                self.path,
                f"header length {header_len} reaches past the end of the {self.file_size}-byte file "
                "(the file is truncated or its prefix is corrupt)",
            )
        return header_len, header_crc

    def _parse_header(self, raw: bytes) -> dict:
        try:
            # _plain_map enforces string keys itself (with a clearer message than strict_map_key).
            header = msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=False,
                use_list=True,
                object_pairs_hook=_plain_map,
                list_hook=_plain_list,
                ext_hook=_no_ext,
            )
        except _Reject as e:
            raise MalformedHeaderError(self.path, f"header is not plain msgpack data: {e}") from None
        except Exception as e:  # msgpack raises many types (ExtraData, StackError, UnicodeDecodeError, ...)
            raise MalformedHeaderError(self.path, f"header is not valid msgpack ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise MalformedHeaderError(self.path, "header is not a map")
        for key, typ in (("layout_revision", int), ("meta", dict), ("tensors", list), ("data_size", int)):
            if key not in header:
                raise MalformedHeaderError(self.path, f"header lacks {key!r}")
            if not isinstance(header[key], typ) or isinstance(header[key], bool):
                raise MalformedHeaderError(self.path, f"header field {key!r} is not {typ.__name__}")
        extra = set(header) - _HEADER_KEYS
        if extra:
            raise MalformedHeaderError(self.path, f"header has unknown keys {sorted(extra)}")
        if header["layout_revision"] not in SUPPORTED_LAYOUT_REVISIONS:
            raise UnsupportedVersionError(
                self.path,
                f"layout revision {header['layout_revision']} is not supported (this reader reads "
                f"{', '.join(map(str, SUPPORTED_LAYOUT_REVISIONS))})",
            )
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
        for (_, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise OverlapError(self.path, f"tensors {an!r} and {bn!r} overlap")
        used = max((align(end) for _, end, _ in spans), default=0)
        if self.data_size != used:
            raise TrailingDataError(self.path, f"data region is {self.data_size} bytes but its tensors end at {used}")
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
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)
            or math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS
        ):
            raise MalformedHeaderError(self.path, f"{where}: invalid shape {_short(shape)}")
        try:
            encoding = Encoding(e["encoding"])
            if encoding not in READABLE_ENCODINGS:
                raise ValueError(encoding)
        except ValueError:
            hint = (
                " (a value reserved for future encodings: a newer wavq may read this file)"
                if (0 <= e["encoding"] < RESERVED_ENCODINGS_END)
                else ""
            )
            raise UnknownEncodingError(self.path, f"{where}: unknown encoding {e['encoding']}{hint}") from None
        if encoding == Encoding.VQ and self.layout_revision < VQ_LAYOUT_REVISION:
            raise UnknownEncodingError(
                self.path,
                f"{where}: unknown encoding {e['encoding']} in a layout revision {self.layout_revision} file "
                f"(VQ exists from revision {VQ_LAYOUT_REVISION})",
            )
        if encoding == Encoding.VQ:
            return self._parse_vq_entry(where, e, shape)
        for key in _VQ_KEYS:
            if key in e:
                raise MalformedHeaderError(self.path, f"{where}: {key!r} is defined for VQ only, not {encoding.name}")
        allowed = _ENTRY_KEYS
        bits: int | None = None
        group_size: int | None = None
        outlier_columns: tuple[int, ...] | None = None
        rotation = 0
        activation = None
        for key in (_DECOMPOSED_KEY, _ROTATION_KEY, ACTIVATION_KEY):
            if encoding not in QUANT_ENCODINGS and key in e:
                raise MalformedHeaderError(
                    self.path, f"{where}: {key!r} is defined for quantized encodings only, not {encoding.name}"
                )
        if encoding in QUANT_ENCODINGS:
            allowed = _ENTRY_KEYS | _QUANT_KEYS | {_DECOMPOSED_KEY, _ROTATION_KEY, ACTIVATION_KEY}
            raw_bits, raw_group = e.get("bits"), e.get("group_size")
            if not _is_int(raw_bits) or not MIN_BITS <= raw_bits <= MAX_BITS:
                raise MalformedHeaderError(
                    self.path, f"{where}: bits {_short(raw_bits)} outside {MIN_BITS}..{MAX_BITS}"
                )
            bits = raw_bits
            cols = self._coded_view(where, shape)[1]
            if not _is_int(raw_group) or not 1 <= raw_group <= cols:
                raise MalformedHeaderError(self.path, f"{where}: group size {_short(raw_group)} outside 1..{cols}")
            group_size = raw_group
            if _DECOMPOSED_KEY in e:
                outlier_columns = self._parse_outlier_columns(where, e[_DECOMPOSED_KEY], cols)
            if _ROTATION_KEY in e:
                rotation = self._parse_rotation(where, e[_ROTATION_KEY], cols, outlier_columns is not None)
            if ACTIVATION_KEY in e:
                activation = self._parse_activation(where, e[ACTIVATION_KEY])
        return self._entry_info(
            where,
            e,
            allowed,
            shape,
            bits,
            group_size,
            outlier_columns=outlier_columns,
            rotation=rotation,
            activation=activation,
        )

    def _parse_vq_entry(self, where: str, e: dict, shape: list[int]) -> TensorInfo:
        """A codebook tensor's entry (SPEC.md 5.6): dim, index_bits, group_size, rows_per_book[, rotation]."""
        for key in (_DECOMPOSED_KEY, ACTIVATION_KEY):
            if key in e:
                raise MalformedHeaderError(self.path, f"{where}: {key!r} is not defined for VQ tensors")
        rows, cols = self._coded_view(where, shape)
        dim, index_bits, group_size, rows_per_book = (
            e.get(k) for k in ("dim", "index_bits", "group_size", "rows_per_book")
        )
        if not _is_int(dim) or dim not in VQ_DIMS:
            raise MalformedHeaderError(self.path, f"{where}: dim {_short(dim)} is not one of {VQ_DIMS}")
        if not _is_int(index_bits) or not VQ_MIN_INDEX_BITS <= index_bits <= VQ_MAX_INDEX_BITS:
            raise MalformedHeaderError(
                self.path, f"{where}: index bits {_short(index_bits)} outside {VQ_MIN_INDEX_BITS}..{VQ_MAX_INDEX_BITS}"
            )
        if cols % dim:
            raise ShapeMismatchError(self.path, f"{where}: dim {dim} does not divide the {cols} columns")
        if not _is_int(group_size) or not 1 <= group_size <= cols or group_size % dim:
            raise MalformedHeaderError(
                self.path, f"{where}: group size {_short(group_size)} is not a multiple of {dim} in 1..{cols}"
            )
        if not _is_int(rows_per_book) or not 1 <= rows_per_book <= max(rows, 1):
            raise MalformedHeaderError(
                self.path, f"{where}: rows per codebook {_short(rows_per_book)} outside 1..{max(rows, 1)}"
            )
        rotation = self._parse_rotation(where, e[_ROTATION_KEY], cols, False) if _ROTATION_KEY in e else 0
        allowed = _ENTRY_KEYS | {"group_size", _ROTATION_KEY, *_VQ_KEYS}
        vq = VqParams(dim, index_bits, rows_per_book)
        return self._entry_info(where, e, allowed, shape, None, group_size, rotation=rotation, vq=vq)

    def _coded_view(self, where: str, shape: list[int]) -> tuple[int, int]:
        """(rows, cols) of a coded tensor's 2-D view, which needs 2 or more dimensions and some columns."""
        if len(shape) < 2:
            raise ShapeMismatchError(self.path, f"{where}: quantized tensors need 2 or more dimensions")
        cols = math.prod(shape[1:])
        if cols == 0:
            raise ShapeMismatchError(self.path, f"{where}: quantized tensor of shape {tuple(shape)} has no columns")
        return shape[0], cols

    def _entry_info(
        self,
        where: str,
        e: dict,
        allowed: frozenset[str] | set[str],
        shape: list[int],
        bits: int | None,
        group_size: int | None,
        *,
        outlier_columns: tuple[int, ...] | None = None,
        rotation: int = 0,
        activation: ActivationSpec | None = None,
        vq: VqParams | None = None,
    ) -> TensorInfo:
        """The checks every entry shares once its encoding's keys are parsed: no unknown keys, bounds, alignment,
        crc32 range, and a byte length equal to what shape and keys imply."""
        name, encoding = e["name"], Encoding(e["encoding"])
        unknown = set(e) - allowed
        if unknown:
            raise MalformedHeaderError(self.path, f"{where}: unknown keys {sorted(unknown)} for {encoding.name}")
        offset, nbytes, crc = e["offset"], e["nbytes"], e["crc32"]
        if offset < 0 or nbytes < 0 or offset + nbytes > self.data_size:
            raise OutOfBoundsError(
                self.path,
                f"{where}: bytes {offset}..{offset + nbytes} lie outside the {self.data_size}-byte data region",
            )
        if offset % ALIGNMENT:
            raise AlignmentError(self.path, f"{where}: offset {offset} is not a multiple of {ALIGNMENT}")
        if not 0 <= crc < (1 << 32):
            raise MalformedHeaderError(self.path, f"{where}: crc32 out of range")
        info = TensorInfo(
            name,
            encoding,
            tuple(shape),
            offset,
            nbytes,
            crc,
            bits,
            group_size,
            outlier_columns,
            rotation,
            activation,
            vq,
        )
        expected = tensor_nbytes(info.parts)
        if nbytes != expected:
            k = info.n_outlier_columns
            extra = "" if k is None else f" with an offset row and {k} float column{'' if k == 1 else 's'}"
            if vq is not None:
                extra = f" dim {vq.dim}, {vq.index_bits}-bit indices, {vq.n_books(shape[0])} codebooks"
            raise ShapeMismatchError(
                self.path,
                f"{where}: {nbytes} bytes stored, shape {tuple(shape)} as {encoding.name}"
                f"{'' if bits is None else f' {bits}-bit'}{extra} needs {expected}",
            )
        return info

    def _parse_outlier_columns(self, where: str, value: Any, cols: int) -> tuple[int, ...]:
        """The float columns of a decomposed tensor: strictly increasing uints below cols (SPEC.md 5.3)."""
        if self.layout_revision < DECOMPOSED_LAYOUT_REVISION:
            raise MalformedHeaderError(
                self.path,
                f"{where}: key {_DECOMPOSED_KEY!r} exists only from layout revision "
                f"{DECOMPOSED_LAYOUT_REVISION}; this file is revision {self.layout_revision}",
            )
        # type() rather than isinstance: msgpack gives exactly int for integers and bool (an int subclass) for
        # booleans, which are not column indices. map/min/max run in C, so a long hostile list stays cheap.
        if not isinstance(value, list) or not set(map(type, value)) <= {int} or (value and min(value) < 0):
            raise MalformedHeaderError(
                self.path, f"{where}: {_DECOMPOSED_KEY} {_short(value)} is not an array of non-negative integers"
            )
        if value and max(value) >= cols:
            raise MalformedHeaderError(self.path, f"{where}: outlier column {max(value)} is outside 0..{cols - 1}")
        idx = np.array(value, dtype=np.int64)  # fits: every index is below cols <= MAX_ELEMENTS
        if (np.diff(idx) <= 0).any():
            raise MalformedHeaderError(self.path, f"{where}: outlier columns are not strictly increasing")
        return tuple(value)

    def _parse_rotation(self, where: str, value: Any, cols: int, decomposed: bool) -> int:
        """The Hadamard block size of a rotated tensor: a power of two >= 2 dividing cols (SPEC.md 5.4)."""
        if self.layout_revision < ROTATED_LAYOUT_REVISION:
            raise MalformedHeaderError(
                self.path,
                f"{where}: key {_ROTATION_KEY!r} exists only from layout revision "
                f"{ROTATED_LAYOUT_REVISION}; this file is revision {self.layout_revision}",
            )
        if type(value) is not int or value < 2 or value & (value - 1) or cols % value:
            raise MalformedHeaderError(
                self.path,
                f"{where}: rotation {_short(value)} is not an integer power of two >= 2 dividing the {cols} columns",
            )
        if decomposed:
            raise MalformedHeaderError(self.path, f"{where}: a tensor is either decomposed or rotated, not both")
        return value

    def _parse_activation(self, where: str, value: Any) -> ActivationSpec:
        """How the tensor's input is quantized: {"bits": 2..8[, "scale": positive finite binary32]} (SPEC.md 5.5)."""
        if self.layout_revision < ACTIVATION_LAYOUT_REVISION:
            raise MalformedHeaderError(
                self.path,
                f"{where}: key {ACTIVATION_KEY!r} exists only from layout revision "
                f"{ACTIVATION_LAYOUT_REVISION}; this file is revision {self.layout_revision}",
            )
        spec = parse_activation_entry(value)
        if isinstance(spec, str):
            raise MalformedHeaderError(self.path, f"{where}: {_short(spec, 120)}")
        return spec

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

    def _check_not_truncated(self) -> None:
        """TruncatedFileError when the file has shrunk since it was opened: reading its mapping past the new end
        would kill the process with SIGBUS. One fstat per tensor access; a truncation between this check and
        the read, or under arrays already handed out, is beyond what a memory map can defend (SPEC.md 7.1)."""
        if self._mm is None:
            raise ValueError(f"{self.path}: file is closed")
        try:
            size = os.fstat(self._fd).st_size
        except OSError as e:
            raise FormatError(self.path, f"cannot read file: {e.strerror or e}") from None
        if size < self.file_size:
            raise TruncatedFileError(
                self.path, f"file shrank from {self.file_size} to {size} bytes while open (another program changed it)"
            )

    def _bytes(self, info: TensorInfo, rel: int, n: int) -> np.ndarray:
        if self._mm is None:
            raise ValueError(f"{self.path}: file is closed")
        start = self.data_start + info.offset + rel
        return self._mm[start : start + n]

    def check(self, name: str) -> None:
        """Verify one tensor (once per open file): its CRC32, then that its values (float tensors), or its scales
        and, when decomposed, its offset and outlier values (quantized tensors), or its codebooks and scales
        (codebook tensors) are finite."""
        if name in self._verified:
            return
        info = self.info(name)
        self._check_not_truncated()
        crc = zlib.crc32(self._bytes(info, 0, info.nbytes).data)
        if crc != info.crc32:
            raise ChecksumError(self.path, f"tensor {name!r} is corrupt (checksum mismatch)", tensor=name)
        if info.quantized or info.codebook:
            spans = dict(zip(info.part_names, info.parts))
            for part, dtype, what in (
                ("codebooks", CODEBOOK_DTYPE, "a non-finite codebook value"),
                ("scales", SCALE_DTYPE, "a non-finite scale"),
                ("offset", OFFSET_DTYPE, "a non-finite offset"),
                ("outliers", OUTLIER_DTYPE, "a non-finite outlier value"),
            ):
                if part in spans and not np.isfinite(self._bytes(info, *spans[part]).view(dtype)).all():
                    raise InvalidValueError(self.path, f"tensor {name!r} has {what}", tensor=name)
        elif not np.isfinite(self._bytes(info, 0, info.nbytes).view(FLOAT_ENCODINGS[info.encoding])).all():
            # NaN weights would turn every later result into NaN (a decoder then emits garbage for minutes)
            raise InvalidValueError(self.path, f"tensor {name!r} has a NaN or infinite value", tensor=name)
        self._verified.add(name)

    def verify(self) -> list[ChecksumError | InvalidValueError]:
        """Check every tensor; returns the failures (empty when the file is intact). Each has `.tensor`."""
        problems = []
        for name in self.tensors:
            try:
                self.check(name)
            except (ChecksumError, InvalidValueError) as e:
                problems.append(e)
        return problems

    def raw(self, name: str) -> list[np.ndarray]:
        """Zero-copy views of a tensor's stored parts, in storage order (TensorInfo.part_names): float data; or
        packed codes, scales, [zero points], and for a decomposed tensor the offset and, if k > 0, the outliers; or
        packed indices, codebooks and scales (VQ)."""
        return list(self._part_views(name).values())

    def _part_views(self, name: str) -> dict[str, np.ndarray]:
        """part name -> zero-copy view, typed and shaped (explicit sizes, not -1: rows may be 0)."""
        info = self.info(name)
        self.check(name)
        self._check_not_truncated()  # check() looks only once per tensor; the file may shrink later
        views = {part: self._bytes(info, rel, n) for part, (rel, n) in zip(info.part_names, info.parts)}
        if info.encoding in FLOAT_ENCODINGS:
            return {"values": views["values"].view(FLOAT_ENCODINGS[info.encoding]).reshape(info.shape)}
        rows, cols = codecs.view_2d_shape(info.shape)
        if info.vq is not None and info.group_size is not None:
            vq, ng = info.vq, codecs.n_groups(cols, info.group_size)
            return {
                "indices": views["indices"].reshape(rows, packing.row_bytes(cols // vq.dim, vq.index_bits)),
                "codebooks": views["codebooks"].view(CODEBOOK_DTYPE).reshape(vq.book_shape(rows)),
                "scales": views["scales"].view(SCALE_DTYPE).reshape(rows, ng),
            }
        bits, group_size = info.quant
        ng = codecs.n_groups(cols, group_size)
        shaped = {
            "codes": lambda v: v.reshape(rows, packing.row_bytes(cols, bits)),
            "scales": lambda v: v.view(SCALE_DTYPE).reshape(rows, ng),
            "zeros": lambda v: v.reshape(rows, packing.row_bytes(ng, bits)),
            "offset": lambda v: v.view(OFFSET_DTYPE),
            "outliers": lambda v: v.view(OUTLIER_DTYPE).reshape(rows, info.n_outlier_columns),
        }
        return {part: shaped[part](v) for part, v in views.items()}

    def _decomposition(self, info: TensorInfo, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """offset / outlier_columns / outliers of a decomposed tensor as QuantizedTensor holds them ({} when
        not decomposed); k = 0 stores no outliers part, so it becomes an empty (rows, 0) array."""
        if not info.decomposed:
            return {}
        rows = info.shape[0]
        return {
            "offset": np.asarray(views["offset"], dtype=np.float32),
            "outlier_columns": np.array(info.outlier_columns, dtype=np.int64).reshape(-1),
            "outliers": np.asarray(views["outliers"], dtype=np.float16)
            if "outliers" in views
            else np.zeros((rows, 0), np.float16),
        }

    def quantized(self, name: str) -> codecs.QuantizedTensor:
        """The unpacked codes of a quantized tensor (with its offset and float columns when decomposed)."""
        info = self.info(name)
        if not info.quantized:
            raise TypeError(f"{name!r} is stored as {info.encoding.name}, not quantized")
        views = self._part_views(name)
        bits, group_size = info.quant
        cols = codecs.view_2d_shape(info.shape)[1]
        ng = codecs.n_groups(cols, group_size)
        zeros = packing.unpack_codes(views["zeros"], bits, ng) if "zeros" in views else None
        return codecs.QuantizedTensor(
            info.shape,
            bits,
            group_size,
            packing.unpack_codes(views["codes"], bits, cols),
            np.asarray(views["scales"], dtype=np.float16),
            zeros,
            **self._decomposition(info, views),
            rotation=info.rotation,
        )

    def codebook(self, name: str) -> codecs.CodebookTensor:
        """The unpacked indices, codebooks and scales of a codebook (VQ) tensor."""
        info = self.info(name)
        if info.vq is None or info.group_size is None:
            raise TypeError(f"{name!r} is stored as {info.encoding.name}, not as a codebook tensor")
        views = self._part_views(name)
        vq, cols = info.vq, codecs.view_2d_shape(info.shape)[1]
        return codecs.CodebookTensor(
            info.shape,
            vq.dim,
            vq.index_bits,
            info.group_size,
            vq.rows_per_book,
            packing.unpack_indices(views["indices"], vq.index_bits, cols // vq.dim),
            np.asarray(views["codebooks"], dtype=np.float16),
            np.asarray(views["scales"], dtype=np.float16),
            info.rotation,
        )

    def array(self, name: str, rows: slice | None = None, dtype=np.float32, *, unrotate: bool = True) -> np.ndarray:
        """A tensor as a float array of its stored shape (dequantized if needed); `rows` selects along dim 0.

        Float tensors stored in `dtype` come back as read-only memory-mapped views (no copy). A rotated tensor
        (SPEC.md 5.4) comes back as the weight W; with unrotate=False as V = W R, the dequantized codes, for a
        caller that rotates its inputs instead (x W^T = (x R) V^T).
        """
        if rows is not None and not isinstance(rows, slice):
            raise TypeError(f"rows must be a slice or None, got {type(rows).__name__}")
        info = self.info(name)
        views = self._part_views(name)
        sel = slice(None) if rows is None else rows
        if info.encoding in FLOAT_ENCODINGS:
            data = views["values"][sel] if info.shape else views["values"]
            return data if data.dtype == np.dtype(dtype) else data.astype(dtype)
        r_rows, r_cols = codecs.view_2d_shape(info.shape)
        if info.vq is not None and info.group_size is not None:
            vq = info.vq
            book_of_row = np.arange(r_rows)[sel] // vq.rows_per_book
            w = codecs.dequantize_codebook_packed(
                views["indices"][sel], book_of_row, views["codebooks"], views["scales"][sel],
                vq.dim, vq.index_bits, r_cols, info.group_size,
            )  # fmt: skip
        else:
            zeros = views["zeros"][sel] if "zeros" in views else None
            dec = self._decomposition(info, views)
            if dec:
                dec["outliers"] = dec["outliers"][sel]  # the rows of the codes: the fused loop applies them per block
            bits, group_size = info.quant
            w = codecs.dequantize_packed(
                views["codes"][sel], views["scales"][sel], zeros, bits, r_cols, group_size, **dec
            )
        if info.rotation and unrotate:
            w = codecs.unrotate_columns(w, info.rotation)
        return w.reshape((w.shape[0],) + info.shape[1:]).astype(dtype, copy=False)

    def close(self) -> None:
        """Release the file. Arrays already handed out stay valid: the mapping is unmapped only when the last
        view of it is garbage-collected (closing it under live views would make them dangle and crash)."""
        self._mm = None
        self._release_fd()

    def __enter__(self) -> WqFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_wq(path: str | os.PathLike) -> WqFile:
    return WqFile(path)


def _short(v: Any, limit: int = 60) -> str:
    """repr() cut short: a hostile header must not produce a megabyte error message."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."
