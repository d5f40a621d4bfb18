"""The compiled kernel (runtime/_kernel/wq_kernel.c) against the numpy path, over every bit width, group-size kind,
sign mode, decomposed and rotated tensors and odd shapes.

Exact where the arithmetic is: dequantization and the integer path bit for bit; the float path within the
summation-order bound kernel.float_error_bound states, and bit for bit on inputs where every float operation is
exact (small integers times power-of-two scales), so a single wrong code cannot hide inside that bound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from formats_helpers import decompose
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wavq.formats import WqFile, codecs, quantize, write_wq
from wavq.runtime import kernel

pytestmark = pytest.mark.skipif(
    kernel._wq_kernel is None, reason="compiled kernel not built (no C compiler at install): the numpy path runs"
)

BITS = list(range(2, 9))
GROUPS = [32, 64, 128, 0]  # 0 = per-channel
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Case:
    qt: codecs.QuantizedTensor
    x: np.ndarray  # float32 (M, cols)

    @property
    def packed(self) -> kernel.PackedTensor:
        return kernel.PackedTensor.from_quantized(self.qt)


@st.composite
def cases(draw, max_m: int = 17, exact: bool = False) -> Case:
    """A quantized tensor (any width, group, sign mode; plain, decomposed or rotated) and inputs for it.

    exact: scales are powers of two, offsets and outliers quarters, inputs small integers, so every product and
    partial sum (below 2^20 in steps of 2^-3) is exact in float32 and any summation order gives the same bits."""
    bits = draw(st.sampled_from(BITS))
    group = draw(st.sampled_from(GROUPS))
    symmetric = draw(st.booleans())
    kind = draw(st.sampled_from(["plain", "decomposed", "rotated"]))
    rows = draw(st.integers(1, 70))
    m = draw(st.integers(1, max_m))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "rotated":
        block = draw(st.sampled_from([2, 8, 32, 64]))
        cols = block * draw(st.integers(1, 300 // block))
    else:
        cols = draw(st.integers(1, 300))  # mostly not a multiple of 8 or of the group
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    qt, _ = quantize(w, bits, group, symmetric)
    if exact:
        qt = dataclasses.replace(qt, scales=np.exp2(rng.integers(-3, 2, qt.scales.shape)).astype(np.float16))
        x = rng.integers(-4, 5, (m, cols)).astype(np.float32)
    else:
        x = (rng.standard_normal((m, cols)) * rng.uniform(0.1, 10)).astype(np.float32)
    if kind == "decomposed":
        k = int(rng.integers(0, min(cols, 5) + 1))
        columns = np.sort(rng.choice(cols, k, replace=False))
        offset = rng.integers(-4, 5, cols) / 4 if exact else rng.standard_normal(cols)
        qt = decompose(
            qt, offset, columns, (rng.integers(-8, 9, (rows, k)) / 4 if exact else rng.standard_normal((rows, k)) * 20)
        )
    elif kind == "rotated":
        qt = dataclasses.replace(qt, rotation=block)
    return Case(qt, x)


def numpy_path(case: Case) -> np.ndarray:
    """What the runtime computes today (runtime/ops.linear): x R V^T for a rotated tensor, else x W^T, with the
    weight dequantized by formats.codecs."""
    qt = case.qt
    rows, cols = codecs.view_2d_shape(qt.shape)
    dec = {}
    if qt.decomposed:
        dec = {"offset": qt.offset, "outlier_columns": qt.outlier_columns, "outliers": qt.outliers}
    t = case.packed
    v = codecs.dequantize_packed(t.codes, t.scales, t.zeros, qt.bits, cols, qt.group_size, **dec)
    x = codecs.rotate_columns(case.x, qt.rotation) if qt.rotation else case.x
    return x @ v.T


@SETTINGS
@given(cases())
def test_dequantize_equals_codecs_bit_for_bit(case):
    qt = case.qt
    got = kernel.dequantize(case.packed)
    stored = dataclasses.replace(qt, rotation=0)  # the kernel yields the stored values V (SPEC.md 5.4)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, codecs.dequantize(stored).reshape(got.shape))


@SETTINGS
@given(cases())
def test_float_path_within_summation_bound(case):
    got = kernel.matmul(case.x, case.packed)
    want = numpy_path(case)
    bound = kernel.float_error_bound(case.x, case.packed)
    assert got.shape == want.shape and got.dtype == np.float32
    assert (np.abs(got - want) <= bound).all(), float(np.abs(got - want).max())


@SETTINGS
@given(cases(exact=True))
def test_float_path_bit_for_bit_when_every_operation_is_exact(case):
    if case.qt.rotation:  # the Hadamard transform of the inputs scales by 1/sqrt(B): not exact
        case.qt = dataclasses.replace(case.qt, rotation=0)
    np.testing.assert_array_equal(kernel.matmul(case.x, case.packed), numpy_path(case))


@SETTINGS
@given(cases(max_m=40))
def test_large_m_goes_through_tiles_within_the_bound(case):
    """M > SMALL_M: BLAS on dequantized tiles; the same products, so the same bound."""
    x = np.concatenate([case.x] * (1 + kernel.SMALL_M // case.x.shape[0]))
    case = Case(case.qt, x)
    got = kernel.matmul(case.x, case.packed)
    assert (np.abs(got - numpy_path(case)) <= kernel.float_error_bound(case.x, case.packed)).all()


@SETTINGS
@given(cases(), st.sampled_from([32, 16, 7, 128]))
def test_integer_path_equals_numpy_simulation_bit_for_bit(case, act_block):
    t = case.packed
    qx, sx = kernel.quantize_activations(case.x, act_block)
    got = kernel.matmul_int8(case.x, t, act_block)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(kernel.DISABLE_ENV, "1")
        assert not kernel.available()
        ref_qx, ref_sx = kernel.quantize_activations(case.x, act_block)
        want = kernel.matmul_int8(case.x, t, act_block)
    np.testing.assert_array_equal(qx, ref_qx)
    np.testing.assert_array_equal(sx, ref_sx)
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(cases())
def test_integer_path_within_activation_rounding_of_float_path(case):
    """Rounding x to int8 moves each input by at most half its block's step sx / 2, so the product moves by at
    most sum |(q - zero) * s| * sx / 2 (the decomposed parts stay float), plus float rounding of both paths."""
    t = case.packed
    x = codecs.rotate_columns(case.x, t.rotation) if t.rotation else case.x
    if t.offset is not None:
        x = x.copy()
        x[:, t.outlier_columns] = 0
    _, sx = kernel.quantize_activations(x)
    step = np.repeat(sx, kernel.ACT_BLOCK, axis=1)[:, : t.cols]
    codes_part = np.abs(codecs.dequantize_packed(t.codes, t.scales, t.zeros, t.bits, t.cols, t.group_size))
    bound = (step / 2) @ codes_part.T + 2 * kernel.float_error_bound(case.x, t)
    got = kernel.matmul_int8(case.x, t)
    assert (np.abs(got - numpy_path(case)) <= bound * (1 + 1e-5)).all()


def test_from_file_reads_the_stored_parts(tmp_path):
    rng = np.random.default_rng(7)
    qa, _ = quantize(rng.standard_normal((33, 70)).astype(np.float32), 3, 32, False)
    qr, _ = quantize(rng.standard_normal((20, 64)).astype(np.float32), 5, 0, True)
    tensors = {
        "d.weight": decompose(qa, rng.standard_normal(70), [3, 40], rng.standard_normal((33, 2))),
        "r.weight": dataclasses.replace(qr, rotation=16),
    }
    path = tmp_path / "m.wq"
    write_wq(path, {"model_type": "test"}, tensors)
    x = rng.standard_normal((3, 70)).astype(np.float32)
    with WqFile(path) as f:
        t = kernel.PackedTensor.from_file(f, "d.weight")
        np.testing.assert_array_equal(kernel.dequantize(t), f.array("d.weight"))
        assert (np.abs(kernel.matmul(x, t) - x @ f.array("d.weight").T) <= kernel.float_error_bound(x, t)).all()
        r = kernel.PackedTensor.from_file(f, "r.weight")
        assert r.rotation == 16
        np.testing.assert_array_equal(kernel.dequantize(r), f.array("r.weight", unrotate=False))


def test_wrong_input_width_is_a_value_error():
    qt, _ = quantize(np.ones((4, 10), np.float32), 4, 0, True)
    with pytest.raises(ValueError, match=r"\(M, 10\)"):
        kernel.matmul(np.ones((2, 9), np.float32), kernel.PackedTensor.from_quantized(qt))


def test_short_buffer_is_refused_by_the_extension():
    qt, _ = quantize(np.ones((4, 10), np.float32), 4, 0, True)
    t = kernel.PackedTensor.from_quantized(qt)
    bad = dataclasses.replace(t, scales=t.scales[:2])  # 4 rows of codes, 2 of scales
    with pytest.raises(ValueError, match="scales holds"):
        kernel.dequantize(bad)


def test_status_and_switch(monkeypatch):
    monkeypatch.delenv(kernel.DISABLE_ENV, raising=False)
    assert kernel.available()
    assert "in use" in kernel.kernel_status()
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    assert not kernel.available()
    assert f"{kernel.DISABLE_ENV}=1" in kernel.kernel_status()
