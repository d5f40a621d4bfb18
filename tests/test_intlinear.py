"""runtime/intlinear.py: the integer path equals the float simulation of the same quantization bit for bit, the
int32 reference accumulation equals the blocked float32 one, and both equal the real product of the dequantized
operands up to float rounding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wavq.formats.activation import ActivationSpec
from wavq.formats.codecs import QuantizedTensor, dequantize, quantize, rotate_columns
from wavq.runtime.intlinear import (
    _product_float32,
    block_length,
    fake_linear,
    int_linear,
    quantize_activations,
)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


def random_qt(rng, rows: int, cols: int, bits: int, group: int, symmetric: bool, variant: str) -> QuantizedTensor:
    """Arbitrary codes and float16 scales (negative and zero ones included), optionally decomposed or rotated."""
    ng = -(-cols // group)
    scales = (rng.standard_normal((rows, ng)) * 0.05).astype(np.float16)
    scales[rng.random((rows, ng)) < 0.1] = 0
    zeros = None if symmetric else rng.integers(0, 1 << bits, (rows, ng)).astype(np.uint8)
    codes = rng.integers(0, 1 << bits, (rows, cols)).astype(np.uint8)
    qt = QuantizedTensor((rows, cols), bits, group, codes, scales, zeros)
    if variant == "decomposed":
        k = int(rng.integers(0, min(cols, 3) + 1))
        columns = np.sort(rng.choice(cols, size=k, replace=False)).astype(np.int64)
        qt = dataclasses.replace(
            qt,
            offset=(rng.standard_normal(cols) * 0.1).astype(np.float32),
            outlier_columns=columns,
            outliers=(rng.standard_normal((rows, k)) * 3).astype(np.float16),
        )
    elif variant == "rotated":
        qt = dataclasses.replace(qt, rotation=max(b for b in (2, 4, 8) if cols % b == 0))
    return qt


@st.composite
def cases(draw):
    variant = draw(st.sampled_from(["plain", "decomposed", "rotated"]))
    cols = draw(st.integers(1, 70))
    if variant == "rotated":
        cols = 2 * draw(st.integers(1, 40))
    rows = draw(st.integers(1, 9))
    m = draw(st.integers(1, 7))
    wbits = draw(st.integers(2, 8))
    abits = draw(st.sampled_from([4, 6, 8]))
    group = draw(st.integers(1, cols))
    symmetric = draw(st.booleans())
    static = draw(st.booleans())
    block = draw(st.sampled_from([0, 1, 2, 3, 5]))  # 0: the exact bound; small: many blocks per group
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    qt = random_qt(rng, rows, cols, wbits, group, symmetric, variant)
    x = (rng.standard_normal((m, cols)) * rng.choice([0.01, 1.0, 30.0])).astype(np.float32)
    if draw(st.booleans()):
        x[0] = 0  # a zero row: dynamic scale 0
    scale = float(np.abs(x).max()) / ((1 << (abits - 1)) - 1) * 0.7  # static: some values clip
    spec = (
        ActivationSpec.static_from_range(abits, scale * ((1 << (abits - 1)) - 1)) if static else ActivationSpec(abits)
    )
    return x, qt, spec, block


@settings(max_examples=300, deadline=None)
@given(cases())
def test_integer_path_equals_float_simulation_bit_for_bit(case):
    x, qt, spec, block = case
    y = int_linear(x, qt, spec, block=block)
    assert _bits_equal(y, fake_linear(x, qt, spec))
    assert _bits_equal(y, int_linear(x, qt, spec, accumulate="int32"))


@settings(max_examples=150, deadline=None)
@given(cases())
def test_integer_path_is_the_product_of_the_dequantized_operands(case):
    """Up to float rounding: (s_x q_x) @ W_hat^T in float64, W_hat the dequantized weight (of x R for rotated)."""
    x, qt, spec, _ = case
    xr = rotate_columns(x, qt.rotation) if qt.rotation else x
    qx, sx = quantize_activations(xr, spec)
    x_hat = qx.astype(np.float64) * sx.astype(np.float64)[:, None]
    stored = dequantize(dataclasses.replace(qt, rotation=0)).reshape(qt.shape[0], -1).astype(np.float64)
    ref = x_hat @ stored.T
    scale = np.abs(x_hat) @ np.abs(stored).T  # the size of the terms the result sums
    assert np.all(np.abs(int_linear(x, qt, spec) - ref) <= 1e-5 * scale + 1e-30)


def test_leading_dimensions_and_a_real_weight():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    qt, _ = quantize(w, 8, group_size=16, symmetric=False)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    y = int_linear(x, qt, ActivationSpec(8))
    assert y.shape == (2, 3, 24)
    exact = x @ w.T
    assert np.abs(y - exact).max() < 0.02 * np.abs(exact).max()  # W8A8 of a well-behaved layer: small error
    assert _bits_equal(y.reshape(6, 24), int_linear(x.reshape(6, 40), qt, ActivationSpec(8)))


def test_per_channel_groups_longer_than_the_block_are_split_exactly():
    rng = np.random.default_rng(1)
    cols = 3 * block_length(8, 8) + 17  # one group per row spanning four blocks
    qt = random_qt(rng, 5, cols, 8, cols, False, "plain")
    x = rng.standard_normal((4, cols)).astype(np.float32)
    spec = ActivationSpec(8)
    y = int_linear(x, qt, spec)
    assert _bits_equal(y, fake_linear(x, qt, spec))
    assert _bits_equal(y, int_linear(x, qt, spec, accumulate="int32"))


def test_block_length_is_the_exact_float32_bound():
    assert block_length(8, 8) == 518  # 127 * 255 * 518 <= 2**24 < 127 * 255 * 519
    assert block_length(8, 4) == 2**24 // (127 * 15)
    assert block_length(4, 2) == 2**24 // (7 * 3)
    # the worst case: every activation code 127, every weight code 255. At the bound the float32 sum is exact; one
    # column more and the (odd) true sum 127 * 255 * 519 is not a binary32 value, so no float32 product can equal it
    for n in (518, 519):
        xg = np.full((1, n), 127, np.int8)
        wg = np.full((1, n), 255, np.uint8)
        got = float(_product_float32(xg, wg, n)[0, 0])  # compared as a Python float: no rounding
        assert (got == 127 * 255 * n) == (n == 518)


def test_quantize_activations_dynamic_and_static():
    x = np.array([[0.5, -1.0, 0.25], [0, 0, 0], [3.0, 1.5, -0.75]], np.float32)
    q, s = quantize_activations(x, ActivationSpec(8))
    assert q.dtype == np.int8 and s.dtype == np.float32
    np.testing.assert_array_equal(s, np.float32([1.0, 0.0, 3.0]) / np.float32(127))
    np.testing.assert_array_equal(q[1], 0)
    assert q[0, 1] == -127 and q[2, 0] == 127  # the largest magnitude takes the extreme code
    np.testing.assert_array_equal(q[0], np.rint(x[0] / s[0]))
    qs, ss = quantize_activations(x, ActivationSpec(4, 0.25))
    np.testing.assert_array_equal(ss, 0.25)
    np.testing.assert_array_equal(qs[2], [7, 6, -3])  # 3.0 / 0.25 = 12 clips to Q = 7
    np.testing.assert_array_equal(qs[0], [2, -4, 1])


def test_rejections():
    rng = np.random.default_rng(2)
    qt = random_qt(rng, 3, 8, 4, 4, True, "plain")
    x = rng.standard_normal((2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="features"):
        int_linear(x[:, :7], qt, ActivationSpec(8))
    with pytest.raises(ValueError, match="exceeds"):
        int_linear(x, qt, ActivationSpec(8), block=block_length(8, 4) + 1)
    with pytest.raises(ValueError, match="accumulate"):
        int_linear(x, qt, ActivationSpec(8), accumulate="int64")


def test_activation_spec_validation():
    assert ActivationSpec(8).qmax == 127 and not ActivationSpec(8).static
    assert ActivationSpec(4, 0.5).static and ActivationSpec(4, 0.5).to_entry() == {"bits": 4, "scale": 0.5}
    assert ActivationSpec(6).to_entry() == {"bits": 6}
    for bits, scale in ((1, None), (9, None), (True, None), (8, 0.0), (8, -1.0), (8, float("inf")), (8, 0.1), (8, 1)):
        with pytest.raises(ValueError):
            ActivationSpec(bits, scale)
    s = ActivationSpec.static_from_range(8, 2.54)
    assert s.scale * 127 >= 2.54 and float(np.float32(s.scale)) == s.scale
    assert ActivationSpec.static_from_range(8, 0.0).scale > 0
