"""The compiled kernel's integer products (kernel.code_products, wq_kernel.c matmul_codes) under the contract of
runtime/intlinear.py: equal bit for bit to numpy's int_linear and to the float simulation fake_linear, over every
weight width, sign mode, group size (dividing or not), decomposed and rotated weights, activation widths and input
row counts from a decoding step to an encoder window; its AVX2 loops equal to its plain loop; and whole act-quant
models (a tiny Whisper, a tiny Wav2Vec2, converted by wavq-convert) giving identical outputs with and without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_intlinear import random_qt

from wavq.formats.activation import ActivationSpec
from wavq.formats.codecs import rotate_columns
from wavq.runtime import kernel
from wavq.runtime.intlinear import fake_linear, int_linear, packed_int_linear, quantize_activations

pytestmark = pytest.mark.skipif(
    kernel._wq_kernel is None, reason="compiled kernel not built (no C compiler at install): the numpy path runs"
)

ROWS_M = [1, 3, 17, 300]  # decoding steps (greedy, beams) to an encoder-sized block
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """The same float32 bit pattern in every element (signed zeros included)."""
    return (
        a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


@st.composite
def cases(draw):
    variant = draw(st.sampled_from(["plain", "decomposed", "rotated"]))
    cols = draw(st.integers(1, 200))
    if variant == "rotated":
        cols = 8 * draw(st.integers(1, 25))
    rows = draw(st.integers(1, 45))  # not a multiple of the kernel's 4-row step, nor of a tile
    m = draw(st.sampled_from(ROWS_M))
    bits = draw(st.integers(2, 8))
    group = draw(st.sampled_from([cols, 1, 7, 16, 32, 64, draw(st.integers(1, cols))]))
    group = min(group, cols)  # the sizes above, most of them not dividing cols
    symmetric = draw(st.booleans())
    act_bits = draw(st.sampled_from([4, 6, 8]))
    static = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qt = random_qt(rng, rows, cols, bits, group, symmetric, variant)
    x = (rng.standard_normal((m, cols)) * rng.choice([0.01, 1.0, 30.0])).astype(np.float32)
    if draw(st.booleans()):
        x[0] = 0  # a zero row: dynamic scale 0
    spec = (
        ActivationSpec.static_from_range(act_bits, 0.7 * float(np.abs(x).max())) if static else ActivationSpec(act_bits)
    )
    return x, qt, spec  # static: the largest inputs clip


@SETTINGS
@given(cases(), st.sampled_from([1, 2]))
def test_kernel_equals_int_linear_and_fake_linear_bit_for_bit(case, threads):
    x, qt, spec = case
    t = kernel.PackedTensor.from_quantized(qt)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(kernel.THREADS_ENV, str(threads))  # output rows split over threads: the same bits
        got = packed_int_linear(x, t, spec)
    want = int_linear(x, qt, spec)
    assert bits_equal(got, want)
    assert bits_equal(got, fake_linear(x, qt, spec))


@SETTINGS
@given(cases())
def test_avx2_loops_equal_the_plain_loop(case):
    """The int16 loop and (codes and activations small enough, e.g. 4-bit weights) the narrow uint8 loop."""
    x, qt, spec = case
    t = kernel.PackedTensor.from_quantized(qt)
    xr = rotate_columns(x, qt.rotation) if qt.rotation else x
    qx, _ = quantize_activations(xr, spec)
    assert bits_equal(kernel.code_products(qx, t), kernel.code_products(qx, t, portable=True))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("act_bits", [4, 6, 8])
@pytest.mark.parametrize("group", [128, 200, 600])
def test_long_groups_on_every_loop(bits, act_bits, group):
    """Groups of 128 columns and more, where the narrow loop runs whenever the codes allow it (e.g. 4-bit weights
    with A8, 8-bit with A6): equal to numpy and to the plain loop. 600 columns: 128 and 200 do not divide them."""
    rng = np.random.default_rng(bits * 100 + act_bits)
    qt = random_qt(rng, 13, 600, bits, group, bits % 2 == 0, "plain")
    x = rng.standard_normal((5, 600)).astype(np.float32)
    spec = ActivationSpec(act_bits)
    t = kernel.PackedTensor.from_quantized(qt)
    qx, _ = quantize_activations(x, spec)
    assert bits_equal(packed_int_linear(x, t, spec), int_linear(x, qt, spec))
    assert bits_equal(kernel.code_products(qx, t), kernel.code_products(qx, t, portable=True))


def test_kernel_status_names_the_integer_loop():
    assert ("AVX2" if kernel._wq_kernel.AVX2 else "portable") in kernel.kernel_status()


def test_switched_off_the_packed_route_runs_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    qt = random_qt(rng, 6, 40, 5, 16, False, "decomposed")
    t = kernel.PackedTensor.from_quantized(qt)
    x = rng.standard_normal((2, 40)).astype(np.float32)
    calls = []
    monkeypatch.setattr(kernel, "code_products", lambda *a, **k: calls.append(1))
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    assert bits_equal(packed_int_linear(x, t, ActivationSpec(8)), int_linear(x, qt, ActivationSpec(8)))
    assert not calls


@pytest.mark.parametrize(("cols", "group"), [(70_001, 70_001), (131_080, 70_000)])
@pytest.mark.parametrize(("bits", "code", "zero"), [(8, 255, 0), (4, 0, 15)])
def test_groups_beyond_the_int32_span_are_exact(cols, group, bits, code, zero):
    """Groups longer than INT32_SPAN (65,536) columns are summed in int32 pieces added in int64, at extreme codes:
    8-bit 255 - 0 against activation codes 127 (the int16 loop; the group sum exceeds 2**31) and 4-bit 0 - 15 (the
    narrow loop, whose zero-point correction z * S is then largest); the result still equals numpy's."""
    ng = -(-cols // group)
    qt = random_qt(np.random.default_rng(4), 5, cols, bits, group, False, "plain")
    qt = dataclasses.replace(qt, codes=np.full((5, cols), code, np.uint8), zeros=np.full((5, ng), zero, np.uint8))
    x = np.ones((3, cols), np.float32)
    x[1] = -1
    spec = ActivationSpec(8)
    t = kernel.PackedTensor.from_quantized(qt)
    qx, _ = quantize_activations(x, spec)
    assert bits < 8 or 127 * 255 * group > 2**31
    got = packed_int_linear(x, t, spec)
    assert bits_equal(got, int_linear(x, qt, spec))
    assert bits_equal(kernel.code_products(qx, t), kernel.code_products(qx, t, portable=True))


def test_empty_inputs_and_empty_row_ranges():
    qt = random_qt(np.random.default_rng(9), 5, 30, 4, 7, False, "plain")
    t = kernel.PackedTensor.from_quantized(qt)
    x = np.zeros((0, 30), np.float32)
    assert bits_equal(packed_int_linear(x, t, ActivationSpec(8)), int_linear(x, qt, ActivationSpec(8)))
    assert kernel.code_products(np.zeros((3, 30), np.int8), t.row_slice(2, 2)).shape == (3, 0)


def test_code_products_checks_its_inputs():
    qt = random_qt(np.random.default_rng(5), 4, 10, 4, 4, True, "plain")
    t = kernel.PackedTensor.from_quantized(qt)
    with pytest.raises(ValueError, match="int8"):
        kernel.code_products(np.zeros((2, 10), np.int16), t)
    with pytest.raises(ValueError, match=r"\(M, 10\)"):
        kernel.code_products(np.zeros((2, 9), np.int8), t)
    with pytest.raises(ValueError, match="scales holds"):
        kernel.code_products(np.zeros((2, 10), np.int8), dataclasses.replace(t, scales=t.scales[:2]))
    dec = kernel.PackedTensor.from_quantized(random_qt(np.random.default_rng(6), 4, 10, 4, 4, True, "decomposed"))
    out = np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="without its offset"):
        kernel._wq_kernel.matmul_codes(out, np.zeros((2, 10), np.int8), 2, dec._c_args(), 1, False)


def test_unpacked_is_the_inverse_of_packing():
    for variant in ("plain", "decomposed", "rotated"):
        qt = random_qt(np.random.default_rng(7), 9, 48, 3, 20, False, variant)
        back = kernel.PackedTensor.from_quantized(qt).quantized()
        for field in ("codes", "scales", "zeros", "offset", "outlier_columns", "outliers"):
            a, b = getattr(qt, field), getattr(back, field)
            assert (a is None and b is None) or np.array_equal(a, b), (variant, field)
        assert (back.shape, back.bits, back.group_size, back.rotation) == (qt.shape, 3, 20, qt.rotation)


# ---- whole models: identical outputs with and without the kernel ----


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Act-quant files of a tiny random Whisper and Wav2Vec2 through wavq-convert: W8A8 in groups of 16; W4A4
    rotated (where that is better) in groups of 24, which do not divide the widths, with a decomposed embedding."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from click.testing import CliRunner
    from tiny_models import tiny_wav2vec2, tiny_whisper

    from wavq.converter.cli import main

    d = tmp_path_factory.mktemp("act-models")
    sources = {"whisper": tiny_whisper(d / "whisper"), "wav2vec2": tiny_wav2vec2(d / "wav2vec2")}
    recipes = {
        "w8a8": ["--bits", "8", "--act-bits", "8", "--group-size", "16"],
        "w4a4": ["--bits", "4", "--act-bits", "4", "--group-size", "24", "--rotate", "--embedding-outliers", "3"],
    }
    files = {}
    for arch, source in sources.items():
        for name, args in recipes.items():
            out = str(d / f"{arch}-{name}.wq")
            r = CliRunner().invoke(main, [source, "-o", out, "-q", *args])
            assert r.exit_code == 0, r.output
            files[arch, name] = out
    return files


def _outputs(path: str, arch: str, **load_options) -> list[np.ndarray]:
    from wavq.runtime import load

    model = load(path, **load_options)
    rng = np.random.default_rng(8)
    audio = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
    if arch == "wav2vec2":
        return [model.logits(*model.preprocess([audio]))]
    features = model.encode(model.log_mel(audio))
    cross = model.cross_kv(features)
    state = model.new_state(batch=2)
    prompt = np.array([[model.sot, model.no_timestamps, 400], [model.sot, model.no_timestamps, 401]])
    steps = [model.decoder_step(prompt, state, cross)]
    steps += [model.decoder_step(np.array([[13], [11]]), state, cross) for _ in range(2)]
    return [features, *steps]


@pytest.mark.parametrize("arch", ["whisper", "wav2vec2"])
@pytest.mark.parametrize("recipe", ["w8a8", "w4a4"])
def test_act_quant_model_is_identical_with_and_without_the_kernel(converted, monkeypatch, arch, recipe):
    path = converted[arch, recipe]
    calls = []
    compiled = kernel.code_products

    def counted(*args, **kwargs):
        calls.append(1)
        return compiled(*args, **kwargs)

    monkeypatch.setattr(kernel, "code_products", counted)
    monkeypatch.delenv(kernel.DISABLE_ENV, raising=False)
    with_kernel = _outputs(path, arch)
    assert calls  # the integer products did run compiled
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    n = len(calls)
    without = _outputs(path, arch)
    assert len(calls) == n  # and here they did not
    for a, b in zip(with_kernel, without):
        assert bits_equal(a, b)


@pytest.mark.parametrize("no_kernel", ["0", "1"])
def test_a_budget_never_holds_float_copies_of_integer_path_weights(converted, monkeypatch, no_kernel):
    # Their products multiply codes: keeping one costs its unpacked codes (a byte per weight) in numpy, nothing
    # with the kernel (packed views of the map), and no budget makes the runtime dequantize it.
    from wavq.runtime import load
    from wavq.runtime.weights import Weights

    monkeypatch.setenv(kernel.DISABLE_ENV, no_kernel)
    path = converted["whisper", "w8a8"]
    w = load(path).weights
    integer = {n for n in w.names() if w.activation(n) is not None}
    assert integer
    for n in integer:
        assert w.kept_bytes(n) == (0 if kernel.available() else int(np.prod(w.shape(n))))
    dequantized: list[str] = []
    getitem = Weights.__getitem__

    def recorded(self, name):
        dequantized.append(name)
        return getitem(self, name)

    monkeypatch.setattr(Weights, "__getitem__", recorded)
    budgets = ({}, {"max_memory": sum(w.kept_bytes(n) for n in integer)}, {"cache": True})
    runs = [_outputs(path, "whisper", **b) for b in budgets]
    assert not integer & set(dequantized)
    for other in runs[1:]:
        assert all(bits_equal(a, b) for a, b in zip(runs[0], other))
