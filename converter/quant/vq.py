"""Vector (codebook) quantization of a plain (rows, cols) matrix: GPTVQ-style (van Baalen et al., 2024).

Each row is cut into vectors of `dim` consecutive columns; each vector is stored as an index into one codebook
per tensor (2**index_bits float16 vectors), times a float16 scale per `group_size` columns of its row
(formats.codecs.CodebookTensor). Steps:
  1. scales: the RMS of each row's group, so the codebook sees vectors of one size across rows;
  2. codebook: k-means on the scaled vectors, each coordinate weighted by the Hessian diagonal (the output error
     a unit change of that input column causes) times the squared scale (a seeded sample of vectors, seeded
     initial centres: deterministic given the seed);
  3. assignment: GPTQ over column blocks of `dim` (gptq.py's inverse Hessian factor U): a vector's index
     minimises |(w - q) U_vv^-1|^2, the error the remaining columns cannot compensate, and that error is spread
     over the columns not yet assigned exactly as GPTQ spreads a column's; without a Hessian (IdentityStats) this
     is plain nearest-codeword assignment;
  4. scale refit: with the indices and codebook fixed, each row's scales are the least-squares solution of the
     output error tr((W - S C) H (W - S C)^T) on the original weight (small normal equations per row).

Why this design (and not a lattice or additive codebooks): it reuses the GPTQ machinery already here and needs no
training loop. Measured on a random 256x256 weight with correlated inputs (relative output error): GPTQ 3 bits
0.028, 2 bits 0.18; this method at dim 2 with 6-bit indices (3.09 bits/weight with scales and codebook) 0.017,
4-bit (2.07) 0.068; dim 4 with 8-bit indices (2.31) 0.058. Hessian compensation halves plain nearest-codeword
assignment's error at every setting. Dimension 2 is the default because the codebook is stored per tensor:
dimension 4 needs 4 * bpw index bits, so at 3 bits per weight a 4096-entry codebook costs whisper-tiny's 384x384
tensors 1.8 bits per weight, at 2.5 bits 0.44; dimension 2 costs at most 0.01. Bits per weight (`codebook_bits`)
count the codebook. Validation WER against scalar codes: benchmarks/results/vq_validation.md
(benchmarks/bench_vq.py).

Cost: the assignment walks the columns `dim` at a time in Python, and the codebook fit and the scale refit are
dense; a 2048x512 tensor takes ~20 CPU seconds against GPTQ's 0.3.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...formats.codecs import CodebookTensor
from ...formats.constants import VQ_DIMS, VQ_MAX_INDEX_BITS, VQ_MIN_INDEX_BITS
from .gptq import inverse_hessian_factor

VQ_BLOCK = 128  # columns per lazy batch update (as GPTQ_BLOCK); rounded down to a multiple of dim
KMEANS_ITERATIONS = 25
KMEANS_SAMPLES = 1 << 15  # vectors the codebook is fitted on (a seeded sample of larger tensors)
ASSIGN_CHUNK = 1 << 22  # rows * codewords per distance matrix: bounds the assignment's memory (16 MB float32)
FLOAT16_BITS = 16


@dataclasses.dataclass(frozen=True)
class VQSpec:
    """How one tensor is vector-quantized."""

    dim: int  # weights per vector (VQ_DIMS)
    index_bits: int  # bits per index; bits per weight of the indices = index_bits / dim
    group_size: int = 0  # columns per scale (0 = one scale per row); a multiple of dim

    def __post_init__(self) -> None:
        if self.dim not in VQ_DIMS:
            raise ValueError(f"vector dimension must be one of {VQ_DIMS}, got {self.dim}")
        if not VQ_MIN_INDEX_BITS <= self.index_bits <= VQ_MAX_INDEX_BITS:
            raise ValueError(f"index bits must be {VQ_MIN_INDEX_BITS}..{VQ_MAX_INDEX_BITS}, got {self.index_bits}")
        if self.group_size < 0 or self.group_size % self.dim:
            raise ValueError(f"scale group size {self.group_size} must be 0 or a multiple of the dimension {self.dim}")

    def resolve(self, cols: int) -> int:
        """Columns per scale group for a matrix of `cols` columns."""
        return cols if self.group_size == 0 or self.group_size >= cols else self.group_size


def codebook_bits(ct: CodebookTensor) -> int:
    """Storage bits of a codebook tensor: indices, scales and codebooks (the file's padding aside)."""
    return int(ct.indices.size * ct.index_bits + (ct.scales.size + ct.codebooks.size) * FLOAT16_BITS)


def vq_quantize(
    w2d: np.ndarray, spec: VQSpec, hessian: torch.Tensor | None = None, damp: float = 0.01, seed: int = 0
) -> CodebookTensor | None:
    """CodebookTensor of the (rows, cols) w2d minimising the output error on inputs with second moment `hessian`
    (None: the weight error). Returns None when the dampened Hessian cannot be factored (the caller falls back)."""
    w = np.ascontiguousarray(w2d, dtype=np.float32)
    rows, cols = w.shape
    if cols % spec.dim:
        raise ValueError(f"vector dimension {spec.dim} does not divide the {cols} columns")
    gs = spec.resolve(cols)
    if hessian is None:
        hinv = np.eye(cols, dtype=np.float32)
        hdiag = np.ones(cols, dtype=np.float32)
    else:
        factor = inverse_hessian_factor(hessian, damp)
        if factor is None:
            return None
        hinv = factor.numpy()
        hdiag = torch.diagonal(hessian).to(torch.float32).numpy().copy()
        hdiag[hdiag <= 0] = float(hdiag[hdiag > 0].min()) if (hdiag > 0).any() else 1.0
    scales = _rms_scales(w, gs)  # float16 (rows, ng)
    s_cols = _expand(scales.astype(np.float32), gs, cols)  # (rows, cols)
    u = w / s_cols
    weight = hdiag[None, :] * s_cols**2
    book = _kmeans(u.reshape(-1, spec.dim), weight.reshape(-1, spec.dim), 1 << spec.index_bits, seed)
    book16 = book.astype(np.float16)
    indices = _assign(w, s_cols, book16.astype(np.float32), hinv, spec.dim)
    scales = _refit_scales(w, indices, book16.astype(np.float32), scales, gs, hessian)
    return CodebookTensor(
        (rows, cols), spec.dim, spec.index_bits, gs, max(rows, 1), indices, book16[None], scales, rotation=0
    )


def _expand(per_group: np.ndarray, gs: int, cols: int) -> np.ndarray:
    return np.repeat(per_group, gs, axis=1)[:, :cols]


def _rms_scales(w: np.ndarray, gs: int) -> np.ndarray:
    rows, cols = w.shape
    pad = -cols % gs
    g = np.pad(w, ((0, 0), (0, pad))).reshape(rows, -1, gs)
    counts = np.minimum(gs, cols - np.arange(g.shape[1]) * gs).astype(np.float32)
    rms = np.sqrt((g**2).sum(-1) / counts)
    rms[rms == 0] = 1.0
    return rms.astype(np.float16).clip(np.float16(6.1e-5))  # no zero or subnormal scale


def _kmeans(x: np.ndarray, wt: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, dim) centres minimising sum wt * (x - c)^2 over the rows of x (coordinate-weighted k-means)."""
    rng = np.random.default_rng(seed)
    if len(x) > KMEANS_SAMPLES:
        pick = np.sort(rng.choice(len(x), KMEANS_SAMPLES, replace=False))
        x, wt = x[pick], wt[pick]
    xt, wtt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(wt))
    start = rng.choice(len(x), k, replace=len(x) < k)
    centres = xt[torch.from_numpy(start)].clone()
    if len(x) < k:  # fewer vectors than codewords: spread the duplicates so they do not coincide
        centres += torch.from_numpy(rng.standard_normal(centres.shape).astype(np.float32)) * 1e-3
    wx, wxx = wtt * xt, (wtt * xt * xt).sum(1, keepdim=True)
    for _ in range(KMEANS_ITERATIONS):
        label = _nearest_weighted(wx, wxx, wtt, centres)
        num = torch.zeros_like(centres).index_add_(0, label, wx)
        den = torch.zeros_like(centres).index_add_(0, label, wtt)
        filled = den > 0
        centres = torch.where(filled, num / den.clamp_min(1e-30), centres)
    return centres.numpy()


def _nearest_weighted(wx: torch.Tensor, wxx: torch.Tensor, wt: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """argmin_k sum_j wt_j (x_j - c_kj)^2, in chunks of rows."""
    step = max(1, ASSIGN_CHUNK // len(c))
    out = []
    for a in range(0, len(wx), step):
        d = wxx[a : a + step] - 2 * wx[a : a + step] @ c.T + wt[a : a + step] @ (c * c).T
        out.append(d.argmin(1))
    return torch.cat(out)


def _assign(w: np.ndarray, s_cols: np.ndarray, book: np.ndarray, hinv: np.ndarray, dim: int) -> np.ndarray:
    """uint16 (rows, cols // dim): GPTQ over vectors (module docstring, step 3)."""
    rows, cols = w.shape
    block = max(dim, VQ_BLOCK - VQ_BLOCK % dim)
    wt = torch.from_numpy(np.ascontiguousarray(w.T))  # (cols, rows): rows of wt are columns of w
    st = torch.from_numpy(np.ascontiguousarray(s_cols.T))
    u_all = torch.from_numpy(hinv)
    c = torch.from_numpy(book)
    indices = torch.empty((cols // dim, rows), dtype=torch.int64)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u_all[i1:i2, i1:i2]
        for i in range(0, i2 - i1, dim):
            uvv_inv = torch.linalg.inv(u1[i : i + dim, i : i + dim])  # upper triangular (dim, dim)
            s = st[i1 + i]  # (rows,): one scale per vector (group_size is a multiple of dim)
            x = (w1[i : i + dim] / s).T  # (rows, dim) scaled vectors
            idx = _nearest_metric(x @ uvv_inv, c @ uvv_inv)
            q = c[idx] * s[:, None]
            e = (w1[i : i + dim].T - q) @ uvv_inv  # (rows, dim): GPTQ's e_k = (w_k - q_k) / U_kk, jointly
            w1[i + dim :] -= u1[i : i + dim, i + dim :].T @ e.T
            err1[i : i + dim] = e.T
            indices[(i1 + i) // dim] = idx
        wt[i2:] -= u_all[i1:i2, i2:].T @ err1
    return indices.T.contiguous().numpy().astype(np.uint16)


def _nearest_metric(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """argmin_k |x - c_k|^2 for each row of x, in chunks of rows."""
    cc = (c * c).sum(1)
    step = max(1, ASSIGN_CHUNK // len(c))
    return torch.cat([(cc - 2 * x[a : a + step] @ c.T).argmin(1) for a in range(0, len(x), step)])


def _refit_scales(
    w: np.ndarray, indices: np.ndarray, book: np.ndarray, scales: np.ndarray, gs: int, hessian: torch.Tensor | None
) -> np.ndarray:
    """float16 (rows, ng): per row, the scales minimising (w - sum_g s_g q_g) H (...)^T for the chosen vectors
    q (module docstring, step 4); a row whose normal equations are singular keeps its scales."""
    rows, cols = w.shape
    ng = scales.shape[1]
    q = torch.from_numpy(book[indices.astype(np.int64)].reshape(rows, cols))
    wt = torch.from_numpy(w)
    h = torch.eye(cols) if hessian is None else hessian.to(torch.float32)
    group = torch.arange(cols) // gs
    onehot = torch.nn.functional.one_hot(group, ng).to(torch.float32)  # (cols, ng)
    # A[r, g, k] = sum_{i in g, j in k} q_ri H_ij q_rj;  b[r, g] = sum_{i in g} q_ri (H w_r)_i
    a = torch.empty((rows, ng, ng))
    for k in range(ng):
        cut = slice(k * gs, min((k + 1) * gs, cols))
        a[:, :, k] = ((q[:, cut] @ h[cut]) * q) @ onehot
    b = ((wt @ h) * q) @ onehot
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    a64 += 1e-9 * torch.diagonal(a64, dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None, None] * torch.eye(ng)
    sol, info = torch.linalg.solve_ex(a64, b64)
    sol = sol.to(torch.float32).numpy()
    ok = (info.numpy() == 0) & np.isfinite(sol).all(1) & (sol > 0).all(1)
    out = scales.copy()
    out[ok] = np.clip(sol[ok], 6.1e-5, 65504).astype(np.float16)
    return out
