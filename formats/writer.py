"""The one .wq writer: atomic, deterministic, strict about what it is given."""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from . import codecs, packing
from .activation import ACTIVATION_KEY, ActivationSpec, activation_problem
from .constants import (
    ACTIVATION_LAYOUT_REVISION,
    ALIGNMENT,
    BASE_LAYOUT_REVISION,
    CODEBOOK_DTYPE,
    CONTAINER_VERSION,
    DECOMPOSED_LAYOUT_REVISION,
    FLOAT_ENCODINGS,
    MAGIC,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_HEADER_LEN,
    MAX_NAME_LEN,
    MAX_NDIM,
    OFFSET_DTYPE,
    OUTLIER_DTYPE,
    PREFIX,
    PREFIX_FLAGS,
    PREFIX_SIZE,
    ROTATED_LAYOUT_REVISION,
    SCALE_DTYPE,
    VQ_LAYOUT_REVISION,
    Encoding,
    align,
)
from .errors import OutputExistsError
from .layout import VqParams, part_names, tensor_parts

# The temporary file close() renames into place: ".NAME.PID.RANDOM.partial" beside NAME, so a run killed before
# it could clean up (SIGKILL, power loss) leaves a file that names both its output and its writer's process.
PARTIAL_SUFFIX = ".partial"

# msgpack integers are 64-bit: signed down to -2**63, unsigned up to 2**64 - 1.
_MSGPACK_INT_MIN = -(1 << 63)
_MSGPACK_INT_MAX = (1 << 64) - 1


def canonical(obj: Any) -> Any:
    """Metadata with map keys sorted and numpy scalars made plain, so equal metadata packs to equal bytes."""
    if isinstance(obj, Mapping):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"metadata keys must be strings, got {k!r}")
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        raise TypeError("store arrays as tensors, not in metadata")
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, int) and not isinstance(obj, bool) and not _MSGPACK_INT_MIN <= obj <= _MSGPACK_INT_MAX:
        raise ValueError(f"metadata integer {obj} does not fit in 64 bits")
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"metadata string {obj[:40]!r} is not valid Unicode text") from None
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise TypeError(f"metadata value of type {type(obj).__name__} cannot be stored")


def _encode_parts(tensor: np.ndarray | codecs.QuantizedTensor | codecs.CodebookTensor, encoding: Encoding | None):
    """(entry fields, list of part byte arrays in storage order) for one tensor."""
    if isinstance(tensor, codecs.CodebookTensor):
        return _encode_codebook(tensor, encoding)
    if isinstance(tensor, codecs.QuantizedTensor):
        if encoding is not None and encoding != tensor.encoding:
            raise ValueError(
                f"a {'symmetric' if tensor.symmetric else 'asymmetric'} QuantizedTensor is stored "
                f"as {tensor.encoding.name}, not {Encoding(encoding).name}"
            )
        _check_shape(tensor.shape)
        if not np.isfinite(tensor.scales).all():
            raise ValueError("quantized tensor has non-finite scales")
        fields = {
            "encoding": int(tensor.encoding),
            "shape": list(tensor.shape),
            "bits": tensor.bits,
            "group_size": tensor.group_size,
        }
        arrays = {"codes": packing.pack_codes(tensor.codes, tensor.bits), "scales": tensor.scales.astype(SCALE_DTYPE)}
        if tensor.zeros is not None:
            arrays["zeros"] = packing.pack_codes(tensor.zeros, tensor.bits)
        k = None
        # validated again, not only in QuantizedTensor: its arrays are mutable, and the writer never produces a
        # file its reader would reject (unordered or out-of-range columns, non-finite values)
        decomposition = codecs.validate_decomposition(
            tensor.shape, tensor.offset, tensor.outlier_columns, tensor.outliers
        )
        if decomposition is not None:
            offset, columns, outliers = decomposition
            if not np.isfinite(offset).all():
                raise ValueError("quantized tensor has a non-finite offset")
            if not np.isfinite(outliers).all():
                raise ValueError("quantized tensor has non-finite outlier values")
            k = int(columns.shape[0])
            fields["outlier_columns"] = columns.tolist()  # plain ints for msgpack
            arrays["offset"] = np.ascontiguousarray(offset, dtype=OFFSET_DTYPE)
            arrays["outliers"] = np.ascontiguousarray(outliers, dtype=OUTLIER_DTYPE)
        if tensor.rotation:
            codecs.validate_rotation(codecs.view_2d_shape(tensor.shape)[1], tensor.rotation, tensor.decomposed)
            fields["rotation"] = int(tensor.rotation)
        return fields, [arrays[n] for n in part_names(tensor.encoding, k)]
    arr = np.asarray(tensor)
    if encoding is None:
        encoding = Encoding.F16 if arr.dtype == np.float16 else Encoding.F32
    if encoding not in FLOAT_ENCODINGS:
        raise ValueError(f"plain arrays are stored as F32 or F16, not {encoding!r}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"cannot store an array of dtype {arr.dtype}")
    _check_shape(arr.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond F16's range become inf: refused below
        data = np.ascontiguousarray(arr, dtype=FLOAT_ENCODINGS[Encoding(encoding)])
    if not np.isfinite(data).all():  # the reader rejects them (SPEC.md 7), also values that overflow F16
        raise ValueError("cannot store a tensor with NaN or infinite values")
    return {"encoding": int(encoding), "shape": [int(d) for d in arr.shape]}, [data]


def _encode_codebook(tensor: codecs.CodebookTensor, encoding: Encoding | None):
    """Entry fields and parts of a codebook tensor (SPEC.md 5.6): packed indices, codebooks, scales."""
    if encoding is not None and encoding != Encoding.VQ:
        raise ValueError(f"a CodebookTensor is stored as VQ, not {Encoding(encoding).name}")
    tensor.validate()  # again: its arrays are mutable, and the writer never produces a file its reader rejects
    _check_shape(tensor.shape)
    if not np.isfinite(tensor.codebooks).all():
        raise ValueError("codebook tensor has non-finite codebook values")
    if not np.isfinite(tensor.scales).all():
        raise ValueError("codebook tensor has non-finite scales")
    fields: dict[str, Any] = {
        "encoding": int(Encoding.VQ),
        "shape": [int(d) for d in tensor.shape],
        "dim": int(tensor.dim),
        "index_bits": int(tensor.index_bits),
        "group_size": int(tensor.group_size),
        "rows_per_book": int(tensor.rows_per_book),
    }
    if tensor.rotation:
        fields["rotation"] = int(tensor.rotation)
    arrays = {
        "indices": packing.pack_indices(tensor.indices, tensor.index_bits),
        "codebooks": np.ascontiguousarray(tensor.codebooks, dtype=CODEBOOK_DTYPE),
        "scales": np.ascontiguousarray(tensor.scales, dtype=SCALE_DTYPE),
    }
    return fields, [arrays[n] for n in part_names(Encoding.VQ)]


def _check_shape(shape: tuple[int, ...]) -> None:
    """The limits a reader enforces (SPEC.md section 3), so the writer never produces a file it would reject."""
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensors have at most {MAX_NDIM} dimensions, got shape {tuple(shape)}")
    if any(d > MAX_DIM for d in shape) or math.prod(max(int(d), 1) for d in shape) > MAX_ELEMENTS:
        raise ValueError(f"tensor of shape {tuple(shape)} is too large for the format")


class WqWriter:
    """Collects tensors, then writes prefix, header and data to a temporary file and renames it into place.

    Use as a context manager; leaving the block by an exception writes nothing.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], *, force: bool = False):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not force:
            raise OutputExistsError(f"{self.path} exists; pass force=True (--force) to replace it")
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
        self.meta = canonical(meta)
        self.force = force
        self._entries: list[dict] = []
        self._names: set[str] = set()
        self._spool = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(self.path)) or ".")
        self._size = 0
        self._state = "open"

    def add(
        self,
        name: str,
        tensor: np.ndarray | codecs.QuantizedTensor | codecs.CodebookTensor,
        encoding: Encoding | None = None,
        *,
        activation: ActivationSpec | None = None,
    ) -> None:
        """Append one tensor (stored in call order). Plain arrays become F32, or F16 when they are float16 or
        `encoding` says so; a QuantizedTensor is stored as QSYM or QASYM (decomposed ones with their offset and
        float columns, which makes the file layout revision 2; rotated ones with their block size: revision 3).
        `activation` (quantized tensors only) records how the input of its product is quantized: revision 4.
        A CodebookTensor is stored as VQ (revision 5)."""
        if self._state != "open":
            raise RuntimeError(f"cannot add tensor {name!r}: writer is {self._state}")
        if not isinstance(name, str) or not name or len(name.encode("utf-8", "replace")) > MAX_NAME_LEN:
            raise ValueError(f"tensor names are non-empty strings of at most {MAX_NAME_LEN} bytes: {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"tensor name {name!r} is not valid Unicode text") from None
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        fields, parts = _encode_parts(tensor, encoding)
        if activation is not None:
            fields[ACTIVATION_KEY] = _activation_entry(name, tensor, activation)
        k = len(fields["outlier_columns"]) if "outlier_columns" in fields else None
        vq = VqParams(fields["dim"], fields["index_bits"], fields["rows_per_book"]) if "dim" in fields else None
        expected = tensor_parts(
            Encoding(fields["encoding"]), tuple(fields["shape"]), fields.get("bits"), fields.get("group_size"), k, vq
        )
        crc = 0
        start = self._size
        try:
            for (rel, nbytes), part in zip(expected, parts):
                raw = part.tobytes()
                if len(raw) != nbytes:
                    raise AssertionError(f"internal: part of {name!r} has {len(raw)} bytes, layout says {nbytes}")
                gap = start + rel - self._size
                for chunk in (b"\0" * gap, raw):
                    self._spool.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                self._size += gap + len(raw)
            total = self._size - start
            tail = align(self._size) - self._size
            self._spool.write(b"\0" * tail)
            self._size += tail
        except BaseException:
            self._discard("failed")  # the spool holds part of a tensor: nothing after this can be trusted
            raise
        self._names.add(name)
        self._entries.append({"name": name, **fields, "offset": start, "nbytes": total, "crc32": crc})

    @property
    def layout_revision(self) -> int:
        """The lowest revision that expresses the tensors added so far (SPEC.md section 9): a file without
        decomposed or rotated tensors stays revision 1, so readers that predate revision 2 still read it."""
        if any(e["encoding"] == Encoding.VQ for e in self._entries):
            return VQ_LAYOUT_REVISION
        if any(ACTIVATION_KEY in e for e in self._entries):
            return ACTIVATION_LAYOUT_REVISION
        if any("rotation" in e for e in self._entries):
            return ROTATED_LAYOUT_REVISION
        if any("outlier_columns" in e for e in self._entries):
            return DECOMPOSED_LAYOUT_REVISION
        return BASE_LAYOUT_REVISION

    def close(self) -> str:
        """Write the file. Returns its path. On any failure no file (and no temporary file) is left."""
        if self._state != "open":
            raise RuntimeError(f"writer is {self._state}")
        tmp = None
        try:
            header = msgpack.packb(
                canonical(
                    {
                        "layout_revision": self.layout_revision,
                        "meta": self.meta,
                        "tensors": self._entries,
                        "data_size": self._size,
                    }
                ),
                use_bin_type=True,
            )
            if len(header) > MAX_HEADER_LEN:
                raise ValueError(f"header of {len(header)} bytes exceeds the format's {MAX_HEADER_LEN}-byte limit")
            prefix = PREFIX.pack(MAGIC, CONTAINER_VERSION, len(header), zlib.crc32(header), PREFIX_FLAGS)
            pad = align(PREFIX_SIZE + len(header)) - PREFIX_SIZE - len(header)
            directory, name = os.path.split(os.path.abspath(self.path))
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=directory)
            with os.fdopen(fd, "wb") as out:
                out.write(prefix)
                out.write(header)
                out.write(b"\0" * pad)
                self._spool.seek(0)
                while chunk := self._spool.read(1 << 24):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if os.path.exists(self.path) and not self.force:
                raise OutputExistsError(f"{self.path} appeared while writing; pass force=True to replace it")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            self._discard("failed")
            raise
        self._discard("closed")
        return self.path

    def abort(self) -> None:
        if self._state == "open":
            self._discard("aborted")

    def _discard(self, state: str) -> None:
        if not self._spool.closed:
            self._spool.close()
        self._state = state

    def __enter__(self) -> WqWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def stale_partials(path: str | os.PathLike) -> list[str]:
    """Temporary files a writer of `path` left behind when its process died (SIGKILL, power loss): the
    ".NAME.PID.*.partial" files beside `path` whose PID no longer runs. Files of a live writer are not listed."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    stale = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    for entry in entries:
        if not (entry.startswith(f".{name}.") and entry.endswith(PARTIAL_SUFFIX)):
            continue
        pid = entry[len(name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.append(os.path.join(directory, entry))
    return sorted(stale)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive under another user; or no such PID on this system
        return True
    return True


def _activation_entry(name: str, tensor: Any, activation: ActivationSpec) -> dict[str, Any]:
    """The entry map of an activation spec, checked as the reader will check it (SPEC.md 5.5)."""
    if not isinstance(tensor, codecs.QuantizedTensor):
        raise ValueError(f"{name!r}: an activation spec needs a quantized weight (its codes are what x multiplies)")
    if not isinstance(activation, ActivationSpec):
        raise TypeError(f"{name!r}: activation must be an ActivationSpec, got {type(activation).__name__}")
    problem = activation_problem(activation.bits, activation.scale)  # again: dataclass fields stay assignable
    if problem:
        raise ValueError(f"{name!r}: {problem}")
    return activation.to_entry()


def write_wq(
    path,
    meta: Mapping[str, Any],
    tensors: Mapping[str, Any],
    *,
    force: bool = False,
    activations: Mapping[str, ActivationSpec] | None = None,
) -> str:
    """Write `tensors` (name -> ndarray, QuantizedTensor or CodebookTensor, in the mapping's order) with `meta`
    to `path`; `activations` maps quantized weights' names to how their inputs are quantized (SPEC.md 5.5)."""
    activations = dict(activations or {})
    unknown = sorted(set(activations) - set(tensors))
    if unknown:
        raise ValueError(f"activation specs for tensors that are not written: {unknown[:5]}")
    with WqWriter(path, meta, force=force) as w:
        for name, t in tensors.items():
            w.add(name, t, activation=activations.get(name))
    return os.fspath(path)


__all__ = ["WqWriter", "write_wq", "canonical", "stale_partials", "ALIGNMENT", "PARTIAL_SUFFIX"]
