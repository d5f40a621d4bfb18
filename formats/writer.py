"""The one .wq writer: atomic, deterministic, strict about what it is given."""

from __future__ import annotations

import os
import tempfile
import zlib
from typing import Any, Mapping

import msgpack
import numpy as np

from . import codecs, packing
from .constants import (
    ALIGNMENT,
    CONTAINER_VERSION,
    FLOAT_ENCODINGS,
    LAYOUT_REVISION,
    MAGIC,
    MAX_NAME_LEN,
    MAX_NDIM,
    PREFIX,
    PREFIX_FLAGS,
    PREFIX_SIZE,
    Encoding,
    align,
)
from .errors import OutputExistsError
from .layout import tensor_parts


def canonical(obj: Any) -> Any:
    """Metadata with map keys sorted and numpy scalars made plain, so equal metadata packs to equal bytes."""
    if isinstance(obj, Mapping):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"metadata keys must be strings, got {k!r}")
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        raise TypeError("store arrays as tensors, not in metadata")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise TypeError(f"metadata value of type {type(obj).__name__} cannot be stored")


def _encode_parts(tensor: np.ndarray | codecs.QuantizedTensor, encoding: Encoding | None):
    """(entry fields, list of part byte arrays) for one tensor."""
    if isinstance(tensor, codecs.QuantizedTensor):
        rows, cols = codecs.view_2d_shape(tensor.shape)
        parts = [packing.pack_codes(tensor.codes, tensor.bits), tensor.scales.astype("<f2")]
        if tensor.zeros is not None:
            parts.append(packing.pack_codes(tensor.zeros, tensor.bits))
        fields = {"encoding": int(tensor.encoding), "shape": list(tensor.shape), "bits": tensor.bits,
                  "group_size": tensor.group_size}
        return fields, parts
    arr = np.asarray(tensor)
    if encoding is None:
        encoding = Encoding.F16 if arr.dtype == np.float16 else Encoding.F32
    if encoding not in FLOAT_ENCODINGS:
        raise ValueError(f"plain arrays are stored as F32 or F16, not {encoding!r}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"cannot store an array of dtype {arr.dtype}")
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"tensors have at most {MAX_NDIM} dimensions")
    data = np.ascontiguousarray(arr, dtype=FLOAT_ENCODINGS[Encoding(encoding)])
    return {"encoding": int(encoding), "shape": [int(d) for d in arr.shape]}, [data]


class WqWriter:
    """Collects tensors, then writes prefix, header and data to a temporary file and renames it into place.

    Use as a context manager; leaving the block by an exception writes nothing.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], *, force: bool = False):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not force:
            raise OutputExistsError(f"{self.path} exists; pass force=True (--force) to replace it")
        self.meta = canonical(meta)
        self.force = force
        self._entries: list[dict] = []
        self._names: set[str] = set()
        self._spool = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(self.path)) or ".")
        self._size = 0
        self._state = "open"

    def add(self, name: str, tensor: np.ndarray | codecs.QuantizedTensor, encoding: Encoding | None = None) -> None:
        if self._state != "open":
            raise RuntimeError(f"cannot add tensor {name!r}: writer is {self._state}")
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_LEN:
            raise ValueError(f"tensor names are non-empty strings of at most {MAX_NAME_LEN} bytes: {name!r}")
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        fields, parts = _encode_parts(tensor, encoding)
        expected = tensor_parts(Encoding(fields["encoding"]), tuple(fields["shape"]), fields.get("bits"),
                                fields.get("group_size"))
        crc = 0
        start = self._size
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
        self._names.add(name)
        self._entries.append({"name": name, **fields, "offset": start, "nbytes": total, "crc32": crc})

    def close(self) -> str:
        """Write the file. Returns its path."""
        if self._state != "open":
            raise RuntimeError(f"writer is {self._state}")
        header = msgpack.packb(
            canonical({"layout_revision": LAYOUT_REVISION, "meta": self.meta, "tensors": self._entries,
                       "data_size": self._size}),
            use_bin_type=True,
        )
        prefix = PREFIX.pack(MAGIC, CONTAINER_VERSION, len(header), zlib.crc32(header), PREFIX_FLAGS)
        pad = align(PREFIX_SIZE + len(header)) - PREFIX_SIZE - len(header)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".wq.partial", dir=directory)
        try:
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
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            self._discard("closed")
        return self.path

    def abort(self) -> None:
        if self._state == "open":
            self._discard("aborted")

    def _discard(self, state: str) -> None:
        self._spool.close()
        self._state = state

    def __enter__(self) -> "WqWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_wq(path, meta: Mapping[str, Any], tensors: Mapping[str, Any], *, force: bool = False) -> str:
    """Write `tensors` (name -> ndarray or QuantizedTensor, in the mapping's order) with `meta` to `path`."""
    with WqWriter(path, meta, force=force) as w:
        for name, t in tensors.items():
            w.add(name, t)
    return os.fspath(path)


__all__ = ["WqWriter", "write_wq", "canonical", "ALIGNMENT"]
