"""Decomposed embedding tables (converter/quant/decompose.py): offset row + float16 outlier columns + codes of the
residual, through round-to-nearest, GPTQ, the pipeline and a written .wq file read back by the runtime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quant_helpers import correlated_inputs, output_error  # noqa: E402

from wavq.converter.quant.decompose import decompose  # noqa: E402
from wavq.converter.quant.gptq import gptq  # noqa: E402
from wavq.converter.quant.recipe import Plan  # noqa: E402
from wavq.converter.quant.rtn import QuantSpec, rtn  # noqa: E402
from wavq.converter.quant.stats import IdentityStats  # noqa: E402
from wavq.converter.quant.weight import round_stored  # noqa: E402
from wavq.formats import dequantize  # noqa: E402

ROWS, COLS = 300, 96
OUTLIER = 37
RTN = Plan(awq=False, clip=False, rounder="rtn")


def rtn_decomposed(w: np.ndarray, spec: QuantSpec, dec=None):
    """Round-to-nearest codes of a decomposed spec, as the converter stores them (by default with the
    decomposition chosen from the weight alone)."""
    dec = dec if dec is not None else decompose(w, spec.outliers)
    return round_stored(w, spec, IdentityStats(w.shape[1]), RTN, damp=0.01, act_order=False, decomposition=dec)[0]


def embedding_like(seed: int = 0) -> np.ndarray:
    """A table shaped like Whisper's token embedding: a large shared mean row and one outlier column."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(COLS) * 0.05
    w = mean + rng.standard_normal((ROWS, COLS)) * 0.01
    w[:, OUTLIER] = 0.3 + rng.standard_normal(ROWS) * 0.09
    return w.astype(np.float32)


def test_decompose_finds_the_mean_and_the_outlier_column():
    w = embedding_like()
    dec = decompose(w, 3)
    np.testing.assert_allclose(dec.offset, w.mean(0), atol=1e-6)
    assert OUTLIER in dec.columns and list(dec.columns) == sorted(dec.columns) and len(dec.columns) == 3
    r = dec.residual(w)
    assert np.all(r[:, dec.columns] == 0) and abs(float(r.mean())) < 1e-3
    # the input statistics steer the choice among ordinary columns: the one the inputs drive hardest comes next
    hdiag = np.ones(COLS)
    hdiag[5] = 50.0
    assert list(decompose(w, 2, hdiag).columns) == [5, OUTLIER]
    assert 5 not in decompose(w, 2).columns
    assert len(decompose(w, 0).columns) == 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_decomposed_stores_float_columns_and_cuts_the_error(symmetric):
    w = embedding_like()
    plain = dequantize(rtn(w, QuantSpec(4, 32, symmetric)))
    qt = rtn_decomposed(w, QuantSpec(4, 32, symmetric, outliers=2))
    assert qt.decomposed and len(qt.outlier_columns) == 2 and OUTLIER in qt.outlier_columns
    deq = dequantize(qt)
    cols = qt.outlier_columns
    np.testing.assert_array_equal(deq[:, cols], w[:, cols].astype(np.float16).astype(np.float32))
    err_plain = float(((plain - w) ** 2).sum())
    err_dec = float(((deq - w) ** 2).sum())
    assert err_dec < 0.25 * err_plain, (err_dec, err_plain)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_decomposed_with_identity_hessian_is_rtn(act_order):
    """With H = I nothing is compensated, so GPTQ must give round-to-nearest's codes, scales and float columns."""
    w = embedding_like(1)
    spec = QuantSpec(3, 32, False, outliers=2)
    dec = decompose(w, 2)
    got = gptq(w, torch.eye(COLS, dtype=torch.float64), spec.plain, 0.01, act_order, None, dec)
    ref = rtn_decomposed(w, spec, dec)
    for part in ("codes", "scales", "zeros", "offset", "outlier_columns", "outliers"):
        assert np.array_equal(getattr(got, part), getattr(ref, part)), part


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_decomposed_beats_rtn_on_output_error(act_order):
    w = embedding_like(2)
    x = correlated_inputs(2000, COLS, seed=3)
    h = torch.from_numpy(x.astype(np.float64).T @ x.astype(np.float64) / len(x))
    dec = decompose(w, 2, np.diag(h.numpy()))
    spec = QuantSpec(3, 32, False, outliers=2)
    q_gptq = gptq(w, h, spec.plain, 0.01, act_order, None, dec)
    q_rtn = rtn_decomposed(w, spec, dec)
    deq = dequantize(q_gptq)
    # the float columns hold their GPTQ-updated values, exactly as stored
    np.testing.assert_array_equal(deq[:, q_gptq.outlier_columns], q_gptq.outliers.astype(np.float32))
    assert output_error(w, deq, x) < 0.8 * output_error(w, dequantize(q_rtn), x)
