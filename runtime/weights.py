"""Weight access for the runtime models: by Hugging Face state_dict name, dequantized when used.

A memory budget (`max_memory`, bytes of float32 kept) decides which tensors stay dequantized after first use:
the ones re-read most often first (a model's `reuse_rank`: Whisper's decoder weights are read at every token,
its encoder weights once per window), the rest dequantized per use from the memory-mapped packed codes. The
default keeps nothing (resident memory: the packed file pages plus one layer's float weights at a time);
`cache=True` is an unlimited budget. When the compiled kernel is available (`kernel.available()`), a quantized
tensor that is not kept is multiplied straight from its packed codes (`packed`) instead of being dequantized.
A codebook (VQ) tensor always takes the float path: the reader dequantizes it by table lookup, whole or by
row block, like any other stored tensor (no compiled kernel, no integer path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..formats import Encoding, MissingTensorError, WqFile
from ..formats.activation import ActivationSpec
from ..formats.codecs import QuantizedTensor
from . import kernel
from .compute import FLOAT_BITS

# A tensor's place in the order tensors are kept in under a memory budget (lower first), None: never kept.
ReuseRank = Callable[[str], int | None]
UNLIMITED = float("inf")
KEEP_BLOCK_BYTES = 8 << 20  # float32 rows dequantized at once when a matrix is first kept


def keep_within(costs: Mapping[str, int], rank: ReuseRank, budget: float) -> frozenset[str]:
    """Names kept under `budget` bytes: those that cost nothing (float32 views of the file, whatever their rank),
    then by rank (ties in file order), each one that still fits."""
    order = sorted((r, i, name) for i, name in enumerate(costs) if costs[name] and (r := rank(name)) is not None)
    kept, used = {name for name, cost in costs.items() if not cost}, 0
    for _, _, name in order:
        if used + costs[name] <= budget:
            kept.add(name)
            used += costs[name]
    return frozenset(kept)


def file_order(name: str) -> int:
    """The rank of a model that reads every weight equally often (Wav2Vec2: once per utterance)."""
    return 0


class Weights:
    def __init__(
        self,
        source: WqFile | Mapping[str, np.ndarray],
        meta: Mapping[str, Any] | None = None,
        *,
        cache: bool = False,
        max_memory: float | None = None,
        rank: ReuseRank = file_order,
    ):
        """`max_memory`: float32 bytes of dequantized tensors to keep (None: 0, or unlimited with cache=True)."""
        self._file = source if isinstance(source, WqFile) else None
        self._dict: dict[str, np.ndarray] = (
            {} if isinstance(source, WqFile) else {k: np.asarray(v) for k, v in source.items()}
        )
        self.meta: dict = dict(self._file.meta if self._file is not None else (meta or {}))
        if max_memory is None:
            max_memory = UNLIMITED if cache else 0
        elif max_memory < 0:
            raise ValueError(f"max_memory must be >= 0 bytes, got {max_memory}")
        self.max_memory = max_memory
        self._cache: dict[str, np.ndarray] = {}
        self._packed: dict[str, kernel.PackedTensor] = {}
        self.kept = self.plan(rank)

    @classmethod
    def open(cls, path: str | os.PathLike, *, cache: bool = False, max_memory: float | None = None) -> Weights:
        return cls(WqFile(path), cache=cache, max_memory=max_memory)

    @property
    def cache(self) -> bool:
        """Every tensor is kept after first use (cache=True or a budget the whole model fits in)."""
        return len(self.kept) == len(self.names())

    def kept_bytes(self, name: str) -> int:
        """Bytes keeping a tensor adds: its float32 size, 0 for float32 stored in the file (a memory-mapped view).
        A weight with an activation spec is never dequantized (its products take the integer path): keeping it
        holds its unpacked codes, a byte per weight (`codes`), or nothing when the compiled kernel reads its packed
        codes in place (`packed`)."""
        n = int(np.prod(self.shape(name)))
        if self._file is None:
            return 4 * n
        info = self._file.info(name)
        if info.encoding == Encoding.F32:
            return 0
        if info.activation is not None:
            return 0 if kernel.available() else n
        return 4 * n

    def plan(self, rank: ReuseRank) -> frozenset[str]:
        """Choose the tensors kept within `max_memory` in `rank` order (see `keep_within`); returns them."""
        self.kept = keep_within({n: self.kept_bytes(n) for n in self.names()}, rank, self.max_memory)
        self._cache = {n: a for n, a in self._cache.items() if n in self.kept}
        return self.kept

    def keeps(self, name: str) -> bool:
        return name in self.kept

    def _keeps_float(self, name: str) -> bool:
        """Whether a kept tensor is kept as float32: not a weight of the integer path (`kept_bytes`), which keeps
        its codes; a lookup in it (Whisper's tied token embedding) gathers rows instead (`take`)."""
        return name in self.kept and self.activation(name) is None

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
        keep = self._keeps_float(name)
        if self._file is not None and keep and self._column_major(name):
            arr = self._cache[name] = _dequantize_transposed(self._file, name)
            return arr
        if self._file is not None:
            arr = self._file.array(name)
        else:
            arr = self._get_dict(name).astype(np.float32, copy=False)
        if keep:
            arr = np.asfortranarray(arr) if self._column_major(name) else np.ascontiguousarray(arr)
            self._cache[name] = arr
        return arr

    def _column_major(self, name: str) -> bool:
        """Whether a kept matrix is held column-major (`_dequantize_transposed`): every one made in memory, and
        with an unlimited budget also those the file holds as float32 (otherwise zero-cost row-major views of it),
        the float32 model in memory being what cache=True asks for. Weights on a dict of arrays follow the
        float32 file's rule, so both run the same products."""
        if self._file is None:
            return self._get_dict(name).ndim == 2 and self.max_memory == UNLIMITED
        info = self._file.info(name)
        if info.encoding == Encoding.F32:
            return len(info.shape) == 2 and self.max_memory == UNLIMITED
        return len(info.shape) == 2 and (info.quantized or info.codebook or info.encoding == Encoding.F16)

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
        if self._keeps_float(name) or self._file is None:
            return self[name][index]
        if self._file.info(name).encoding in (Encoding.F32, Encoding.F16):  # gather those rows from the memory map
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
        return 0 if name in self.kept else self.rotation(name)

    def packed(self, name: str) -> kernel.PackedTensor | None:
        """The packed codes of a quantized tensor that is not kept, or that has an activation spec (its products
        never use a float copy), for the compiled kernel when it is available (else None: dequantize or unpack
        instead). Zero-copy views of the memory map, built once."""
        if self._file is None or self._keeps_float(name) or not kernel.available():
            return None
        hit = self._packed.get(name)
        if hit is None and self._file.info(name).quantized:
            hit = self._packed[name] = kernel.PackedTensor.from_file(self._file, name)
        return hit

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
        self._packed.clear()
        if self._file is not None:
            self._file.close()


def _dequantize_transposed(f: WqFile, name: str) -> np.ndarray:
    """A kept matrix W in column-major order (W.T contiguous): the products x @ W.T then stream it in
    the layout BLAS multiplies fastest (about twice as fast as row-major for a decoding step's few rows against
    Whisper's output embedding, single-threaded). Dequantized a block of rows at a time: the transient is one block."""
    rows, cols = f.info(name).shape
    out = np.empty((rows, cols), dtype=np.float32, order="F")
    step = max(1, KEEP_BLOCK_BYTES // (4 * cols))
    for r0 in range(0, rows, step):
        out[r0 : r0 + step] = f.array(name, rows=slice(r0, r0 + step))
    return out
