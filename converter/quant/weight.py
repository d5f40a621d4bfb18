"""One weight's codes as the file stores them.

The storage layout is applied here, once: the weight's 2-D view, the decomposition of embedding tables
(decompose.py: the codes are of the residual) or the rotation (rotate.py: the codes are of W R, on the statistics
R^T H R of the rotated inputs). The searches and rounders (clip.py, rtn.py, gptq.py, vq.py) only ever see the
plain matrix this module hands them. A spec with a vector dimension is stored as a CodebookTensor (vq.py),
every other one as a QuantizedTensor: `StoredTensor` is either, and `stored_values` dequantizes both.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...formats import QuantizedTensor, dequantize
from ...formats.codecs import CodebookTensor, dequantize_codebook, rotate_columns, unrotate_columns
from .clip import search_clip
from .decompose import Decomposition, decompose
from .gptq import gptq
from .recipe import Plan
from .rotate import block_size, rotate_hessian, rotate_stats
from .rtn import QuantSpec, as_2d, fake_quant, rtn
from .stats import DiagStats, FullStats, Stats
from .vq import VQSpec, vq_quantize

StoredTensor = QuantizedTensor | CodebookTensor


def stored_values(t: StoredTensor) -> np.ndarray:
    """float32 array of the original shape: what a reader will dequantize from the stored tensor."""
    return dequantize_codebook(t) if isinstance(t, CodebookTensor) else dequantize(t)


@dataclasses.dataclass
class Rounded:
    qt: StoredTensor
    error: float  # relative output error on the statistics the weight was quantized with
    rotation_errors: tuple[float, float] | None  # (plain, rotated) relative errors when both were tried
    gptq_failed: bool  # GPTQ (or vq) could not factor the Hessian: rounded to nearest instead


def quantize_weight(
    w: np.ndarray,
    spec: QuantSpec,
    st: Stats,
    plan: Plan,
    *,
    damp: float,
    act_order: bool,
    rotate: bool = False,
    seed: int = 0,
) -> Rounded:
    """One weight's codes on the statistics of its inputs (IdentityStats: no calibration, weight error): the
    decomposition's columns, clip search, GPTQ (with FullStats) or round-to-nearest. With `rotate`, the weight is
    also quantized under a block Hadamard rotation, and the version with the smaller error is kept."""
    w2d = as_2d(w)
    dec = None
    if spec.outliers:  # decomposed: columns chosen by the error they would cause on these inputs
        hdiag = torch.diagonal(st.hessian).numpy() if isinstance(st, FullStats) else None
        dec = decompose(w2d, spec.outliers, hdiag)
    ref = float(st.row_error(torch.from_numpy(w2d)).sum())

    def error(qt: StoredTensor) -> float:
        return float(st.row_error(torch.from_numpy(w2d - stored_values(qt).reshape(w2d.shape))).sum())

    qt, failed = round_stored(w2d, spec, st, plan, damp=damp, act_order=act_order, decomposition=dec, seed=seed)
    err = error(qt)
    pair = None
    block = block_size(w2d.shape[1]) if rotate and not spec.outliers and not isinstance(st, DiagStats) else 0
    if block:  # quantize W R too; keep whichever has the smaller error on these inputs
        rotated = dataclasses.replace(spec, rotation=block)
        qt_r, failed_r = round_stored(w2d, rotated, st, plan, damp=damp, act_order=act_order, seed=seed)
        err_r = error(qt_r)
        failed |= failed_r
        pair = (_relative(err, ref), _relative(err_r, ref))
        if err_r < err:
            qt, err = qt_r, err_r
    return Rounded(dataclasses.replace(qt, shape=tuple(int(d) for d in w.shape)), _relative(err, ref), pair, failed)


def round_stored(
    w2d: np.ndarray,
    spec: QuantSpec,
    st: Stats,
    plan: Plan,
    *,
    damp: float,
    act_order: bool,
    decomposition: Decomposition | None = None,
    seed: int = 0,
) -> tuple[StoredTensor, bool]:
    """(codes of the (rows, cols) w2d in spec's layout, whether GPTQ failed and round-to-nearest stood in).

    Clip-searched when the plan clips; GPTQ with full statistics, else round-to-nearest; a vector spec is
    vector-quantized (vq.py, compensated with full statistics). A decomposed spec needs its `decomposition`; a
    rotated one quantizes W R on the statistics of the rotated inputs."""
    if spec.outliers and decomposition is None:
        raise ValueError("a decomposed spec needs the decomposition of the weight")
    codes = spec.plain
    w = rotate_columns(w2d, spec.rotation) if spec.rotation else w2d
    if spec.vq_dim:
        return _vq(w, spec, st, damp, seed)
    target = w if decomposition is None else decomposition.residual(w)
    clip = None
    if plan.clip:
        clip = search_clip(target, codes, rotate_stats(st, spec.rotation) if spec.rotation else st)[0]
    qt = None
    if plan.rounder == "gptq" and isinstance(st, FullStats):
        hessian = rotate_hessian(st.hessian, spec.rotation) if spec.rotation else st.hessian
        qt = gptq(w, hessian, codes, damp, act_order, clip, decomposition)
    failed = qt is None and plan.rounder == "gptq" and isinstance(st, FullStats)
    if qt is None:
        qt = _rtn(w, codes, clip, decomposition)
    return (dataclasses.replace(qt, rotation=spec.rotation) if spec.rotation else qt), failed


def _vq(w: np.ndarray, spec: QuantSpec, st: Stats, damp: float, seed: int) -> tuple[CodebookTensor, bool]:
    """Codebook codes of the (rotated, if spec says so) w; without full statistics, on the weight error."""
    hessian = None
    if isinstance(st, FullStats):
        hessian = rotate_hessian(st.hessian, spec.rotation) if spec.rotation else st.hessian
    vq = VQSpec(spec.vq_dim, spec.bits, spec.group_size)
    ct = vq_quantize(w, vq, hessian, damp, seed)
    failed = ct is None
    if ct is None:
        ct = vq_quantize(w, vq, None, damp, seed)
    assert ct is not None  # the identity always factors
    return dataclasses.replace(ct, rotation=spec.rotation), failed


def _rtn(w2d: np.ndarray, codes: QuantSpec, clip: np.ndarray | None, dec: Decomposition | None) -> QuantizedTensor:
    if dec is None:
        return rtn(w2d, codes, clip)
    return dec.attach(rtn(dec.residual(w2d), codes, clip), dec.outliers(w2d))


def rounded_fake(w2d: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """float32 (rows, cols): what round-to-nearest would store for w2d in spec's layout, dequantized, with the
    decomposition chosen from the weight alone (the weight-error and Fisher allocations' view)."""
    if spec.rotation:
        return unrotate_columns(fake_quant(rotate_columns(w2d, spec.rotation), spec.plain), spec.rotation)
    if spec.outliers:
        return dequantize(_rtn(w2d, spec.plain, None, decompose(w2d, spec.outliers)))
    return fake_quant(w2d, spec)


def _relative(err: float, ref: float) -> float:
    return err / ref if ref > 0 else 0.0
