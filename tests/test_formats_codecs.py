"""Codec and packing round trips over every bit width, group-size kind, sign mode and awkward shapes.

Bit packing and file round trips are checked bit-exactly; dequantization against the bound the codec reports.
Decomposed tensors (offset row + float outlier columns, SPEC.md 5.3) round-trip through files bit-exactly too.
Rotated tensors (SPEC.md 5.4) are checked against a dense rotation matrix built independently in float64.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from formats_helpers import decompose, quantized_codes_equal, spec_lowbias32
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wavq.formats import (
    Encoding,
    QuantizedTensor,
    WqFile,
    apply_decomposition,
    codecs,
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
    return {
        "one": 1,
        "odd": ODD_GROUPS[pick % len(ODD_GROUPS)],
        "32": 32,
        "128": 128,
        "per-channel": 0,
        "larger-than-cols": cols + 1 + pick % 50,
    }[kind]


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
@given(
    shape=shapes(),
    kind=st.sampled_from(GROUP_KINDS),
    pick=st.integers(0, 1000),
    style=st.sampled_from(STYLES),
    seed=st.integers(0, 2**32 - 1),
)
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
    return QuantizedTensor(
        tuple(shape), bits, gs, rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint8), scales, zeros
    )


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
        for sel in (slice(a, b), slice(a, None), slice(None, b), slice(None, None, 2), slice(-1, None), slice(b, a)):
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


@pytest.mark.parametrize("k", [None, 0, 2], ids=["plain", "offset-only", "2-float-cols"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_zero_row_tensor_round_trip(scratch, symmetric, k):
    qt, err = quantize(np.zeros((0, 13), np.float32), 3, group_size=4, symmetric=symmetric)
    assert err == 0.0
    if k is not None:
        qt = decompose(qt, np.arange(13), [3, 12][:k], np.zeros((0, k)))
    path = scratch / "empty.wq"
    write_wq(path, {}, {"w": qt}, force=True)
    with WqFile(path) as f:
        assert f.array("w").shape == (0, 13)
        assert quantized_codes_equal(f.quantized("w"), qt)
        assert f.verify() == []


# ---- decomposed tensors (SPEC.md 5.3) ------------------------------------------------------------------------
def random_decomposed(shape, bits, group_size, symmetric, seed, k: int) -> QuantizedTensor:
    """random_quantized plus an offset row and k float columns (k < 0: every column), values of all magnitudes."""
    qt = random_quantized(shape, bits, group_size, symmetric, seed)
    rng = np.random.default_rng(seed ^ 0x5EED)
    rows, cols = qt.codes.shape
    k = cols if k < 0 else min(k, cols)
    columns = np.sort(rng.choice(cols, size=k, replace=False)).astype(np.int64)
    offset = (rng.standard_normal(cols) * 10.0 ** rng.integers(-4, 3)).astype(np.float32)
    offset[rng.random(cols) < 0.1] = 0
    # float16 values: the container stores outliers as float16, so the test keeps them representable
    outliers = (rng.standard_normal((rows, k)) * 10.0 ** rng.integers(-2, 3)).astype(np.float16)
    return decompose(qt, offset, columns, outliers)


def reference_decomposed(qt: QuantizedTensor) -> np.ndarray:
    """SPEC.md 5.3 written out on its own: plain dequantization, + offset (float32), then the float columns."""
    plain = dequantize(QuantizedTensor(qt.shape, qt.bits, qt.group_size, qt.codes, qt.scales, qt.zeros))
    rows, cols = qt.codes.shape
    w = plain.reshape(rows, cols) + qt.offset  # float32 + float32: numpy rounds once
    for i, c in enumerate(qt.outlier_columns.tolist()):
        w[:, c] = qt.outliers[:, i].astype(np.float32)
    return w.reshape(qt.shape)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", BITS)
@SETTINGS
@given(
    shape=shapes(),
    kind=st.sampled_from(GROUP_KINDS),
    pick=st.integers(0, 1000),
    seed=st.integers(0, 2**32 - 1),
    k=st.one_of(st.integers(0, 6), st.just(-1)),
)
def test_decomposed_write_read_exact(scratch, bits, symmetric, shape, kind, pick, seed, k):
    """Codes, scales, zeros, offset, columns and outliers come back bit for bit; array() (whole and row slices,
    through the fused dequantizer) equals codecs.dequantize, which equals the formula of SPEC.md 5.3."""
    qt = random_decomposed(shape, bits, group_size_for(kind, math.prod(shape[1:]), pick), symmetric, seed, k)
    assert qt.decomposed
    np.testing.assert_array_equal(dequantize(qt), reference_decomposed(qt))
    check_file_round_trip(scratch / f"dec{bits}{symmetric}.wq", qt, seed)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fused_dequantizer_applies_the_decomposition_per_block(scratch, monkeypatch, bits):
    """Blocks of a few rows: each block must get its own rows of the outliers (and the whole offset)."""
    monkeypatch.setattr(codecs, "_DEQUANT_BLOCK_ELEMENTS", 3 * 24)  # 3 rows of 24 columns per block
    qt = random_decomposed((17, 24), bits, 8, bits % 2 == 0, bits, 3)
    path = scratch / "blocks.wq"
    write_wq(path, {}, {"w": qt}, force=True)
    with WqFile(path) as f:
        np.testing.assert_array_equal(f.array("w"), dequantize(qt))
        np.testing.assert_array_equal(f.array("w", rows=slice(2, 16, 3)), dequantize(qt)[2:16:3])


def test_decomposition_formula():
    """Step 2 adds in float32 (rounded once), step 3 assigns: the codes of outlier columns do not matter."""
    codes = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    qt = QuantizedTensor((2, 4), 2, 4, codes, np.array([[1.0], [0.5]], np.float16), None)  # zero point 2
    offset = np.array([1e8, 0.25, -1.0, 3.0], np.float32)
    d = decompose(qt, offset, [3], [[7.5], [-0.125]])
    want = np.array([[np.float32(1e8) - 2, -0.75, -1.0, 7.5], [1e8 + 0.5, 0.25, -1.5, -0.125]], np.float32)
    np.testing.assert_array_equal(dequantize(d), want)
    other_codes = decompose(dataclasses.replace(qt, codes=codes[:, [0, 1, 2, 0]]), offset, [3], [[7.5], [-0.125]])
    np.testing.assert_array_equal(dequantize(other_codes), want)
    # k = 0: offset only; every column float: codes ignored entirely
    np.testing.assert_array_equal(dequantize(decompose(qt, offset, [], np.zeros((2, 0)))), dequantize(qt) + offset)
    every = decompose(qt, offset, [0, 1, 2, 3], np.arange(8).reshape(2, 4))
    np.testing.assert_array_equal(dequantize(every), np.arange(8, dtype=np.float32).reshape(2, 4))


def test_apply_decomposition_works_on_row_ranges():
    qt = random_decomposed((9, 13), 4, 4, False, 7, 2)
    full = dequantize(qt)
    plain = dequantize(QuantizedTensor(qt.shape, qt.bits, qt.group_size, qt.codes, qt.scales, qt.zeros))
    rows = plain[3:7].copy()
    out = apply_decomposition(rows, qt.offset, qt.outlier_columns, qt.outliers[3:7])
    assert out is rows  # in place
    np.testing.assert_array_equal(rows, full[3:7])
    with pytest.raises(ValueError, match="do not fit"):
        apply_decomposition(plain[3:7].copy(), qt.offset, qt.outlier_columns, qt.outliers[3:8])
    with pytest.raises(ValueError, match="do not fit"):
        apply_decomposition(plain.astype(np.float64), qt.offset, qt.outlier_columns, qt.outliers)


def _bad_decomposition(case: str) -> dict:
    """Keyword arguments for QuantizedTensor((3, 5), ...) with one decomposition field wrong."""
    ok = {
        "offset": np.zeros(5, np.float32),
        "outlier_columns": np.array([1, 4], np.int64),
        "outliers": np.zeros((3, 2), np.float16),
    }
    bad = {
        "offset only": {"offset": ok["offset"]},
        "columns without offset": {"outlier_columns": ok["outlier_columns"]},
        "outliers without offset": {"outliers": ok["outliers"]},
        "offset float64": {"offset": np.zeros(5)},
        "offset short": {"offset": np.zeros(4, np.float32)},
        "offset a list": {"offset": [0.0] * 5},
        "columns int32": {"outlier_columns": np.array([1, 4], np.int32)},
        "columns 2-D": {"outlier_columns": np.array([[1, 4]], np.int64)},
        "columns decreasing": {"outlier_columns": np.array([4, 1], np.int64)},
        "columns repeated": {"outlier_columns": np.array([1, 1], np.int64)},
        "column negative": {"outlier_columns": np.array([-1, 4], np.int64)},
        "column too large": {"outlier_columns": np.array([1, 5], np.int64)},
        "outliers float32": {"outliers": np.zeros((3, 2), np.float32)},
        "outliers wrong k": {"outliers": np.zeros((3, 3), np.float16)},
        "outliers wrong rows": {"outliers": np.zeros((2, 2), np.float16)},
    }[case]
    if case.endswith("without offset") or case == "offset only":
        return bad
    return {**ok, **bad}


@pytest.mark.parametrize(
    "case",
    [
        "offset only",
        "columns without offset",
        "outliers without offset",
        "offset float64",
        "offset short",
        "offset a list",
        "columns int32",
        "columns 2-D",
        "columns decreasing",
        "columns repeated",
        "column negative",
        "column too large",
        "outliers float32",
        "outliers wrong k",
        "outliers wrong rows",
    ],
)
def test_quantized_tensor_validates_the_decomposition(case):
    base = dict(
        shape=(3, 5), bits=3, group_size=2, codes=np.zeros((3, 5), np.uint8), scales=np.ones((3, 3), np.float16)
    )
    with pytest.raises(ValueError, match="offset|outlier"):
        QuantizedTensor(**base, **_bad_decomposition(case))
    plain = QuantizedTensor(**base)
    assert not plain.decomposed
    empty = QuantizedTensor(
        **base,
        offset=np.zeros(5, np.float32),
        outlier_columns=np.zeros(0, np.int64),
        outliers=np.zeros((3, 0), np.float16),
    )
    assert empty.decomposed


# ---- rotated tensors (SPEC.md 5.4) ------------------------------------------------------------------------


def dense_rotation(cols: int, block: int) -> np.ndarray:
    """float64 R = S blockdiag(H_B, ..., H_B) / sqrt(B), H_B built by Sylvester's recursion (SPEC.md 5.4)."""
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    signs = np.array([-1.0 if spec_lowbias32(c) & 1 else 1.0 for c in range(cols)])
    return np.diag(signs) @ np.kron(np.eye(cols // block), h) / math.sqrt(block)


def rotation_tolerance(x: np.ndarray, block: int) -> float:
    """Bound on the float32 error of a block transform of the rows of x: each of the log2(B) butterfly stages and
    the final scaling add at most ~eps relative to the block's 2-norm (which the normalised transform keeps)."""
    rows, cols = x.shape
    norms = np.linalg.norm(x.astype(np.float64).reshape(rows, cols // block, block), axis=2)
    return (math.log2(block) + 2) * EPS32 * float(norms.max(initial=0.0))


# (rows, cols, B): one block, several blocks, B = 2 (cols not a power of two), a wide block
ROTATION_CASES = [(5, 8, 8), (4, 48, 16), (3, 10, 2), (7, 24, 4), (2, 128, 128), (6, 96, 32)]
ROTATION_IDS = [f"{r}x{c}-B{b}" for r, c, b in ROTATION_CASES]


@pytest.mark.parametrize("rows,cols,block", ROTATION_CASES, ids=ROTATION_IDS)
def test_rotate_columns_is_multiplication_by_the_dense_matrix(rows, cols, block):
    """rotate_columns(W) = W R and unrotate_columns(V) = V R^T, R from the definition (a wrong sign, block order
    or butterfly pairing is an O(1) difference; float32 rounding is far below the tolerance)."""
    rng = np.random.default_rng(rows * 1000 + cols + block)
    w = (rng.standard_normal((rows, cols)) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
    r = dense_rotation(cols, block)
    rotated = codecs.rotate_columns(w, block)
    assert rotated.dtype == np.float32 and rotated.shape == (rows, cols)
    np.testing.assert_allclose(rotated, w.astype(np.float64) @ r, rtol=0, atol=rotation_tolerance(w, block))
    unrotated = codecs.unrotate_columns(w, block)
    assert unrotated.dtype == np.float32 and unrotated.shape == (rows, cols)
    np.testing.assert_allclose(unrotated, w.astype(np.float64) @ r.T, rtol=0, atol=rotation_tolerance(w, block))
    assert not np.allclose(rotated, unrotated, atol=rotation_tolerance(w, block))  # R is not symmetric (signs)


@pytest.mark.parametrize("rows,cols,block", ROTATION_CASES, ids=ROTATION_IDS)
def test_rotation_is_orthogonal_and_invertible(rows, cols, block):
    """The transform applied to the identity is R itself: entries +-1/sqrt(B) inside the diagonal blocks, 0
    elsewhere, R R^T = I; so it keeps every row's norm, and unrotate_columns undoes rotate_columns."""
    r = codecs.rotate_columns(np.eye(cols, dtype=np.float32), block).astype(np.float64)
    inside = np.kron(np.eye(cols // block), np.ones((block, block))) > 0
    np.testing.assert_allclose(np.abs(r[inside]), 1 / math.sqrt(block), rtol=2 * EPS32)
    assert not r[~inside].any()
    np.testing.assert_allclose(r @ r.T, np.eye(cols), rtol=0, atol=4 * EPS32)
    rng = np.random.default_rng(cols + block)
    w = (rng.standard_normal((rows, cols)) * 100).astype(np.float32)
    tol = rotation_tolerance(w, block)
    v = codecs.rotate_columns(w, block)
    np.testing.assert_allclose(
        np.linalg.norm(v.astype(np.float64), axis=1),
        np.linalg.norm(w.astype(np.float64), axis=1),
        rtol=0,
        atol=math.sqrt(cols) * tol,
    )
    np.testing.assert_allclose(codecs.unrotate_columns(v, block), w, rtol=0, atol=2 * tol)
    np.testing.assert_allclose(codecs.rotate_columns(codecs.unrotate_columns(w, block), block), w, rtol=0, atol=2 * tol)


def test_rotation_of_zero_rows():
    for f in (codecs.rotate_columns, codecs.unrotate_columns):
        out = f(np.zeros((0, 16), np.float32), 4)
        assert out.shape == (0, 16) and out.dtype == np.float32


def test_rotation_signs_match_lowbias32():
    """Column j is negated iff spec_lowbias32(j) is odd; the signs depend on the column index only (a prefix of a
    longer vector is the shorter one), and they are balanced like coin flips."""
    n = 1000
    signs = codecs.rotation_signs(n)
    assert signs.dtype == np.float32 and signs.shape == (n,)
    np.testing.assert_array_equal(signs, [-1.0 if spec_lowbias32(j) & 1 else 1.0 for j in range(n)])
    np.testing.assert_array_equal(codecs.rotation_signs(37), signs[:37])
    negative = int((signs < 0).sum())
    assert 440 <= negative <= 560, f"{negative} of {n} columns negated"  # within ~4 sigma of n/2
    runs = int((signs[1:] != signs[:-1]).sum())  # a hash, not a pattern: about n/2 sign changes too
    assert 440 <= runs <= 560
    assert codecs.rotation_signs(0).shape == (0,)


@pytest.mark.parametrize(
    "block", [1, 3, 6, 12, -2, -8, 32, True, 8.0, "8", None, np.float32(2)], ids=lambda b: f"{type(b).__name__}-{b}"
)
def test_quantized_tensor_rejects_bad_rotations(block):
    """B must be 0 (not rotated) or an integer power of two >= 2 dividing cols (24 here; 32 does not divide)."""
    base = dict(
        shape=(3, 24), bits=4, group_size=8, codes=np.zeros((3, 24), np.uint8), scales=np.ones((3, 3), np.float16)
    )
    with pytest.raises(ValueError, match="rotation"):
        QuantizedTensor(**base, rotation=block)
    for ok in (0, 2, 8, np.int64(8), np.uint8(4)):
        assert QuantizedTensor(**base, rotation=ok).rotation == ok


def test_quantized_tensor_rejects_rotation_with_decomposition():
    qt = random_decomposed((3, 16), 4, 8, False, 11, 2)
    with pytest.raises(ValueError, match="decomposed or rotated"):
        dataclasses.replace(qt, rotation=4)
    with pytest.raises(ValueError, match="decomposed or rotated"):  # an offset alone decomposes too (k = 0)
        dataclasses.replace(
            qt, rotation=4, outlier_columns=np.zeros(0, np.int64), outliers=np.zeros((3, 0), np.float16)
        )


def test_writer_rechecks_a_mutated_rotation(tmp_path):
    """QuantizedTensor is frozen, but object.__setattr__ gets around it; the writer, like for decompositions,
    never writes a file its reader would reject."""
    qt = dataclasses.replace(random_quantized((3, 12), 4, 4, True, 3), rotation=4)
    object.__setattr__(qt, "rotation", 8)  # does not divide 12
    with pytest.raises(ValueError, match="rotation"):
        write_wq(tmp_path / "m.wq", {}, {"w": qt})
    assert not (tmp_path / "m.wq").exists()


@pytest.mark.parametrize("shape,block", [((4, 16), 8), ((3, 2, 5), 2), ((5, 4, 8), 32), ((6, 64), 64)])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_dequantize_applies_the_rotation(shape, block, symmetric):
    """dequantize(rotated) is unrotate_columns of the plain dequantization (the codes stand for V = W R), in the
    stored shape, bit for bit; and it is V R^T by the dense matrix."""
    qt = dataclasses.replace(random_quantized(shape, 4, 5, symmetric, block), rotation=block)
    plain = dequantize(dataclasses.replace(qt, rotation=0))
    rows, cols = qt.codes.shape
    got = dequantize(qt)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.reshape(rows, cols), codecs.unrotate_columns(plain.reshape(rows, cols), block))
    v = plain.reshape(rows, cols)
    np.testing.assert_allclose(
        got.reshape(rows, cols),
        v.astype(np.float64) @ dense_rotation(cols, block).T,
        rtol=0,
        atol=rotation_tolerance(v, block),
    )
    assert not np.allclose(got, plain, atol=rotation_tolerance(v, block))


@pytest.mark.parametrize("block", [2, 16, 64])
def test_quantizing_rotated_weights_keeps_the_row_error(block):
    """How the format is meant to be used: quantize V = W R, store rotation = B; dequantize gives back W with the
    same per-row 2-norm error as V had (R is orthogonal), however the outlier columns of W sat."""
    rng = np.random.default_rng(block)
    w = rng.standard_normal((6, 128)).astype(np.float32)
    w[:, [3, 77]] *= 40  # outlier columns: what the rotation spreads over their blocks
    qt, _ = quantize(codecs.rotate_columns(w, block), 4, group_size=32, symmetric=False)
    v_err = np.linalg.norm((dequantize(qt) - codecs.rotate_columns(w, block)).astype(np.float64), axis=1)
    w_err = np.linalg.norm((dequantize(dataclasses.replace(qt, rotation=block)) - w).astype(np.float64), axis=1)
    np.testing.assert_allclose(w_err, v_err, rtol=1e-3, atol=4 * rotation_tolerance(w, block))


@st.composite
def rotated_shapes(draw) -> tuple[tuple[int, ...], int]:
    """(shape, B): 2-D or conv shapes whose column count is B times something, often not a multiple of 8."""
    block = 2 ** draw(st.integers(1, 7))
    m = draw(st.integers(1, 7))
    rows = draw(st.integers(0, 9))
    if draw(st.booleans()):
        return (rows, block * m), block
    k = draw(st.sampled_from([d for d in range(1, block * m + 1) if block * m % d == 0]))
    return (rows, block * m // k, k), block


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@SETTINGS
@given(
    shape_block=rotated_shapes(),
    kind=st.sampled_from(GROUP_KINDS),
    pick=st.integers(0, 1000),
    seed=st.integers(0, 2**32 - 1),
)
def test_rotated_write_read_exact(scratch, bits, symmetric, shape_block, kind, pick, seed):
    """Codes, scales and the block size come back exactly; array() (whole and row slices) equals
    codecs.dequantize of the rotated tensor bit for bit."""
    shape, block = shape_block
    qt = random_quantized(shape, bits, group_size_for(kind, math.prod(shape[1:]), pick), symmetric, seed)
    qt = dataclasses.replace(qt, rotation=block)
    path = scratch / f"rot{bits}{symmetric}.wq"
    check_file_round_trip(path, qt, seed)
    with WqFile(path) as f:
        assert f.layout_revision == 3 and f.info("w").rotation == block and f.quantized("w").rotation == block


# ---- accounting (SPEC.md section 12) ------------------------------------------------------------------------
def test_effective_bits_per_weight():
    assert bits_per_weight(4, 128, True, (384, 1536)) == 4 + 16 / 128
    assert bits_per_weight(4, 128, False, (384, 1536)) == 4 + (16 + 4) / 128
    assert bits_per_weight(3, 0, True, (10, 100)) == 3 + 16 / 100  # per-channel
    # a short last group still costs a whole scale; row padding to 8 codes is not counted
    assert payload_bits(Encoding.QASYM, (2, 13), 5, 4) == 2 * 13 * 5 + 2 * 4 * (16 + 5)
    assert payload_bits(Encoding.F16, (3, 5)) == 15 * 16 and payload_bits(Encoding.F32, ()) == 32


def test_effective_bits_per_weight_decomposed():
    """A decomposed tensor adds 32 * cols (offset) + 16 * rows * k (float columns); SPEC.md section 12's example."""
    rows, cols = 51865, 384  # Whisper's token embedding (tiny / base width 384)
    plain = payload_bits(Encoding.QASYM, (rows, cols), 4, 128)
    assert payload_bits(Encoding.QASYM, (rows, cols), 4, 128, outliers=None) == plain
    assert payload_bits(Encoding.QASYM, (rows, cols), 4, 128, outliers=0) == plain + 32 * cols
    assert payload_bits(Encoding.QASYM, (rows, cols), 4, 128, outliers=4) == plain + 32 * cols + 16 * rows * 4
    assert payload_bits(Encoding.QASYM, (rows, cols), 4, 128, outliers=4) == 86_108_188
    assert bits_per_weight(4, 128, False, (rows, cols), outliers=4) == 86_108_188 / (rows * cols)
    assert round(bits_per_weight(4, 128, False, (rows, cols), 4), 4) == 4.3235
    assert bits_per_weight(4, 128, True, (384, 1536), 0) == 4 + 16 / 128 + 32 / 384


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_rejects_unrepresentable_ranges(symmetric):
    w = np.array([[1e6, -1e6, 3.0, 0.5]], np.float32)  # 2-bit scale ~6.7e5 > float16's 65504
    with pytest.raises(ValueError, match="float16"):
        quantize(w, 2, group_size=0, symmetric=symmetric)
