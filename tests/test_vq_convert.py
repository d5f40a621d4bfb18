"""The converter's vector (codebook) quantization: vq.py against round-to-nearest and GPTQ at the same bits per
weight, its CodebookTensor fields, the recipe's and CLI's vq options, and the pipeline on a tiny random Whisper."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from quant_helpers import correlated_inputs, output_error  # noqa: E402
from test_quant_whisper import _calibration, _quantized_logits_error, tiny  # noqa: E402, F401 (a fixture)

from wavq.converter.cli import main  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.gptq import gptq, inverse_hessian_factor  # noqa: E402
from wavq.converter.quant.mixed import bits_per_weight  # noqa: E402
from wavq.converter.quant.recipe import Recipe, parse_method  # noqa: E402
from wavq.converter.quant.rtn import QuantSpec, rtn  # noqa: E402
from wavq.converter.quant.stats import FullStats  # noqa: E402
from wavq.converter.quant.vq import (  # noqa: E402
    VQSpec,
    _assign,
    _expand,
    _refit_codebook,
    _rms_scales,
    codebook_bits,
    vq_quantize,
)
from wavq.converter.quant.weight import quantize_weight  # noqa: E402
from wavq.formats import QuantizedTensor, dequantize  # noqa: E402
from wavq.formats.codecs import CodebookTensor, dequantize_codebook  # noqa: E402

ROWS, COLS = 128, 256


def _weight(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)  # heavy-tailed rows of different sizes, like trained weights
    return (rng.standard_t(5, (ROWS, COLS)) * rng.uniform(0.5, 2.0, (ROWS, 1))).astype(np.float32)


def _hessian(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float64).T @ x / len(x))


def _bpw(t) -> float:
    return bits_per_weight([t])


def _plain_assignment(w, s_cols, book, hinv, dim):
    """The assignment written out plainly: one vector column at a time, one row at a time, in float64, every
    vector's error spread over all later columns at once (no lazy batches)."""
    rows, cols = w.shape
    w = w.astype(np.float64)
    idx = np.empty((rows, cols // dim), dtype=np.int64)
    for j in range(0, cols, dim):
        m = np.linalg.inv(hinv[j : j + dim, j : j + dim].astype(np.float64))
        s = s_cols[:, j]
        for r in range(rows):
            idx[r, j // dim] = ((((w[r, j : j + dim] / s[r]) - book) @ m) ** 2).sum(1).argmin()
        e = (w[:, j : j + dim] - book[idx[:, j // dim]] * s[:, None]) @ m
        w[:, j + dim :] -= e @ hinv[j : j + dim, j + dim :]
    return idx


@pytest.mark.parametrize("dim,index_bits,seed", [(2, 5, 0), (4, 8, 1)])
def test_assignment_equals_the_plain_loop(dim, index_bits, seed):
    rows, cols = 48, 256
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(5, (rows, cols)) * rng.uniform(0.5, 2, (rows, 1))).astype(np.float32)
    hinv = inverse_hessian_factor(_hessian(correlated_inputs(1024, cols, seed=seed)), 0.01).numpy()
    s_cols = _expand(_rms_scales(w, 64).astype(np.float32), 64, cols)
    book = rng.standard_normal((1 << index_bits, dim)).astype(np.float32)
    got = _assign(w, s_cols, book, hinv, dim)
    assert got.dtype == np.uint16 and got.shape == (rows, cols // dim)
    assert np.array_equal(got, _plain_assignment(w, s_cols, book, hinv, dim))


def test_codebook_refit_is_the_least_squares_codebook():
    rows, cols, dim, k = 40, 64, 2, 16
    rng = np.random.default_rng(4)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((500, cols)) @ rng.standard_normal((cols, cols)) / 8
    h = (x.T @ x / len(x)).astype(np.float32)
    idx = rng.integers(0, k - 1, (rows, cols // dim)).astype(np.uint16)  # codeword k - 1 unused
    s_cols = rng.uniform(0.5, 2, (rows, cols)).astype(np.float32)
    book = rng.standard_normal((k, dim)).astype(np.float32)
    got = _refit_codebook(w, idx, book, s_cols, h)
    # dense normal equations: Q = M c with M[(r, j), (idx[r, j // dim], j % dim)] = s[r, j]
    m = np.zeros((rows, cols, k * dim))
    slot = idx.astype(np.int64)[:, :, None] * dim + np.arange(dim)
    m[np.arange(rows)[:, None], np.arange(cols)[None, :], slot.reshape(rows, cols)] = s_cols
    a = np.einsum("rip,ij,rjq->pq", m, h, m)[: (k - 1) * dim, : (k - 1) * dim]
    b = np.einsum("rip,ij,rj->p", m, h, w)[: (k - 1) * dim]
    expected = np.linalg.solve(a, b).reshape(k - 1, dim)
    assert got.dtype == np.float32 and np.array_equal(got, got.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got[:-1], expected, rtol=2e-3, atol=2e-3)  # float16 values
    assert np.array_equal(got[-1], book[-1].astype(np.float16).astype(np.float32))


def test_codebook_rounds_never_raise_the_output_error():
    w = _weight(5)
    x = correlated_inputs(2048, COLS, seed=5)
    h = _hessian(x)
    errors = [
        output_error(w, dequantize_codebook(vq_quantize(w, VQSpec(2, 4, 64, codebook_rounds=n), h)), x)
        for n in (0, 1, 3)
    ]
    assert errors[2] <= errors[1] <= errors[0] and errors[2] < 0.99 * errors[0]


@pytest.mark.parametrize("bits,dim", [(2, 2), (3, 2)])
def test_vq_weight_error_beats_rtn_at_no_more_bits(bits, dim):
    w = _weight()
    ct = vq_quantize(w, VQSpec(dim, bits * dim))
    qt = rtn(w, QuantSpec(bits, 128, symmetric=False))
    assert _bpw(ct) <= _bpw(qt)
    assert np.square(w - dequantize_codebook(ct)).sum() < 0.8 * np.square(w - dequantize(qt)).sum()


def test_hessian_compensation_beats_nearest_assignment_and_gptq():
    w = _weight(1)
    x = correlated_inputs(2048, COLS, seed=1)
    h = _hessian(x)
    spec = VQSpec(2, 4)
    compensated = vq_quantize(w, spec, h)
    nearest = vq_quantize(w, spec, None)
    err = output_error(w, dequantize_codebook(compensated), x)
    assert err < 0.8 * output_error(w, dequantize_codebook(nearest), x)
    scalar = gptq(w, h, QuantSpec(2, 128, symmetric=False), damp=0.01)
    assert _bpw(compensated) <= _bpw(scalar) and err < output_error(w, dequantize(scalar), x)


def test_codebook_fields_are_valid_and_deterministic():
    w = _weight(2)
    h = _hessian(correlated_inputs(1024, COLS, seed=2))
    ct = vq_quantize(w, VQSpec(4, 8, group_size=64), h, seed=3)
    assert isinstance(ct, CodebookTensor)
    assert (ct.dim, ct.index_bits, ct.group_size, ct.rows_per_book, ct.rotation) == (4, 8, 64, ROWS, 0)
    assert ct.indices.dtype == np.uint16 and ct.indices.shape == (ROWS, COLS // 4) and ct.indices.max() < 1 << 8
    assert ct.codebooks.shape == (1, 1 << 8, 4) and np.isfinite(ct.codebooks).all()
    assert ct.scales.shape == (ROWS, COLS // 64) and (ct.scales > 0).all() and np.isfinite(ct.scales).all()
    assert codebook_bits(ct) == ROWS * COLS // 4 * 8 + 16 * (ct.scales.size + ct.codebooks.size)
    again = vq_quantize(w, VQSpec(4, 8, group_size=64), h, seed=3)
    for field in ("indices", "codebooks", "scales"):
        assert np.array_equal(getattr(ct, field), getattr(again, field))


def test_rotated_vq_is_stored_rotated_and_kept_only_when_it_errs_less():
    w = _weight(3)
    w[:, 7] *= 30  # one outlier column: what a rotation spreads out
    x = correlated_inputs(1024, COLS, seed=3)
    st = FullStats(COLS)
    st.add_batch(torch.from_numpy(x))
    plan = parse_method("vq")
    spec = QuantSpec(4, 0, vq_dim=2)
    r = quantize_weight(w, spec, st, plan, damp=0.01, act_order=False, rotate=True)
    plain, rotated = r.rotation_errors
    assert isinstance(r.qt, CodebookTensor) and r.qt.rotation == (128 if rotated < plain else 0)
    assert r.error == pytest.approx(min(plain, rotated), rel=1e-4)
    assert output_error(w, dequantize_codebook(r.qt), x) / output_error(w, np.zeros_like(w), x) == pytest.approx(
        r.error, rel=1e-3
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"method": "vq+tune"}, "vq combines with no other stage"),
        ({"method": "awq+vq"}, "vq combines with no other stage"),
        ({"method": "gptq", "bits": 2.5}, "fractional bits"),
        ({"method": "vq", "bits": 2.3}, "whole number"),
        ({"method": "vq", "bits": 2.5, "vq_dim": 3}, "vector dimension must be one of"),
        ({"method": "gptq", "vq_dim": 4}, "setting of the vq method"),
        ({"method": "vq", "bits": None, "target_bpw": 2.5}, "mixed precision"),
        ({"method": "vq", "bits": 2, "vq_dim": 4, "group_size": 2}, "whole vectors"),
        ({"method": "vq", "bits": 3, "act_bits": 8}, "not with vq"),
    ],
)
def test_recipe_rejects_bad_vq_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


def test_recipe_vq_index_bits_and_meta():
    r = Recipe(method="vq", bits=2.5, vq_dim=4)
    assert r.vq_index_bits == 10 and r.bits == 2.5 and r.needs_calibration
    assert r.to_meta()["vq_dim"] == 4 and "vq_dim" not in Recipe(method="gptq", bits=3).to_meta()
    assert Recipe(method="gptq", bits=3.0).bits == 3 and isinstance(Recipe(method="gptq", bits=3.0).bits, int)


def test_cli_fractional_bits_need_vq(tmp_path):
    out = CliRunner().invoke(main, ["x", "-o", str(tmp_path / "m.wq"), "--bits", "2.5", "--method", "gptq"])
    assert out.exit_code != 0 and "fractional bits" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(main, ["x", "-o", str(tmp_path / "m.wq"), "--bits", "3", "--vq-dim", "5"])
    assert out.exit_code == 2 and "--vq-dim" in out.output


@pytest.mark.slow
def test_pipeline_stores_codebook_tensors_and_beats_rtn(tiny):  # noqa: F811
    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items)
    recipe = Recipe(method="vq", bits=3, vq_dim=2, group_size=32, keep=(("*embed_tokens*", 8),))
    out, info = pipeline.quantize_tensors(exporter, tensors, recipe, items)
    for t in tensors:
        if t.name == "model.decoder.embed_tokens.weight":
            assert isinstance(out[t.name], QuantizedTensor) and out[t.name].bits == 8  # pinned: scalar codes
        elif t.quantizable:
            assert isinstance(out[t.name], CodebookTensor), t.name
            assert out[t.name].shape == t.array.shape and out[t.name].index_bits == 6
        else:
            assert isinstance(out[t.name], np.ndarray)
    assert info["method"] == "vq" and info["tensor_bits"]["model.encoder.layers.0.fc1.weight"] == 3.0
    assert set(info["relative_output_error"]) >= {t.name for t in tensors if isinstance(out[t.name], CodebookTensor)}
    rtn_out, _ = pipeline.quantize_tensors(
        exporter, tensors, dataclasses.replace(recipe, method="rtn", bits=3, vq_dim=2), items
    )
    assert _quantized_logits_error(model, cal, out) < _quantized_logits_error(model, cal, rtn_out)
