"""RTN, GPTQ, clip search and AWQ scale search on synthetic weights and activations (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quant_helpers import correlated_inputs, output_error  # noqa: E402

from wavq.converter.quant.awq import candidate_scales, search_scales  # noqa: E402
from wavq.converter.quant.clip import clip_ratios, group_errors, search_clip  # noqa: E402
from wavq.converter.quant.gptq import gptq, inverse_hessian_factor  # noqa: E402
from wavq.converter.quant.recipe import Plan  # noqa: E402
from wavq.converter.quant.rtn import QuantSpec, fake_quant, rtn  # noqa: E402
from wavq.converter.quant.stats import DiagStats, FullStats, IdentityStats  # noqa: E402
from wavq.converter.quant.weight import quantize_weight, round_stored, rounded_fake  # noqa: E402
from wavq.formats import dequantize, quantize, quantize_with_scales, rtn_scales  # noqa: E402

ROWS, COLS, N = 48, 96, 2000
RTN = Plan(awq=False, clip=False, rounder="rtn")
GPTQ = Plan(awq=False, clip=False, rounder="gptq")


def _stored(w: np.ndarray, spec: QuantSpec, st, plan: Plan):
    """The codes of w in spec's layout (rotated specs: of W R), as the converter stores them."""
    return round_stored(w, spec, st, plan, damp=0.01, act_order=False)[0]


def _stats(x: np.ndarray) -> FullStats:
    st = FullStats(x.shape[1])
    st.add_batch(torch.from_numpy(x[: len(x) // 2]))
    st.add_batch(torch.from_numpy(x[len(x) // 2 :]))
    return st


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
    w[:, 3] *= 6  # a heavy column, as real layers have
    x = correlated_inputs(N, COLS, seed=2)
    return w, x, _stats(x)


def test_stats_accumulate_and_rescale_exactly(layer):
    _, x, st = layer
    np.testing.assert_allclose(st.hessian.numpy(), x.astype(np.float64).T @ x / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.mean_abs.numpy(), np.abs(x).mean(0), rtol=1e-5)
    s = torch.from_numpy(np.linspace(0.5, 2.0, COLS).astype(np.float32))
    scaled = _stats(x / s.numpy())
    copy = _stats(x)
    copy.scale_inputs(s)
    np.testing.assert_allclose(copy.hessian.numpy(), scaled.hessian.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("group_size", [0, 32, 40])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_is_the_formats_codec(layer, group_size, symmetric):
    w = layer[0]
    spec = QuantSpec(3, group_size, symmetric)
    ref, _ = quantize(w, 3, group_size, symmetric)
    got = rtn(w, spec)
    assert got.codes.tobytes() == ref.codes.tobytes() and got.scales.tobytes() == ref.scales.tobytes()
    np.testing.assert_array_equal(fake_quant(w, spec), dequantize(ref))
    ones = rtn(w, spec, np.ones((ROWS, ref.scales.shape[1]), np.float32))
    assert ones.codes.tobytes() == ref.codes.tobytes()


@pytest.mark.parametrize("group_size", [0, 32, 40])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_identity_hessian_is_rtn(layer, group_size, symmetric, act_order):
    """With H = I no error is propagated, so GPTQ's codes and scales are round-to-nearest's, bit for bit."""
    w = layer[0]
    got = gptq(w, torch.eye(COLS, dtype=torch.float64), QuantSpec(3, group_size, symmetric), 0.01, act_order)
    ref, _ = quantize(w, 3, group_size, symmetric)
    assert got.codes.tobytes() == ref.codes.tobytes()
    assert got.scales.tobytes() == ref.scales.tobytes()
    assert (got.zeros is None) == symmetric and (symmetric or got.zeros.tobytes() == ref.zeros.tobytes())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [0, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn(layer, bits, group_size, act_order):
    w, x, st = layer
    spec = QuantSpec(bits, group_size, True)
    g = gptq(w, st.hessian, spec, 0.01, act_order)
    r = rtn(w, spec)
    assert output_error(w, dequantize(g), x) < 0.9 * output_error(w, dequantize(r), x)


def test_gptq_act_order_keeps_natural_groups(layer):
    """act-order visits columns by decreasing H diagonal, but scales belong to the natural column groups and are
    exactly round-to-nearest's scales of the given weights (static groups); codes are stored in natural order."""
    w, x, st = layer
    spec = QuantSpec(4, 32, False)
    g = gptq(w, st.hessian, spec, 0.01, act_order=True)
    scales, zeros = rtn_scales(w, 4, 32, False)
    assert g.scales.tobytes() == scales.tobytes() and g.zeros.tobytes() == zeros.tobytes()
    # codes are the natural-order columns: re-deriving any column's group from its natural index reproduces them
    deq = dequantize(g)
    assert np.all(np.abs(deq - w) <= np.abs(scales.astype(np.float32)).repeat(32, axis=1) * 4)
    assert output_error(w, deq, x) < output_error(w, dequantize(rtn(w, spec)), x)


def test_gptq_codes_agree_with_the_codec(layer):
    """Every stored code is the codec's rounding of some weight under the stored scale: re-quantizing the
    dequantized weights with the stored scales gives the same codes (so the file holds what GPTQ assumed)."""
    w, _, st = layer
    g = gptq(w, st.hessian, QuantSpec(3, 32, True), 0.01)
    again = quantize_with_scales(dequantize(g), g.scales, g.zeros, 3, 32)
    np.testing.assert_array_equal(again, g.codes)


def test_gptq_conv_weight_and_determinism(layer):
    _, x, st = layer
    rng = np.random.default_rng(5)
    w3 = (rng.standard_normal((ROWS, COLS // 3, 3)) * 0.1).astype(np.float32)  # (out, in, kernel) conv weight
    a = quantize_weight(w3, QuantSpec(3, 32, True), st, GPTQ, damp=0.01, act_order=True).qt
    b = quantize_weight(w3, QuantSpec(3, 32, True), st, GPTQ, damp=0.01, act_order=True).qt
    assert a.shape == w3.shape and a.codes.shape == (ROWS, COLS)
    assert a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()


def test_singular_hessian_is_dampened(layer):
    w = layer[0]
    h = torch.zeros(COLS, COLS, dtype=torch.float64)
    h[:10, :10] = 1.0  # rank one, and most columns never saw an input
    assert inverse_hessian_factor(h, 0.01) is not None
    assert gptq(w, h, QuantSpec(4, 32, True), 0.01).codes.shape == w.shape


@pytest.mark.parametrize("stats_kind", ["full", "identity", "diag"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_worse_than_no_clip(layer, stats_kind, symmetric):
    w, x, full = layer
    st = {"full": full, "identity": IdentityStats(COLS), "diag": DiagStats(COLS, 2)}[stats_kind]
    if stats_kind == "diag":
        st.add_batch(torch.from_numpy(np.stack([x, 2 * x])))
    spec = QuantSpec(3, 32, symmetric)
    ratios, base, best = search_clip(w, spec, st)
    assert best <= base
    assert set(np.unique(ratios)) <= set(clip_ratios().tolist())
    clipped = dequantize(rtn(w, spec, ratios))
    per_group = group_errors(w, clipped, st, 32)
    unclipped = group_errors(w, fake_quant(w, spec), st, 32)
    assert bool((per_group <= unclipped * (1 + 1e-6) + 1e-12).all())  # per group, not just in total
    assert abs(float(per_group.sum()) - best) <= 1e-4 * max(best, 1e-12)


def test_clip_search_helps_weights_with_outliers():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((32, 64)) * 0.02).astype(np.float32)
    w[np.arange(32), rng.integers(0, 64, 32)] = 0.5  # one outlier per row stretches every range
    x = correlated_inputs(500, 64, seed=4, outliers=0)
    st = _stats(x)
    _, base, best = search_clip(w, QuantSpec(3, 0, True), st)
    assert best < base


def test_awq_search_never_worse_and_finds_salient_channels(layer):
    w, x, st = layer
    specs = [QuantSpec(3, 32, True)] * 2
    w2 = np.roll(w, 1, axis=0)
    s, rep = search_scales([w, w2], specs, st)
    assert rep["error_after"] <= rep["error_before"]
    assert rep["alpha"] > 0 and rep["error_after"] < rep["error_before"]  # the outlier channels make it pay
    assert s.dtype == torch.float32 and np.array_equal(s.numpy(), s.numpy().astype(np.float16).astype(np.float32))
    # s follows mean |x|: the heavy channels get the largest scales
    heavy = np.argsort(np.abs(x).mean(0))[-4:]
    assert set(heavy) <= set(np.argsort(s.numpy())[-8:])
    # with alpha = 0 the scale is 1 (plain round-to-nearest)
    assert torch.equal(candidate_scales(st.mean_abs, 0.0), torch.ones(COLS))


# ---- rotation (converter/quant/rotate.py) ---------------------------------------------------------------------
def test_rotation_block_sizes():
    from wavq.converter.quant.rotate import block_size

    assert [block_size(c) for c in (512, 384, 2048, 240, 1536, 96, 10, 8)] == [128, 128, 128, 16, 128, 32, 0, 0]


def test_rotated_hessian_is_the_statistics_of_rotated_inputs(layer):
    """R^T H R equals the second moment of x R (the inputs W R sees), and the rotation matrix is the one the
    format's rotate_columns applies."""
    from wavq.converter.quant.rotate import rotate_stats, rotation_matrix
    from wavq.formats.codecs import rotate_columns

    w, x, st = layer
    r = rotation_matrix(COLS, 32).numpy()
    np.testing.assert_allclose(r @ r.T, np.eye(COLS), atol=1e-12)
    np.testing.assert_allclose(rotate_columns(w, 32), w.astype(np.float64) @ r, atol=1e-5)
    rotated = _stats((x.astype(np.float64) @ r).astype(np.float32))
    np.testing.assert_allclose(rotate_stats(st, 32).hessian.numpy(), rotated.hessian.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_rotated_rtn_and_gptq_store_codes_of_w_r(layer, symmetric):
    """A rotated spec stores the codes RTN / GPTQ give W R (with the Hessian of the rotated inputs), and the
    tensor dequantizes back to the original weight's coordinates."""
    from wavq.converter.quant.rotate import rotate_hessian
    from wavq.formats.codecs import rotate_columns

    w, _, st = layer
    spec = QuantSpec(3, 32, symmetric)
    rotated_spec = QuantSpec(3, 32, symmetric, rotation=32)
    wr = rotate_columns(w, 32)
    for got, ref in (
        (_stored(w, rotated_spec, st, RTN), rtn(wr, spec)),
        (_stored(w, rotated_spec, st, GPTQ), gptq(wr, rotate_hessian(st.hessian, 32), spec, 0.01)),
    ):
        assert got.rotation == 32 and ref.rotation == 0
        assert got.codes.tobytes() == ref.codes.tobytes() and got.scales.tobytes() == ref.scales.tobytes()
        np.testing.assert_allclose(
            dequantize(got),
            dequantize(ref)
            @ np.linalg.inv(np.asarray(rotate_columns(np.eye(COLS, dtype=np.float32), 32), dtype=np.float64)),
            atol=1e-5,
        )
    np.testing.assert_allclose(rounded_fake(w, rotated_spec), dequantize(_stored(w, rotated_spec, st, RTN)), atol=1e-6)


def test_rotation_lowers_the_error_of_a_weight_with_outlier_columns():
    """The case rotation is for: a few input columns an order of magnitude larger than the rest set the range of
    every group they fall in; spread over the block they no longer do. On plain Gaussian weights it gains
    nothing, which is why the pipeline keeps the rotated version only where it errs less."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 128)) * 0.02).astype(np.float32)
    w[:, [5, 70]] *= 12
    x = correlated_inputs(1500, 128, seed=4, outliers=0)
    st = _stats(x)
    for bits in (3, 4):
        plain = QuantSpec(bits, 64, False)
        rot = QuantSpec(bits, 64, False, rotation=64)
        for make in (lambda s: _stored(w, s, st, RTN), lambda s: _stored(w, s, st, GPTQ)):
            assert output_error(w, dequantize(make(rot)), x) < 0.6 * output_error(w, dequantize(make(plain)), x)


def test_rotation_and_decomposition_exclude_each_other():
    with pytest.raises(ValueError, match="decomposed or rotated"):
        QuantSpec(3, 32, False, outliers=2, rotation=32)
