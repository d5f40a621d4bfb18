"""Decomposed quantization of embedding tables: W = Q + offset (one row added to every row) + a few float columns.

Whisper's token embedding (tied to the output projection) is the largest tensor of the small models (54 % of
tiny.en's quantized weights, 37 % of base's) and the one 4-bit quantization hurts most. Its rows share a large
common component: the mean row holds about 85 % of the table's energy, and one column has 4-30x the spread of
the others (a residual-stream outlier dimension). Group-wise codes spend their range on that shared component
and on the outlier column, so every token pays for it. Stored instead:

    offset      float32 (cols,)    the mean row, added back to every row;
    columns     k outlier columns, stored as float16 values (their codes are ignored);
    codes       the residual W - offset, with those columns zeroed, quantized as usual.

The cost is 64 bits per row (k = 4) plus one float row; measured effect: benchmarks/results/quant_table_whisper-base.md.
In the output projection the offset adds h . offset to every logit alike, which the softmax ignores; the runtime
applies the decomposition exactly anyway (formats.codecs.apply_decomposition).

Columns are chosen by the error they would cause: the spread of the residual column, weighted (when calibration
statistics exist) by how strongly the inputs drive that column (diag H / mean diag H, plus 1 for the lookup use,
which sees the weight error directly).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...formats import QuantizedTensor


@dataclasses.dataclass(frozen=True)
class Decomposition:
    offset: np.ndarray  # float32 (cols,)
    columns: np.ndarray  # int64 (k,), increasing

    def residual(self, w2d: np.ndarray) -> np.ndarray:
        """float32 (rows, cols): what the codes must represent (W - offset, float columns zeroed)."""
        r = np.asarray(w2d, dtype=np.float32) - self.offset[None, :]
        r[:, self.columns] = 0.0
        return r

    def outliers(self, w2d: np.ndarray) -> np.ndarray:
        """float16 (rows, k): the stored values of the float columns of W."""
        return np.asarray(w2d, dtype=np.float32)[:, self.columns].astype(np.float16)

    def attach(self, qt: QuantizedTensor, outliers: np.ndarray) -> QuantizedTensor:
        """The quantized residual `qt` as a decomposed tensor (what the .wq stores)."""
        return dataclasses.replace(
            qt,
            offset=self.offset,
            outlier_columns=self.columns,
            outliers=np.ascontiguousarray(outliers, dtype=np.float16),
        )


def decompose(w2d: np.ndarray, n_columns: int, hessian_diag: np.ndarray | None = None) -> Decomposition:
    """Offset (mean row) and the `n_columns` columns whose quantization error would cost most.

    hessian_diag: mean x_j^2 of the inputs of the output projection (calibration), or None (weight error only).
    """
    w2d = np.asarray(w2d, dtype=np.float32)
    rows, cols = w2d.shape
    offset = w2d.mean(axis=0, dtype=np.float64).astype(np.float32)
    k = max(0, min(int(n_columns), cols))
    if k == 0:
        return Decomposition(offset, np.zeros(0, dtype=np.int64))
    spread = (w2d - offset[None, :]).var(axis=0, dtype=np.float64)  # (cols,) error scale of each column
    if hessian_diag is not None:
        d = np.asarray(hessian_diag, dtype=np.float64)
        mean = d.mean()
        spread = spread * (1.0 + (d / mean if mean > 0 else 0.0))
    order = np.lexsort((np.arange(cols), -spread))  # largest first; ties by column index: deterministic
    return Decomposition(offset, np.sort(order[:k]).astype(np.int64))
