"""Statistics of one weight's input, accumulated with add_batch calls and then used by every algorithm.

For a weight W (rows, cols) applied as y = W x, the output error of a perturbation dW over the calibration
rows is sum_t |dW x_t|^2 = tr(dW H dW^T) with H = sum_t x_t x_t^T. Everything here is normalised per row
(per token), so errors are "mean squared output error per token, summed over output channels".

- FullStats keeps H (cols x cols) and mean |x| per column: GPTQ, AWQ, clip search, sensitivities.
- DiagStats keeps only diag(H), per group of output rows (grouped convolutions, where each block of output
  rows sees different inputs); GPTQ degenerates to round-to-nearest there.
- IdentityStats stands for "no calibration": H = I, i.e. plain weight squared error per row.
"""

from __future__ import annotations

import torch

# x^T x of up to this many rows is summed in float32 before being added to the float64 accumulator: float32
# keeps the matmul fast, float64 keeps the total exact enough over hundreds of thousands of rows.
ROWS_PER_CHUNK = 8192


class FullStats:
    kind = "full"

    def __init__(self, cols: int):
        self.cols = cols
        self._h = torch.zeros(cols, cols, dtype=torch.float64)
        self._abs = torch.zeros(cols, dtype=torch.float64)
        self.n = 0
        self._h32: torch.Tensor | None = None  # float32 copy of the mean Hessian for the error evaluations

    def add_batch(self, x: torch.Tensor) -> None:
        """x: (n, cols) rows of inputs as the weight sees them."""
        x = x.detach().to(torch.float32)
        for i in range(0, x.shape[0], ROWS_PER_CHUNK):
            xc = x[i : i + ROWS_PER_CHUNK]
            self._h += (xc.T @ xc).to(torch.float64)
            self._abs += xc.abs().sum(0, dtype=torch.float64)
        self.n += x.shape[0]
        self._h32 = None

    def _require(self) -> None:
        if self.n == 0:
            raise ValueError("no calibration rows were collected for this weight")

    @property
    def hessian(self) -> torch.Tensor:
        """float64 (cols, cols): mean x x^T over the calibration rows."""
        self._require()
        return self._h / self.n

    @property
    def mean_abs(self) -> torch.Tensor:
        """float64 (cols,): mean |x| per input column (AWQ's activation salience)."""
        self._require()
        return self._abs / self.n

    def scale_inputs(self, s: torch.Tensor) -> None:
        """The statistics of x / s (per column), exactly, without re-collecting."""
        inv = 1.0 / s.to(torch.float64)
        self._h *= inv[:, None] * inv[None, :]
        self._abs *= inv
        self._h32 = None

    def with_identity(self, weight: float) -> FullStats:
        """Statistics whose H is H + weight * mean(diag H) * I: adds a plain weight-error term to the objective,
        for a matrix that is also read row by row (a tied embedding table) where weight error itself matters."""
        out = FullStats(self.cols)
        h = self.hessian
        out._h = h + weight * float(torch.diagonal(h).mean()) * torch.eye(self.cols, dtype=torch.float64)
        out._abs = self.mean_abs.clone()
        out.n = 1
        return out

    def _hessian32(self) -> torch.Tensor:
        if self._h32 is None:
            self._h32 = self.hessian.to(torch.float32)
        return self._h32

    def row_error(self, dw: torch.Tensor) -> torch.Tensor:
        """(rows,) mean squared output error per row of a weight perturbation dw (rows, cols)."""
        dw = dw.to(torch.float32)
        return ((dw @ self._hessian32()) * dw).sum(1)

    def group_error(self, dwg: torch.Tensor) -> torch.Tensor:
        """(rows, n_groups) output error of each group's perturbation alone (block-diagonal part of H).

        dwg: (rows, n_groups, group) zero-padded groups of columns; cross-group terms are left out, which is
        what makes a per-group choice (clip ratio) separable.
        """
        rows, ng, gs = dwg.shape
        h = self._hessian32()
        pad = ng * gs - self.cols
        if pad:
            h = torch.nn.functional.pad(h, (0, pad, 0, pad))
        idx = torch.arange(ng)
        blocks = h.reshape(ng, gs, ng, gs)[idx, :, idx, :]  # (ng, gs, gs) diagonal blocks
        dwt = dwg.to(torch.float32).transpose(0, 1)  # (ng, rows, gs)
        return (torch.bmm(dwt, blocks) * dwt).sum(-1).T


class DiagStats:
    """Per-column mean x^2 for each block of output rows (row_groups blocks of rows // row_groups rows)."""

    kind = "diag"

    def __init__(self, cols: int, row_groups: int = 1):
        self.cols = cols
        self.row_groups = row_groups
        self._sq = torch.zeros(row_groups, cols, dtype=torch.float64)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """x: (row_groups, n, cols) inputs seen by each block of output rows."""
        x = x.detach().to(torch.float32)
        self._sq += (x * x).sum(1, dtype=torch.float64)
        self.n += x.shape[1]

    def _per_row(self, rows: int) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no calibration rows were collected for this weight")
        d = (self._sq / self.n).to(torch.float32)
        return d.repeat_interleave(rows // self.row_groups, dim=0)  # (rows, cols)

    def row_error(self, dw: torch.Tensor) -> torch.Tensor:
        return (dw.to(torch.float32) ** 2 * self._per_row(dw.shape[0])).sum(1)

    def group_error(self, dwg: torch.Tensor) -> torch.Tensor:
        rows, ng, gs = dwg.shape
        d = torch.nn.functional.pad(self._per_row(rows), (0, ng * gs - self.cols)).reshape(rows, ng, gs)
        return (dwg.to(torch.float32) ** 2 * d).sum(-1)


class IdentityStats:
    """H = I: weight squared error, for weights without calibration activations."""

    kind = "identity"

    def __init__(self, cols: int):
        self.cols = cols

    def row_error(self, dw: torch.Tensor) -> torch.Tensor:
        return (dw.to(torch.float32) ** 2).sum(1)

    def group_error(self, dwg: torch.Tensor) -> torch.Tensor:
        return (dwg.to(torch.float32) ** 2).sum(-1)


Stats = FullStats | DiagStats | IdentityStats
