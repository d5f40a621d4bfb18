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
     output error tr((W - S C) H (W - S C)^T) on the original weight (small normal equations per row);
  5. codebook rounds (GPTVQ's codebook update, solved exactly): the codebook is refitted to the least-squares
     solution of the same output error given the indices and scales, then the scales again; every round after
     the first starts with a new assignment (step 3) under the refitted codebook and scales. A round is kept
     only if it lowers the output error, so the result never errs more than steps 1-4 alone.

Why this design (and not a lattice or additive codebooks): it reuses the GPTQ machinery already here and needs no
training loop. Measured on a random 256x256 weight with correlated inputs (relative output error): GPTQ 3 bits
0.028, 2 bits 0.18; steps 1-4 at dim 2 with 6-bit indices (3.09 bits/weight with scales and codebook) 0.017,
4-bit (2.07) 0.068; dim 4 with 8-bit indices (2.31) 0.058. Hessian compensation halves plain nearest-codeword
assignment's error at every setting. Bits per weight (`codebook_bits`) count the codebook.

Chosen on held-out audio (tiny.en, 40 train-clean-100 utterances of a speaker the calibration never sees; f32
3.36 % WER; benchmarks/results/vq_validation.md, benchmarks/bench_vq.py), all at about 3.1 bits per weight:
  - CODEBOOK_ROUNDS = 3: without step 5, 8.52 %; one refit without a new assignment 9.70 % (its output error
    fell by 2 %, within the noise of 40 utterances); three rounds 5.86 % (mean relative output error 0.0080 ->
    0.0068). The new assignments do most of the work: the first one was made under the RMS scales and k-means
    codebook, which steps 4-5 then move. Rounds cost one assignment and a few dozen (rows, cols) x (cols, cols)
    products each.
  - rotation (--rotate, each weight kept rotated where that errs less) with three rounds: 4.61 %, the best at
    dimension 2. Scalar codes at the same size: GPTQ 3 bits (3.24 bits/weight) 19.39 %, mixed-precision GPTQ
    at 3.13 bits/weight rotated 63.10 % (neither tuned).
  - lower: rotated, three rounds, 5-bit indices (2.63 bits/weight) 19.86 %, 4-bit (2.13) 115.40 % (decoding
    loops): below 3 bits a per-tensor codebook of dimension 2 does not hold tiny.en.
whisper-base with the tiny.en choice (dimension 2, 3.13 bits/weight, rotated): 7.58 % against f32 2.97 % on the
same 40 utterances; converted in 603 s at 2.9 GB peak (a fresh process, one thread).
  - dimension 4 with 11-bit indices (3.11 bits/weight, its larger codebooks counted) unrotated: 4.61 %, against
    5.86 % for dimension 2 unrotated, at twice the conversion time. Dimension 2 stays the default (recipe.py):
    rotated it reaches the same WER at half the cost, and a per-tensor codebook of dimension 4 costs
    whisper-tiny's 384x384 tensors 0.89 bits per weight at 11-bit indices (dimension 2, 6 bits: 0.01).

Cost: the assignment is sequential over vector columns (each row's choice depends on the errors before it) but
vectorised over rows, with everything else computed per lazy batch; k-means and the refits are dense products.
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
FLOAT16_MAX = 65504.0
CODEBOOK_ROUNDS = 3  # codebook refits (each after a re-assignment but the first), kept while the error falls
CG_ITERATIONS = 50  # conjugate-gradient steps of one codebook refit (K * dim unknowns)
CG_TOLERANCE = 1e-5  # ... or until the residual is this fraction of the right-hand side


@dataclasses.dataclass(frozen=True)
class VQSpec:
    """How one tensor is vector-quantized."""

    dim: int  # weights per vector (VQ_DIMS)
    index_bits: int  # bits per index; bits per weight of the indices = index_bits / dim
    group_size: int = 0  # columns per scale (0 = one scale per row); a multiple of dim
    codebook_rounds: int = CODEBOOK_ROUNDS  # codebook refits after the assignment (module docstring, step 5)

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
    book = book.astype(np.float16).astype(np.float32)  # what the file stores
    h = None if hessian is None else hessian.to(torch.float32).numpy()
    indices = _assign(w, s_cols, book, hinv, spec.dim)
    scales = _refit_scales(w, indices, book, scales, gs, h)
    best = (_output_error(w, indices, book, scales, gs, h), indices, book, scales)
    for r in range(spec.codebook_rounds):
        if r:  # re-assign with the refitted codebook and scales
            indices = _assign(w, _expand(scales.astype(np.float32), gs, cols), book, hinv, spec.dim)
        book = _refit_codebook(w, indices, book, _expand(scales.astype(np.float32), gs, cols), h)
        scales = _refit_scales(w, indices, book, scales, gs, h)
        err = _output_error(w, indices, book, scales, gs, h)
        if not err < best[0]:
            break
        best = (err, indices, book, scales)
    _, indices, book, scales = best
    return CodebookTensor(
        (rows, cols),
        spec.dim,
        spec.index_bits,
        gs,
        max(rows, 1),
        indices,
        book.astype(np.float16)[None],
        scales,
        rotation=0,
    )


def _dequantized(indices: np.ndarray, book: np.ndarray, scales: np.ndarray, gs: int, cols: int) -> np.ndarray:
    rows = len(indices)
    return book[indices.astype(np.int64)].reshape(rows, cols) * _expand(scales.astype(np.float32), gs, cols)


def _output_error(
    w: np.ndarray, indices: np.ndarray, book: np.ndarray, scales: np.ndarray, gs: int, h: np.ndarray | None
) -> float:
    """tr((W - Q) H (W - Q)^T) (H = I without statistics): the objective every step decreases."""
    d = w - _dequantized(indices, book, scales, gs, w.shape[1])
    return float(((d if h is None else d @ h) * d).sum(dtype=np.float64))


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
    x, wt = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(wt, dtype=np.float32)
    start = rng.choice(len(x), k, replace=len(x) < k)
    centres = x[start].copy()
    if len(x) < k:  # fewer vectors than codewords: spread the duplicates so they do not coincide
        centres += rng.standard_normal(centres.shape).astype(np.float32) * np.float32(1e-3)
    wx = wt * x
    # sum_j wt_j (x_j - c_j)^2 = const + [wx, wt] . [-2 c, c^2]: one product per distance matrix
    lhs = np.concatenate([wx, wt], axis=1)
    for _ in range(KMEANS_ITERATIONS):
        label = _argmin_rows(lhs, np.concatenate([-2 * centres, centres * centres], axis=1))
        num = np.zeros_like(centres)
        den = np.zeros_like(centres)
        np.add.at(num, label, wx)
        np.add.at(den, label, wt)
        centres = np.where(den > 0, num / np.maximum(den, np.float32(1e-30)), centres)
    return centres


def _argmin_rows(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """argmin_k lhs_i . rhs_k for each row i of lhs, in chunks of rows (bounded memory)."""
    step = max(1, ASSIGN_CHUNK // len(rhs))
    return np.concatenate([(lhs[a : a + step] @ rhs.T).argmin(1) for a in range(0, len(lhs), step)])


def _assign(w: np.ndarray, s_cols: np.ndarray, book: np.ndarray, hinv: np.ndarray, dim: int) -> np.ndarray:
    """uint16 (rows, cols // dim): GPTQ over vectors (module docstring, step 3).

    Vectors are visited in order, each row's choice depending on the errors of the vectors before it, so the
    search runs one vector column at a time over all rows; everything that does not depend on those errors (the
    diagonal blocks' inverses, the codebook in each block's metric, its norms) is computed for a whole lazy
    batch of columns up front, and the batch's errors reach the later columns in one product, as in gptq.py."""
    rows, cols = w.shape
    block = max(dim, VQ_BLOCK - VQ_BLOCK % dim)
    wt = np.ascontiguousarray(w.T)  # (cols, rows): rows of wt are columns of w
    st = np.ascontiguousarray(s_cols[:, ::dim].T)  # (cols // dim, rows): one scale per vector
    indices = np.empty((cols // dim, rows), dtype=np.uint16)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        n = (i2 - i1) // dim
        w1 = wt[i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = hinv[i1:i2, i1:i2]
        steps = np.arange(n)
        uvv_inv = np.linalg.inv(u1.reshape(n, dim, n, dim)[steps, :, steps, :])  # (n, dim, dim) upper triangular
        metric = book[None] @ uvv_inv  # (n, K, dim): the codebook in each vector's error metric
        norms = (metric * metric).sum(-1)  # (n, K)
        for v in range(n):
            i = v * dim
            s = st[i1 // dim + v]  # (rows,)
            wv = w1[i : i + dim]  # (dim, rows)
            x = (wv / s).T @ uvv_inv[v]  # (rows, dim) scaled vectors in the metric
            idx = (norms[v] - 2 * (x @ metric[v].T)).argmin(1)
            e = (wv.T - book[idx] * s[:, None]) @ uvv_inv[v]  # (rows, dim): GPTQ's e_k = (w_k - q_k) / U_kk
            w1[i + dim :] -= u1[i : i + dim, i + dim :].T @ e.T
            err1[i : i + dim] = e.T
            indices[i1 // dim + v] = idx
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    return np.ascontiguousarray(indices.T)


def _refit_scales(
    w: np.ndarray, indices: np.ndarray, book: np.ndarray, scales: np.ndarray, gs: int, h: np.ndarray | None
) -> np.ndarray:
    """float16 (rows, ng): per row, the scales minimising (w - sum_g s_g q_g) H (...)^T for the chosen vectors
    q (module docstring, step 4); a row whose normal equations are singular keeps its scales."""
    rows, cols = w.shape
    ng = scales.shape[1]
    q = torch.from_numpy(book[indices.astype(np.int64)].reshape(rows, cols))
    wt = torch.from_numpy(w)
    ht = torch.eye(cols) if h is None else torch.from_numpy(h)
    group = torch.arange(cols) // gs
    onehot = torch.nn.functional.one_hot(group, ng).to(torch.float32)  # (cols, ng)
    # A[r, g, k] = sum_{i in g, j in k} q_ri H_ij q_rj;  b[r, g] = sum_{i in g} q_ri (H w_r)_i
    a = torch.empty((rows, ng, ng))
    for k in range(ng):
        cut = slice(k * gs, min((k + 1) * gs, cols))
        a[:, :, k] = ((q[:, cut] @ ht[cut]) * q) @ onehot
    b = ((wt @ ht) * q) @ onehot
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    a64 += 1e-9 * torch.diagonal(a64, dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None, None] * torch.eye(ng)
    sol, info = torch.linalg.solve_ex(a64, b64)
    solved = sol.to(torch.float32).numpy()
    ok = (info.numpy() == 0) & np.isfinite(solved).all(1) & (solved > 0).all(1)
    out = scales.copy()
    out[ok] = np.clip(solved[ok], 6.1e-5, 65504).astype(np.float16)
    return out


def _refit_codebook(
    w: np.ndarray, indices: np.ndarray, book: np.ndarray, s_cols: np.ndarray, h: np.ndarray | None
) -> np.ndarray:
    """(K, dim) float16 values: the codebook minimising tr((W - Q) H (W - Q)^T) with the indices and scales fixed,
    Q[r, j] = s[r, j] C[index[r, j // dim], j % dim] (GPTVQ's codebook update, solved exactly rather than by
    gradient steps). Q is linear in C, so this is a least-squares problem in K * dim unknowns; its normal
    equations are solved by Jacobi-preconditioned conjugate gradients, matrix-free: each product with the normal
    matrix is one (rows, cols) x (cols, cols) product, gathered from and scattered back to the codebook entries.
    Codewords no weight uses keep their values."""
    rows, cols = w.shape
    k, dim = book.shape
    slot = (indices.astype(np.int64)[:, :, None] * dim + np.arange(dim)).reshape(-1)  # each weight's entry
    s = s_cols.reshape(-1)

    def times_h(x: np.ndarray) -> np.ndarray:
        return x if h is None else x @ h

    def normal(c: np.ndarray) -> np.ndarray:  # (M^T H M) c, M: the entries -> weights map (scaled)
        q = (c.astype(np.float32)[slot] * s).reshape(rows, cols)
        return np.bincount(slot, weights=times_h(q).reshape(-1) * s, minlength=k * dim)

    b = np.bincount(slot, weights=times_h(w).reshape(-1) * s, minlength=k * dim)
    hdiag = np.ones(cols, dtype=np.float32) if h is None else np.diagonal(h)
    diag = np.bincount(slot, weights=(s_cols**2 * hdiag).reshape(-1), minlength=k * dim)
    precond = np.where(diag > 0, 1 / np.maximum(diag, 1e-30), 0.0)  # 0: unused entries stay as they are
    x = book.reshape(-1).astype(np.float64)
    r = precond.astype(bool) * (b - normal(x))
    z = precond * r
    p, rz = z.copy(), float(r @ z)
    target = CG_TOLERANCE * float(np.sqrt(b @ b))
    for _ in range(CG_ITERATIONS):
        if float(np.sqrt(r @ r)) <= target:
            break
        ap = normal(p)
        pap = float(p @ ap)
        if not pap > 0:
            break
        alpha = rz / pap
        x += alpha * p
        r -= alpha * ap
        z = precond * r
        rz, rz_old = float(r @ z), rz
        p = z + (rz / rz_old) * p
    out = np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).reshape(k, dim)
    return np.where(np.isfinite(out), out, book).astype(np.float16).astype(np.float32)
