"""Codec and packing round trips over every bit width, group-size kind, sign mode and awkward shapes.

Bit packing and file round trips are checked bit-exactly; dequantization against the bound the codec reports.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats_helpers import quantized_codes_equal
from wavq.formats import (
    Encoding,
    QuantizedTensor,
    WqFile,
    dequantize,
    quantize,
    quantize_with_scales,
    rtn_scales,
    write_wq,
)
from wavq.formats.codecs import error_bound, n_groups, resolve_group_size
from wavq.formats.packing import pack_codes, row_bytes, unpack_codes
from wavq.formats.stats import bits_per_weight, payload_bits

BITS = list(range(2, 9))
GROUP_KINDS = ["one", "odd", "32", "128", "per-channel", "larger-than-cols"]
ODD_GROUPS = [3, 5, 7, 9, 13, 17, 33, 63, 65]
EPS32 = float(np.finfo(np.float32).eps)

# derandomize: CI runs the same examples every time (a new failure is found by running with a --hypothesis-seed)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def group_size_for(kind: str, cols: int, pick: int) -> int:
    """An API group size of the given kind (0 = per-channel; > cols is allowed and means per-channel)."""
    return {"one": 1, "odd": ODD_GROUPS[pick % len(ODD_GROUPS)], "32": 32, "128": 128, "per-channel": 0,
            "larger-than-cols": cols + 1 + pick % 50}[kind]


@st.composite
def shapes(draw) -> tuple[int, ...]:
    """2-D, 3-D (conv) and 4-D shapes whose column count is mostly not a multiple of 8 (or of the group)."""
    rows = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["2d", "2d-wide", "conv", "4d"]))
    if kind == "2d":
        return rows, draw(st.integers(1, 70))
    if kind == "2d-wide":
        return rows, draw(st.integers(129, 420))
    if kind == "conv":
        return rows, draw(st.integers(1, 40)), draw(st.integers(1, 7))
    return rows, draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))


def weights(shape: tuple[int, ...], seed: int, style: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # magnitudes from 1e-4 to 10: with a 1000x outlier the widest 2-bit range still fits float16 scales
    # (ranges that do not are rejected by design; test_quantize_rejects_unrepresentable_ranges covers that)
    w = rng.standard_normal(shape).astype(np.float32) * np.float32(10.0 ** rng.integers(-4, 2))
    if style == "positive":
        w = np.abs(w)
    elif style == "negative":
        w = -np.abs(w)
    elif style == "sparse":
        w[rng.random(shape) < 0.7] = 0
    elif style == "outlier":
        w.flat[rng.integers(w.size)] *= 1000
    elif style == "zero-row":
        w[0] = 0
    elif style == "constant":
        w[...] = np.float32(rng.standard_normal())
    return w


STYLES = ["normal", "positive", "negative", "sparse", "outlier", "zero-row", "constant"]


def _spec_pack_row(codes: list[int], bits: int) -> bytes:
    """SPEC.md 5.1 with Python ints: runs of 8 codes -> `bits` little-endian bytes, code i at bits [b*i, b*i+b)."""
    codes = codes + [0] * (-len(codes) % 8)
    out = b""
    for i in range(0, len(codes), 8):
        out += sum(c << (bits * j) for j, c in enumerate(codes[i : i + 8])).to_bytes(bits, "little")
    return out


# ---- bit packing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
@SETTINGS
@given(rows=st.integers(0, 6), cols=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_exact(bits, rows, cols, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (rows, cols), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (rows, row_bytes(cols, bits))
    np.testing.assert_array_equal(unpack_codes(packed, bits, cols), codes)
    for r in range(rows):  # the packing rule of SPEC.md, independently
        assert packed[r].tobytes() == _spec_pack_row(codes[r].tolist(), bits)
    padded_cols = -(-cols // 8) * 8  # padding codes of each row's last run are zero
    assert not unpack_codes(packed, bits, padded_cols)[:, cols:].any()


@pytest.mark.parametrize("bits", BITS)
def test_pack_extremes(bits):
    top = (1 << bits) - 1
    for codes in (np.zeros((2, 8), np.uint8), np.full((2, 8), top, np.uint8)):
        packed = pack_codes(codes, bits)
        assert packed.tobytes() == (b"\xff" if codes.any() else b"\0") * (2 * bits)
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(np.full((1, 3), top + 1, np.int64), bits)


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_pack_rejects_widths(bits):
    with pytest.raises(ValueError, match="bit width"):
        pack_codes(np.zeros((1, 8), np.uint8), bits)


# ---- quantize / dequantize -------------------------------------------------------------------------------
def check_quantized(w: np.ndarray, bits: int, group_size: int, symmetric: bool) -> QuantizedTensor:
    """quantize -> invariants of the result and the error bound it reports."""
    qt, err = quantize(w, bits, group_size=group_size, symmetric=symmetric)
    rows, cols = w.shape[0], math.prod(w.shape[1:])
    gs = resolve_group_size(cols, group_size)
    ng = n_groups(cols, gs)
    assert qt.shape == w.shape and qt.bits == bits and qt.group_size == gs and qt.symmetric == symmetric
    assert qt.codes.shape == (rows, cols) and qt.scales.shape == (rows, ng)
    assert int(qt.codes.max(initial=0)) < (1 << bits)
    if not symmetric:
        assert qt.zeros.shape == (rows, ng) and int(qt.zeros.max(initial=0)) < (1 << bits)
    deq = dequantize(qt)
    assert deq.dtype == np.float32 and deq.shape == w.shape
    diff = np.abs(deq - w).reshape(rows, cols)
    assert err == float(diff.max()), "quantize reports the error it achieved"
    bound = np.repeat(error_bound(qt), gs, axis=1)[:, :cols]
    tol = 4 * EPS32 * (np.abs(w).reshape(rows, cols) + bound)  # float32 rounding of w/s and of (q - z) * s
    excess = diff - bound - tol
    assert excess.max() <= 0, f"error exceeds the reported bound by {excess.max()}"
    # the split API used by search algorithms gives the same codes
    s, z = rtn_scales(w.reshape(rows, cols), bits, gs, symmetric)
    np.testing.assert_array_equal(quantize_with_scales(w.reshape(rows, cols), s, z, bits, gs), qt.codes)
    return qt


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", BITS)
@SETTINGS
@given(shape=shapes(), kind=st.sampled_from(GROUP_KINDS), pick=st.integers(0, 1000),
       style=st.sampled_from(STYLES), seed=st.integers(0, 2**32 - 1))
def test_quantize_within_reported_bound(bits, symmetric, shape, kind, pick, style, seed):
    w = weights(shape, seed, style)
    check_quantized(w, bits, group_size_for(kind, math.prod(shape[1:]), pick), symmetric)


def test_quantize_exact_on_grid():
    """Weights that sit on the grid come back exactly (here: integers with scale 1 at 4 bits)."""
    w = np.array([[-8, -3, 0, 5, 7, 1, -1, 2, 4]], np.float32)
    qt, err = quantize(w, 4, group_size=0, symmetric=False)
    assert err == 0.0
    np.testing.assert_array_equal(dequantize(qt), w)


def test_quantize_tiny_range_keeps_a_nonzero_scale():
    w = np.array([[1e-45, 0.0, -1e-45]], np.float32)  # float32 subnormals
    for symmetric in (True, False):
        qt, err = quantize(w, 4, symmetric=symmetric)
        assert (qt.scales != 0).all() and err <= float(error_bound(qt).max())


@pytest.mark.parametrize("shape", [(8,), (), (1,)])
def test_one_dimensional_tensors_are_not_quantized(shape):
    with pytest.raises(ValueError, match="2 or more dimensions"):
        quantize(np.ones(shape, np.float32), 4)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        QuantizedTensor(shape, 4, 1, np.zeros(shape, np.uint8), np.zeros((1, 1), np.float16))


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[1.0, np.nan]], np.float32), 4)
    with pytest.raises(ValueError, match="float16"):
        quantize(np.array([[1e9, -1e9]], np.float32), 2)
    with pytest.raises(ValueError, match="no columns"):
        quantize(np.zeros((3, 0), np.float32), 4)
    with pytest.raises(ValueError, match="group size"):
        quantize(np.ones((2, 4), np.float32), 4, group_size=-1)


# ---- through a file ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("codecs")


def random_quantized(shape, bits, group_size, symmetric, seed) -> QuantizedTensor:
    """Arbitrary codes, scales (any sign, zero included) and zero points: the container must keep them all."""
    rng = np.random.default_rng(seed)
    rows, cols = shape[0], math.prod(shape[1:])
    gs = resolve_group_size(cols, group_size)
    ng = n_groups(cols, gs)
    scales = (rng.standard_normal((rows, ng)) * 0.1).astype(np.float16)
    scales[rng.random((rows, ng)) < 0.1] = 0
    zeros = None if symmetric else rng.integers(0, 1 << bits, (rows, ng), dtype=np.uint8)
    return QuantizedTensor(tuple(shape), bits, gs, rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint8),
                           scales, zeros)


def check_file_round_trip(path, qt: QuantizedTensor, seed: int) -> None:
    """codes -> write -> read: exact codes, scales, zero points and dequantized values; row ranges too."""
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal(qt.shape[0]).astype(np.float16)
    write_wq(path, {"seed": seed}, {"w": qt, "b": extra}, force=True)
    with WqFile(path) as f:
        assert quantized_codes_equal(f.quantized("w"), qt)
        full = f.array("w")
        np.testing.assert_array_equal(full, dequantize(qt))
        rows = qt.shape[0]
        a, b = sorted(int(x) for x in rng.integers(0, rows + 1, 2))
        for sel in (slice(a, b), slice(a, None), slice(None, b), slice(None, None, 2), slice(-1, None),
                    slice(b, a)):
            np.testing.assert_array_equal(f.array("w", rows=sel), full[sel], err_msg=str(sel))
        np.testing.assert_array_equal(f.array("b"), extra.astype(np.float32))
        assert f.verify() == []


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", BITS)
@SETTINGS
@given(shape=shapes(), kind=st.sampled_from(GROUP_KINDS), pick=st.integers(0, 1000), seed=st.integers(0, 2**32 - 1))
def test_codes_write_read_exact(scratch, bits, symmetric, shape, kind, pick, seed):
    qt = random_quantized(shape, bits, group_size_for(kind, math.prod(shape[1:]), pick), symmetric, seed)
    check_file_round_trip(scratch / f"rt{bits}{symmetric}.wq", qt, seed)


@pytest.mark.parametrize("shape", [(6, 5, 7), (3, 301)], ids=["conv-6x5x7", "2d-3x301"])
@pytest.mark.parametrize("kind", GROUP_KINDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", BITS)
def test_grid_quantize_write_read(scratch, bits, symmetric, kind, shape):
    """Every width x group kind x sign mode, deterministically (hypothesis samples the same space above)."""
    cols = math.prod(shape[1:])
    w = weights(shape, bits * 100 + len(kind), "normal")
    qt = check_quantized(w, bits, group_size_for(kind, cols, 1), symmetric)
    check_file_round_trip(scratch / "grid.wq", qt, bits)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_zero_row_tensor_round_trip(scratch, symmetric):
    qt, err = quantize(np.zeros((0, 13), np.float32), 3, group_size=4, symmetric=symmetric)
    assert err == 0.0
    path = scratch / "empty.wq"
    write_wq(path, {}, {"w": qt}, force=True)
    with WqFile(path) as f:
        assert f.array("w").shape == (0, 13)
        assert f.quantized("w").codes.shape == (0, 13)


# ---- accounting (SPEC.md section 12) ------------------------------------------------------------------------
def test_effective_bits_per_weight():
    assert bits_per_weight(4, 128, True, (384, 1536)) == 4 + 16 / 128
    assert bits_per_weight(4, 128, False, (384, 1536)) == 4 + (16 + 4) / 128
    assert bits_per_weight(3, 0, True, (10, 100)) == 3 + 16 / 100  # per-channel
    # a short last group still costs a whole scale; row padding to 8 codes is not counted
    assert payload_bits(Encoding.QASYM, (2, 13), 5, 4) == 2 * 13 * 5 + 2 * 4 * (16 + 5)
    assert payload_bits(Encoding.F16, (3, 5)) == 15 * 16 and payload_bits(Encoding.F32, ()) == 32


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_rejects_unrepresentable_ranges(symmetric):
    w = np.array([[1e6, -1e6, 3.0, 0.5]], np.float32)  # 2-bit scale ~6.7e5 > float16's 65504
    with pytest.raises(ValueError, match="float16"):
        quantize(w, 2, group_size=0, symmetric=symmetric)
