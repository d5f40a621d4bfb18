"""Weight access for the runtime models: by Hugging Face state_dict name, dequantized when used.

The default keeps nothing: each call dequantizes from the memory-mapped packed codes, so resident memory
holds the packed file pages plus one layer's float weights at a time. `cache=True` keeps every dequantized
array (faster, for devices with the memory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..formats import MissingTensorError, WqFile
from ..formats.activation import ActivationSpec
from ..formats.codecs import QuantizedTensor
from .compute import FLOAT_BITS


class Weights:
    def __init__(
        self, source: WqFile | Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None, *, cache: bool = False
    ):
        self._file = source if isinstance(source, WqFile) else None
        self._dict: dict[str, np.ndarray] = (
            {} if isinstance(source, WqFile) else {k: np.asarray(v) for k, v in source.items()}
        )
        self.meta: dict = dict(self._file.meta if self._file is not None else (meta or {}))
        self.cache = cache
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, *, cache: bool = False) -> Weights:
        return cls(WqFile(path), cache=cache)

    @property
    def path(self) -> str | None:
        return None if self._file is None else self._file.path

    def __contains__(self, name: str) -> bool:
        return name in (self._file.tensors if self._file is not None else self._dict)

    def names(self) -> list[str]:
        return list(self._file.tensors if self._file is not None else self._dict)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._file is not None:
            return self._file.info(name).shape
        return self._get_dict(name).shape

    def _get_dict(self, name: str) -> np.ndarray:
        try:
            return self._dict[name]
        except KeyError:
            raise MissingTensorError(None, f"no tensor named {name!r}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        """float32 array in the checkpoint's shape."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        if self._file is not None:
            arr = self._file.array(name)
        else:
            arr = self._get_dict(name).astype(np.float32, copy=False)
        if self.cache:
            arr = np.ascontiguousarray(arr)
            self._cache[name] = arr
        return arr

    def get(self, name: str, default: np.ndarray | None = None) -> np.ndarray | None:
        return self[name] if name in self else default

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """float32 rows [start, stop) along the first dimension, dequantizing only those rows."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit[start:stop]
        if self._file is not None:
            return self._file.array(name, rows=slice(start, stop))
        return self._get_dict(name)[start:stop].astype(np.float32, copy=False)

    def take(self, name: str, index: np.ndarray) -> np.ndarray:
        """float32 rows at `index` (embedding lookup) without dequantizing the whole table."""
        index = np.asarray(index)
        uniq, inv = np.unique(index.ravel(), return_inverse=True)
        if self.cache or self._file is None:
            return self[name][index]
        if not self._file.info(name).quantized:  # gather from the memory map, converting only those rows
            return self._file.raw(name)[0][index].astype(np.float32)
        rows = np.stack([self.rows(name, int(i), int(i) + 1)[0] for i in uniq])
        return rows[inv].reshape(index.shape + rows.shape[1:])

    def rotation(self, name: str) -> int:
        """The rotation block a tensor is stored with (SPEC.md 5.4), else 0."""
        return 0 if self._file is None else self._file.info(name).rotation

    def uncached_rotation(self, name: str) -> int:
        """The rotation block a product may apply to its few input rows instead of undoing it on the whole weight
        (`stored` gives V = W R): the stored rotation when weights are not cached; 0 with cache=True, where the
        cache holds W itself, the rotation undone once on first use."""
        return 0 if self.cache else self.rotation(name)

    def bits(self, name: str) -> int:
        """Stored code bits of a quantized tensor, else FLOAT_BITS (compute accounting)."""
        info = None if self._file is None else self._file.info(name)
        return info.bits if info is not None and info.quantized and info.bits else FLOAT_BITS

    def activation(self, name: str) -> ActivationSpec | None:
        """How the input of the product with this weight is quantized (SPEC.md 5.5); None: float input."""
        return None if self._file is None else self._file.info(name).activation

    def codes(self, name: str) -> QuantizedTensor:
        """The stored codes of a quantized tensor (the integer path multiplies these)."""
        if self._file is None:
            raise TypeError(f"{name!r} is a float array, not quantized")
        return self._file.quantized(name)

    def stored(self, name: str) -> np.ndarray:
        """float32 V = W R of a rotated tensor: its dequantized codes before the rotation is undone (not cached)."""
        if self._file is None:
            return self[name]
        return self._file.array(name, unrotate=False)

    def close(self) -> None:
        self._cache.clear()
        if self._file is not None:
            self._file.close()
