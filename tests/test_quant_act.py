"""converter/quant/act.py (static activation ranges, torch fake quantization) and smooth.py (SmoothQuant
migration folded like AWQ's scales), on small random torch modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavq.converter.quant.act import ActRange, fake_quantize, static_spec
from wavq.converter.quant.awq import norm_fold, rows_fold
from wavq.converter.quant.sequential import ScaleSite
from wavq.converter.quant.smooth import smooth_scales, smooth_site
from wavq.formats.activation import ActivationSpec
from wavq.runtime.intlinear import quantize_activations


def _outlier_inputs(rows: int = 400, cols: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x[:, 3] *= 40  # one channel with a much larger range, as LayerNorm outputs of speech models have
    x[7, 5] = 500.0  # and one rare spike
    return x


def test_histogram_does_not_depend_on_batching():
    x = _outlier_inputs()
    whole, pieces = ActRange(), ActRange()
    whole.add_batch(x)
    for part in (x[:3] * 1e-3, x[:100], x[100:]):  # the range doubles many times between batches
        pieces.add_batch(part)
    pieces_only = ActRange()
    pieces_only.add_batch(x[:3] * 1e-3)
    assert pieces_only.range < whole.range
    assert pieces.range == whole.range and pieces.absmax == whole.absmax == 500.0
    whole.add_batch(x[:3] * 1e-3)  # the same values as `pieces` holds, in another order
    np.testing.assert_array_equal(pieces.counts, whole.counts)
    assert pieces.n == whole.n == x.numel() + 3 * 16


def _quant_mse(x: np.ndarray, clip: float, bits: int) -> float:
    spec = ActivationSpec.static_from_range(bits, clip)
    q, s = quantize_activations(x.reshape(1, -1), spec)
    return float(np.mean((q.astype(np.float64) * s[0] - x.reshape(-1)) ** 2))


def test_clip_choices():
    x = _outlier_inputs(4000).numpy()  # 64,000 values: the 0.01 % percentile leaves 6 out
    r = ActRange()
    r.add_batch(x)
    assert r.choose_clip("absmax", 4) == 500.0
    p = r.choose_clip("percentile", 4)
    assert 0 < p < 500.0 and np.mean(np.abs(x) <= p) >= 0.9999 - 1 / x.size
    m4 = r.choose_clip("mse", 4)
    assert m4 < 500.0
    # the histogram's choice is, on the data itself, better than not clipping and not far from the best clip
    grid = np.linspace(1, 500, 500)
    best = min(_quant_mse(x, c, 4) for c in grid)
    assert _quant_mse(x, m4, 4) < _quant_mse(x, 500.0, 4) and _quant_mse(x, m4, 4) <= 1.1 * best
    assert r.choose_clip("mse", 8) >= m4  # more levels: less reason to clip
    with pytest.raises(ValueError, match="clip method"):
        r.choose_clip("entropy", 8)
    spec = static_spec(r, 8, "mse")
    assert spec.bits == 8 and spec.scale * 127 >= r.choose_clip("mse", 8)
    empty = ActRange()
    empty.add_batch(np.zeros((2, 3)))
    assert empty.absmax == 0 and static_spec(empty, 8, "absmax").scale > 0
    with pytest.raises(ValueError, match="non-finite"):
        empty.add_batch(np.array([np.inf]))


@pytest.mark.parametrize("spec", [ActivationSpec(8), ActivationSpec(4), ActivationSpec(6, 0.125)])
def test_fake_quantize_is_the_runtime_rounding(spec):
    x = _outlier_inputs(50).numpy() * 0.1
    x[0] = 0
    x[1, :4] = [0.5, 1.5, -2.5, 0.25]  # halfway cases under the static scale 0.125: ties to even
    got = fake_quantize(torch.from_numpy(x), spec).numpy()
    q, s = quantize_activations(x, spec)
    want = q.astype(np.float32) * s[:, None]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _linear(cols_in: int, cols_out: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(cols_in, cols_out)


@torch.no_grad()
def test_smoothing_folded_into_a_layer_norm_keeps_the_function():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    norm.weight.copy_(torch.rand(16) + 0.5)
    norm.bias.copy_(torch.randn(16) * 0.1)
    norm.weight[3] = 30.0  # the outlier channel comes out of the norm's gain
    q, k, v = (_linear(16, 8, i) for i in range(3))
    x = torch.randn(64, 16)
    before = [m(norm(x)) for m in (q, k, v)]
    h = norm(x)
    site = ScaleSite(("q.weight", "k.weight", "v.weight"), norm_fold(norm, "ln"))
    out = smooth_site(site, {"q.weight": q, "k.weight": k, "v.weight": v}, h.abs().amax(dim=0), 0.5)
    assert out.changed == ["ln.weight", "ln.bias"] and out.input_scales == {}
    for m, b in zip((q, k, v), before):
        torch.testing.assert_close(m(norm(x)), b, rtol=1e-5, atol=1e-5)
    # alpha = 0.5 balances the channel ranges of the input and the weights (up to float16 scales)
    xs = norm(x).abs().amax(dim=0)
    ws = torch.stack([m.weight.abs().amax(dim=0) for m in (q, k, v)]).amax(dim=0)
    torch.testing.assert_close(xs, ws, rtol=2e-3, atol=1e-6)
    assert out.scales[3] > 2 * out.scales.median()


@torch.no_grad()
def test_smoothing_folded_into_previous_rows_and_stored_otherwise():
    v, o = _linear(16, 16, 1), _linear(16, 8, 2)
    x = _outlier_inputs(64)
    before = o(v(x))
    out = smooth_site(ScaleSite(("o.weight",), rows_fold(v, "v")), {"o.weight": o}, v(x).abs().amax(dim=0), 0.8)
    assert out.changed == ["v.weight", "v.bias"]
    torch.testing.assert_close(o(v(x)), before, rtol=1e-5, atol=1e-4)

    fc2 = _linear(16, 8, 3)
    before = fc2(x)
    out = smooth_site(ScaleSite(("fc2.weight",), None), {"fc2.weight": fc2}, x.abs().amax(dim=0), 0.5)
    assert list(out.input_scales) == ["fc2.input_scale"] and out.changed == []
    np.testing.assert_array_equal(out.input_scales["fc2.input_scale"], out.scales.numpy())
    torch.testing.assert_close(fc2(x), before, rtol=1e-5, atol=1e-4)  # through the input_scale hook


@torch.no_grad()
def test_smoothing_cuts_the_activation_quantization_error():
    """The purpose: with an outlier channel, 4-bit per-token activations lose less after migration."""
    x = _outlier_inputs(256)
    lin = _linear(16, 8, 4)
    exact = lin(x)
    spec = ActivationSpec(4)
    plain = (torch.nn.functional.linear(fake_quantize(x, spec), lin.weight, lin.bias) - exact).pow(2).mean()
    s = smooth_scales(x.abs().amax(dim=0), [lin.weight], 0.5)
    smoothed = torch.nn.functional.linear(fake_quantize(x / s, spec), lin.weight * s, lin.bias)
    assert (smoothed - exact).pow(2).mean() < 0.5 * plain


def test_smooth_scales_edge_cases():
    w = torch.randn(4, 5)
    a = torch.tensor([1.0, 0.0, 4.0, 9.0, 1.0])
    w[:, 4] = 0
    s = smooth_scales(a, [w], 0.5)
    assert s[1] == 1 and s[4] == 1  # a silent channel, a zero weight column: left alone
    assert s.dtype == torch.float32 and torch.equal(s, s.to(torch.float16).to(torch.float32))
    torch.testing.assert_close(smooth_scales(a, [w], 1.0)[[0, 2, 3]], a[[0, 2, 3]], rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(a, [w], 1.5)


@torch.no_grad()
def test_observe_inputs_sees_what_the_codes_multiply():
    from wavq.converter.quant.act import observe_inputs
    from wavq.converter.quant.awq import add_input_scale
    from wavq.formats.codecs import rotate_columns

    a, b = _linear(16, 8, 5), _linear(16, 8, 6)
    s = torch.full((16,), 4.0)
    add_input_scale(b, s)  # registered before observing: the observer sees x / s
    x = _outlier_inputs(32)
    with observe_inputs({"a.weight": a, "b.weight": b}, {"a.weight": 8}) as ranges:
        a(x[:20])
        a(x[20:])
        b(x)
    a(x * 100)  # after the block: not observed
    assert ranges["a.weight"].n == ranges["b.weight"].n == x.numel()
    assert ranges["a.weight"].absmax == pytest.approx(float(np.abs(rotate_columns(x.numpy(), 8)).max()))
    assert ranges["b.weight"].absmax == pytest.approx(float(x.abs().max()) / 4)
    assert not a._forward_pre_hooks and len(b._forward_pre_hooks) == 1
