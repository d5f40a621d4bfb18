"""GPTQ: quantize a weight column by column, compensating each column's rounding error in the columns not yet
quantized, with the inverse Hessian of the layer's output error (Frantar et al., 2022; after IST-DASLab's
reference `gptq.py`: dampening, lazy batch updates in blocks of GPTQ_BLOCK columns, optional act-order).

File conventions are kept exactly: codes are stored in the natural column order, scales are the float16 values
from formats.codecs.rtn_scales, and every code is round(w / scale) + zero clipped to the code range, computed
in float32 like formats.codecs.quantize_with_scales, so dequantizing the file gives exactly the weights GPTQ's
error compensation assumed.

Group parameters: without act-order each group's scale is computed when the algorithm reaches the group's first
column, from the already-updated weights (as the reference does). With act-order the columns are visited in
order of decreasing Hessian diagonal, so groups of the natural order would be reached piecemeal; their scales
are then computed up front from the weights as given ("static groups"), and each permuted column uses the scale
of its natural group. Per-channel scales (group_size 0) are always computed up front.

Decomposed tensors (decompose.py): GPTQ runs on W - offset. The float columns take part like any other column,
but their "quantizer" is float16 rounding of the full value (their codes stay at the zero code), so the error
compensation flows into them and they store their updated values; they are left out of every group's range.
"""

from __future__ import annotations

import numpy as np
import torch

from ...formats import QuantizedTensor, rtn_scales
from ...formats.codecs import n_groups
from .decompose import Decomposition
from .rtn import QuantSpec

GPTQ_BLOCK = 128  # columns per lazy batch update
DAMP_RETRIES = 4  # each retry multiplies the dampening by DAMP_GROWTH when H + damp*I is not positive definite
DAMP_GROWTH = 10.0


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 as float32, or None if it cannot be factored.

    Columns that never saw a nonzero input have H[i, i] = 0; they get 1 on the diagonal so H stays invertible
    (their rows and columns of H are zero, so no error is propagated through them).
    """
    h = hessian.to(torch.float64).clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    mean = float(diag.mean())
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    for attempt in range(DAMP_RETRIES):
        factor, info = torch.linalg.cholesky_ex(h + (damp * DAMP_GROWTH**attempt * mean) * eye)
        if int(info) == 0:
            # cholesky_solve against I: torch's cholesky_inverse is an order of magnitude slower on CPU
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_solve(eye, factor), upper=True)
            if int(info) == 0:
                return upper.to(torch.float32)
    return None


def gptq(
    w2d: np.ndarray,
    hessian: torch.Tensor,
    spec: QuantSpec,
    damp: float,
    act_order: bool = False,
    clip: np.ndarray | None = None,
    decomposition: Decomposition | None = None,
) -> QuantizedTensor | None:
    """GPTQ codes for the (rows, cols) w2d given H = mean x x^T of its inputs.

    `clip` (rows, n_groups) shrinks each group's range like round-to-nearest's clip. With a `decomposition` the
    codes are of its residual and its float columns take part in the compensation (module docstring). Returns
    None when the dampened Hessian cannot be factored even after DAMP_RETRIES increases (the caller falls back
    to RTN).
    """
    spec.check_plain()
    w2d = np.ascontiguousarray(w2d, dtype=np.float32)
    shape = tuple(int(d) for d in w2d.shape)
    rows, cols = shape
    dec = decomposition
    if dec is not None:
        w2d = w2d - dec.offset[None, :]
    floating = np.zeros(cols, dtype=bool)  # float16 columns of a decomposed tensor
    if dec is not None:
        floating[dec.columns] = True
    outlier_t = np.empty((len(dec.columns) if dec is not None else 0, rows), dtype=np.float16)
    slot = {int(c): j for j, c in enumerate(dec.columns)} if dec is not None else {}
    bits, sym = spec.bits, spec.symmetric
    gs = spec.resolve(cols)
    ng = n_groups(cols, gs)
    maxq = (1 << bits) - 1
    clip_all = np.ones((rows, ng), dtype=np.float32) if clip is None else np.asarray(clip, dtype=np.float32)

    hessian = hessian.to(torch.float64)
    static = act_order or gs == cols
    scales = np.empty((rows, ng), dtype=np.float16)
    zeros = None if sym else np.empty((rows, ng), dtype=np.uint8)
    scale_t = np.empty((ng, rows), dtype=np.float32)  # float32 scales / zero points the loop uses, transposed
    zero_t = np.full((ng, rows), 1 << (bits - 1), dtype=np.float32)
    if static:
        scales[:], z = rtn_scales(np.where(floating[None, :], np.float32(0), w2d), bits, gs, sym, clip_all)
        scale_t[:] = scales.T
        if not sym:
            zeros[:] = z
            zero_t[:] = z.T

    if act_order:
        perm = torch.argsort(torch.diagonal(hessian), descending=True, stable=True)
        hessian = hessian[perm][:, perm]
        perm = perm.numpy()
    else:
        perm = np.arange(cols)
    group_of = (perm // gs).tolist()  # natural group of each column in visiting order

    hinv = inverse_hessian_factor(hessian, damp)
    if hinv is None:
        return None
    hinv = hinv.numpy()

    # Transposed layout (cols, rows): each column is a contiguous vector and the rank-1 updates touch
    # contiguous memory. The per-column work is small vector arithmetic, where numpy's overhead is lowest.
    wt = np.ascontiguousarray(w2d[:, perm].T)  # (cols, rows) in visiting order
    codes_t = np.empty((cols, rows), dtype=np.uint8)
    # Lazy (non-static) groups must lie inside one block so their first column sees fully updated weights.
    block = GPTQ_BLOCK if static else gs * max(1, GPTQ_BLOCK // gs)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = wt[i1:i2].copy()  # (count, rows)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not static and col % gs == 0:
                width = min(gs, cols - col)
                ranged = np.where(floating[col : col + width, None], np.float32(0), w1[i : i + width])
                s16, z8 = rtn_scales(ranged.T, bits, width, sym, clip_all[:, g : g + 1])
                scales[:, g] = s16[:, 0]
                scale_t[g] = s16[:, 0].astype(np.float32)
                if not sym:
                    zeros[:, g] = z8[:, 0]
                    zero_t[g] = z8[:, 0].astype(np.float32)
            s, z = scale_t[g], zero_t[g]
            w = w1[i]
            natural = int(perm[col])
            if floating[natural]:  # stored as float16 of the full value; its code decodes to 0
                off = dec.offset[natural]
                v = (w + off).astype(np.float16)
                outlier_t[slot[natural]] = v
                codes_t[col] = z
                e = (w - (v.astype(np.float32) - off)) / hinv1[i, i]
            else:
                # exactly formats.codecs.quantize_with_scales, one column at a time
                q = np.clip(np.rint(w / np.where(s == 0, np.float32(1), s)) + z, 0, maxq)
                codes_t[col] = q
                e = (w - (q - z) * s) / hinv1[i, i]
            w1[i + 1 :] -= np.outer(hinv1[i, i + 1 :], e)
            err1[i] = e
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1

    codes = np.empty((rows, cols), dtype=np.uint8)
    codes[:, perm] = codes_t.T  # back to the natural column order
    qt = QuantizedTensor(shape, bits, gs, codes, scales, zeros)
    return qt if dec is None else dec.attach(qt, outlier_t.T)
