"""Mixed precision: the bits-per-weight measure, the allocation, and --target-bpw / --keep through the pipeline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("torch")

from wavq.converter.quant.mixed import (  # noqa: E402
    AllocationError,
    Candidate,
    allocate_bits,
    bits_per_weight,
    make_candidate,
    storage_bits,
)
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
        best = min(
            sum(c.error[b] for c, b in zip(cands, combo))
            for combo in itertools.product(range(2, 9), repeat=4)
            if sum(c.cost[b] for c, b in zip(cands, combo)) <= target * numel
        )
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
    out, info = quantize_tensors(
        _NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.6, symmetric=symmetric, group_size=32)
    )
    qts = [v for v in out.values() if isinstance(v, QuantizedTensor)]
    assert len(qts) == 6 and list(out) == [t.name for t in tensors]
    bpw = bits_per_weight(qts)
    assert bpw <= 3.6 and bpw > 3.3
    assert info["bits_per_weight"] == pytest.approx(bpw, rel=1e-5)
    assert info["tensor_bits"] == {n: v.bits for n, v in out.items() if isinstance(v, QuantizedTensor)}
    assert len(set(info["tensor_bits"].values())) > 1


def test_keep_pins_and_float_keep():
    tensors = _tensors()
    recipe = Recipe(
        method="rtn",
        bits=None,
        target_bpw=3.5,
        group_size=32,
        keep=(("layers.1.*", 8), ("conv.*", 16), ("layers.0.*", 6), ("layers.0.weight", 2)),
    )
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


def _grouped_candidates(n: int, seed: int) -> list[Candidate]:
    """Candidates whose options are (bits, group size): finer groups cut the error, at the scales' cost."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (int(rng.integers(8, 64)) * 4, int(rng.integers(2, 8)) * 64)
        sens = float(rng.lognormal(0, 2))
        err = {
            (b, g): sens * 4.0 ** (-b) * (g / 128) ** 0.5 * float(rng.uniform(0.8, 1.2))
            for b in range(2, 9)
            for g in (32, 64, 128)
        }
        out.append(make_candidate(f"t{i}", shape, 128, False, err))
    return out


def test_group_size_options_cost_their_scales_and_zero_points():
    c = make_candidate("t", (64, 256), 128, False, {(3, 64): 1.0, (3, 128): 2.0, 4: 0.5})
    assert c.cost[(3, 64)] == storage_bits((64, 256), 3, 64, False) == 3 * 64 * 256 + (16 + 3) * 64 * 4
    assert c.cost[(3, 128)] == storage_bits((64, 256), 3, 128, False)
    assert c.cost[4] == storage_bits((64, 256), 4, 128, False)  # a bare width uses the default group size


@pytest.mark.parametrize("target", [2.7, 3.3, 4.2])
def test_allocation_over_bits_and_group_sizes(target):
    cands = _grouped_candidates(30, seed=int(target * 10))
    chosen = allocate_bits(cands, target)
    numel = sum(c.numel for c in cands)
    spent = sum(c.cost[chosen[c.name]] for c in cands)
    assert target * numel - 0.02 * numel < spent <= target * numel  # the budget is spent, not exceeded
    assert all(isinstance(o, tuple) and o in c.cost for c in cands for o in [chosen[c.name]])
    # more options can only help: no worse than choosing bits alone at group 128
    err = sum(c.error[chosen[c.name]] for c in cands)
    only128 = [
        Candidate(
            c.name,
            c.numel,
            {o: v for o, v in c.cost.items() if o[1] == 128},
            {o: v for o, v in c.error.items() if o[1] == 128},
        )
        for c in cands
    ]
    bits_only = allocate_bits(only128, target)
    assert err <= sum(c.error[bits_only[c.name]] for c in only128) * (1 + 1e-9)
    assert len({chosen[c.name][1] for c in cands}) > 1  # it does use the group-size choice


def test_allocation_over_groups_is_near_optimal_on_small_problems():
    for seed in range(3):
        cands = _grouped_candidates(3, seed)
        numel = sum(c.numel for c in cands)
        chosen = allocate_bits(cands, 3.4)
        got = sum(c.error[chosen[c.name]] for c in cands)
        opts = list(cands[0].cost)
        best = min(
            sum(c.error[o] for c, o in zip(cands, combo))
            for combo in itertools.product(opts, repeat=3)
            if sum(c.cost[o] for c, o in zip(cands, combo)) <= 3.4 * numel
        )
        assert got <= 1.25 * best


def test_pipeline_chooses_group_sizes_with_mixed_groups(tmp_path):
    """--mixed-groups: each tensor's group size comes from the allocation, is stored in the tensor entry and the
    metadata, and the file meets the target as `wavq info` counts it."""
    from wavq.formats import WqFile, write_wq
    from wavq.formats.codecs import resolve_group_size, view_2d_shape
    from wavq.runtime.info import summarize

    tensors = _tensors()
    recipe = Recipe(
        method="rtn", bits=None, target_bpw=3.4, group_size=128, mixed_group_sizes=(32, 64), keep=(("conv.*", 8),)
    )
    out, info = quantize_tensors(_NoModel(), tensors, recipe)
    qts = {n: v for n, v in out.items() if isinstance(v, QuantizedTensor)}
    groups = info["tensor_group_size"]
    assert set(groups) == set(qts) == set(info["tensor_bits"])
    for name, qt in qts.items():
        assert qt.bits == info["tensor_bits"][name]
        assert qt.group_size == resolve_group_size(view_2d_shape(qt.shape)[1], groups[name])
    assert groups["conv.weight"] == 128 and qts["conv.weight"].bits == 8  # pinned: the default group size
    assert {32, 64} & set(groups.values())
    assert 3.2 < bits_per_weight(qts.values()) <= 3.4
    write_wq(tmp_path / "m.wq", {"architecture": "test", "quantization": info}, out)
    with WqFile(tmp_path / "m.wq") as f:
        assert summarize(f).quantized_bpw == pytest.approx(info["bits_per_weight"], rel=1e-5)
    # the menu with group 128 alone is a special case: the same files as without mixed_group_sizes
    plain = quantize_tensors(_NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.4, group_size=128))
    again = quantize_tensors(
        _NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.4, group_size=128, mixed_group_sizes=(128,))
    )
    assert plain.info == again.info and "tensor_group_size" not in plain.info


def test_mixed_groups_need_a_target():
    with pytest.raises(ValueError, match="needs a target"):
        Recipe(bits=3, mixed_group_sizes=(64,))
    with pytest.raises(ValueError, match=">= 0"):
        Recipe(bits=None, target_bpw=3.3, mixed_group_sizes=(-1,))
    assert Recipe(bits=None, target_bpw=3.3, mixed_group_sizes=(64, 128, 64)).mixed_group_sizes == (64,)


def test_min_bits_keeps_free_tensors_off_the_narrow_widths():
    """--min-bits: at a target that sends some tensors to 2 bits, no free tensor goes below the floor, the budget
    still holds, and a --keep pin below the floor is honoured (pins are exempt)."""
    tensors = _tensors()
    _, plain = quantize_tensors(_NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.9, group_size=32))
    assert min(plain["tensor_bits"].values()) == 2  # the floor below has something to change
    recipe = Recipe(method="rtn", bits=None, target_bpw=3.9, group_size=32, mixed_min_bits=3, keep=(("layers.3.*", 2),))
    out, info = quantize_tensors(_NoModel(), tensors, recipe)
    bits = info["tensor_bits"]
    assert bits["layers.3.weight"] == 2
    assert min(b for n, b in bits.items() if n != "layers.3.weight") >= 3
    assert bits_per_weight(v for v in out.values() if isinstance(v, QuantizedTensor)) <= 3.9
    # a floor the target cannot afford is the same clear error as an infeasible target
    with pytest.raises(ConversionError, match="below the smallest"):
        quantize_tensors(
            _NoModel(), tensors, Recipe(method="rtn", bits=None, target_bpw=3.9, group_size=32, mixed_min_bits=5)
        )


def test_min_bits_is_validated_and_recorded():
    with pytest.raises(ValueError, match="needs a target"):
        Recipe(bits=3, mixed_min_bits=3)
    with pytest.raises(ValueError, match="2..8"):
        Recipe(bits=None, target_bpw=3.3, mixed_min_bits=9)
    assert Recipe(bits=None, target_bpw=3.3, mixed_min_bits=3).to_meta()["mixed_min_bits"] == 3
    assert "mixed_min_bits" not in Recipe(bits=None, target_bpw=3.3).to_meta()


def test_blockwise_pair_search_matches_the_full_matrix(monkeypatch):
    """The exchange step's pair search runs in row blocks (bounded memory); it must pick exactly the pair the
    full (changes x changes) matrix would, ties included (first in row-major order)."""
    from wavq.converter.quant import mixed

    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 60))
        dc = rng.integers(-50, 50, n).astype(np.float64)
        de = rng.integers(-5, 5, n).astype(np.float64)  # small integers: many ties
        de[rng.random(n) < 0.1] = np.inf  # options a tensor does not have
        who = rng.integers(0, max(2, n // 3), n)
        who[-1] = -1  # "no change"
        left = float(rng.integers(0, 40))
        full_e = de[:, None] + de[None, :]
        ok = (dc[:, None] + dc[None, :] <= left) & (who[:, None] != who[None, :]) & np.isfinite(full_e)
        full_e = np.where(ok, full_e, np.inf)
        k = int(np.argmin(full_e))
        monkeypatch.setattr(mixed, "EXCHANGE_BLOCK", int(rng.integers(1, 9)))
        gain, pair = mixed._best_pair(dc, de, who, left)
        if np.isfinite(full_e.flat[k]):
            assert (gain, pair) == (full_e.flat[k], np.unravel_index(k, full_e.shape))
        else:
            assert gain == np.inf
