"""Mixed precision: the bits-per-weight measure, the allocation, and --target-bpw / --keep through the pipeline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("torch")

from wavq.converter.quant.mixed import (AllocationError, Candidate, allocate_bits, bits_per_weight,  # noqa: E402
                                        make_candidate, storage_bits)
from wavq.converter.quant.pipeline import quantize_tensors  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.registry import ConversionError, ExportTensor  # noqa: E402
from wavq.formats import QuantizedTensor, quantize  # noqa: E402


def test_storage_bits_counts_codes_scales_and_zero_points():
    # 64 x 100 at 3 bits, groups of 32 -> 4 groups per row (last one short): 256 scales
    assert storage_bits((64, 100), 3, 32, True) == 3 * 6400 + 16 * 256
    assert storage_bits((64, 100), 3, 32, False) == 3 * 6400 + 16 * 256 + 3 * 256
    assert storage_bits((64, 100), 4, 0, True) == 4 * 6400 + 16 * 64  # per channel
    assert storage_bits((8, 4, 3), 2, 128, True) == 2 * 96 + 16 * 8  # conv: 2-D view (8, 12), one group per row
    qts = [quantize(np.ones((64, 100), np.float32), 3, 32, False)[0], quantize(np.ones((8, 4, 3), np.float32), 2)[0]]
    assert bits_per_weight(qts) == pytest.approx((storage_bits((64, 100), 3, 32, False) + 2 * 96 + 16 * 8) / 6496)


def _candidates(n: int, seed: int) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (int(rng.integers(8, 64)) * 4, int(rng.integers(2, 12)) * 32)
        sens = float(rng.lognormal(0, 2))
        # error roughly quarters per extra bit, with some noise (not always convex)
        err = {b: sens * 4.0 ** (-b) * float(rng.uniform(0.7, 1.3)) for b in range(2, 9)}
        out.append(make_candidate(f"t{i}", shape, 32, True, err))
    return out


@pytest.mark.parametrize("target", [2.6, 3.0, 3.7, 4.5, 7.9])
def test_allocation_meets_the_target_closely(target):
    cands = _candidates(40, seed=int(target * 10))
    bits = allocate_bits(cands, target)
    numel = sum(c.numel for c in cands)
    spent = sum(c.cost[bits[c.name]] for c in cands)
    assert spent <= target * numel
    # nothing left that could buy another upgrade of any tensor
    left = target * numel - spent
    assert all(c.cost[b] - c.cost[bits[c.name]] > left for c in cands for b in c.cost if b > bits[c.name])
    # and it is no worse than the best uniform width that fits
    err = sum(c.error[bits[c.name]] for c in cands)
    for b in range(2, 9):
        if sum(c.cost[b] for c in cands) <= target * numel:
            assert err <= sum(c.error[b] for c in cands) + 1e-12


def test_allocation_is_near_optimal_on_small_problems():
    for seed in range(5):
        cands = _candidates(4, seed)
        numel = sum(c.numel for c in cands)
        target = 3.4
        bits = allocate_bits(cands, target)
        got = sum(c.error[bits[c.name]] for c in cands)
        best = min(sum(c.error[b] for c, b in zip(cands, combo))
                   for combo in itertools.product(range(2, 9), repeat=4)
                   if sum(c.cost[b] for c, b in zip(cands, combo)) <= target * numel)
        assert got <= 1.25 * best


def test_allocation_rejects_impossible_targets():
    cands = _candidates(5, 0)
    with pytest.raises(AllocationError, match="below the smallest"):
        allocate_bits(cands, 2.0)  # 2-bit codes alone are 2 bits per weight; scales come on top


def test_allocation_is_deterministic():
    assert allocate_bits(_candidates(30, 7), 3.3) == allocate_bits(_candidates(30, 7), 3.3)


class _NoModel:
    architecture = "test"
    model = None


def _tensors(seed: int = 0) -> list[ExportTensor]:
    rng = np.random.default_rng(seed)
    out = []
    for i, (rows, cols) in enumerate([(64, 96), (128, 64), (96, 256), (32, 40), (256, 128)]):
        w = rng.standard_normal((rows, cols)).astype(np.float32) * (0.1 * (i + 1))
        out.append(ExportTensor(f"layers.{i}.weight", w, "linear"))
        out.append(ExportTensor(f"layers.{i}.bias", np.zeros(rows, np.float32), "bias"))
    out.append(ExportTensor("conv.weight", rng.standard_normal((16, 8, 3)).astype(np.float32), "conv"))
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_pipeline_target_bpw_without_calibration(symmetric):
    tensors = _tensors()
    out, info = quantize_tensors(_NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.6,
                                                              symmetric=symmetric, group_size=32))
    qts = [v for v in out.values() if isinstance(v, QuantizedTensor)]
    assert len(qts) == 6 and list(out) == [t.name for t in tensors]
    bpw = bits_per_weight(qts)
    assert bpw <= 3.6 and bpw > 3.3
    assert info["bits_per_weight"] == pytest.approx(bpw, rel=1e-5)
    assert info["tensor_bits"] == {n: v.bits for n, v in out.items() if isinstance(v, QuantizedTensor)}
    assert len(set(info["tensor_bits"].values())) > 1


def test_keep_pins_and_float_keep():
    tensors = _tensors()
    recipe = Recipe(method="rtn", bits=None, target_bpw=3.5, group_size=32,
                    keep=(("layers.1.*", 8), ("conv.*", 16), ("layers.0.*", 6), ("layers.0.weight", 2)))
    out, info = quantize_tensors(_NoModel(), tensors, recipe)
    assert out["layers.1.weight"].bits == 8
    assert out["layers.0.weight"].bits == 2  # the last matching pattern wins
    assert isinstance(out["conv.weight"], np.ndarray) and info["kept_float"] == ["conv.weight"]
    qts = [v for v in out.values() if isinstance(v, QuantizedTensor)]
    assert bits_per_weight(qts) <= 3.5  # pinned tensors count towards the target; float ones do not


def test_keep_typo_and_infeasible_target_are_clear_errors():
    with pytest.raises(ConversionError, match="matches no quantizable tensor"):
        quantize_tensors(_NoModel(), _tensors(), Recipe(bits=4, keep=(("encoder.*", 8),)))
    with pytest.raises(ConversionError, match="below the smallest"):
        quantize_tensors(_NoModel(), _tensors(), Recipe(bits=None, target_bpw=2.1, group_size=16))
    with pytest.raises(ConversionError, match="needs calibration audio"):
        quantize_tensors(_NoModel(), _tensors(), Recipe(method="gptq", bits=4))


def test_diagonal_fisher_is_the_mean_squared_per_sample_gradient():
    import torch

    from wavq.converter.quant.fisher import diagonal_fisher, fisher_error

    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    lin.requires_grad_(False)
    xs, ys = torch.randn(4, 5), torch.randn(4, 3)
    losses = [lambda x=x, y=y: ((lin(x) - y) ** 2).sum() for x, y in zip(xs, ys)]
    f = diagonal_fisher({"w": lin.weight}, losses)["w"]
    grads = [2 * torch.outer(lin(x) - y, x) for x, y in zip(xs, ys)]  # d/dW |Wx + b - y|^2
    np.testing.assert_allclose(f, torch.stack([g**2 for g in grads]).mean(0).numpy(), rtol=1e-5)
    assert not lin.weight.requires_grad and lin.weight.grad is None  # left as found
    w = lin.weight.numpy()
    assert fisher_error(w, w, f) == 0.0 and fisher_error(w, w + 0.1, f) == pytest.approx(0.01 * f.sum(), rel=1e-5)
