"""Shared pieces of the quantization tests: synthetic activations, and loading quantize_tensors' output into
a torch model (dequantized weights, folded float tensors, input scales as the runtime applies them)."""

from __future__ import annotations

import numpy as np
import torch

from wavq.formats import QuantizedTensor, dequantize
from wavq.formats.codecs import CodebookTensor, dequantize_codebook


def correlated_inputs(n: int, cols: int, seed: int = 0, outliers: int = 4) -> np.ndarray:
    """(n, cols) float32 activations with correlated channels and a few large-magnitude ones, like real
    transformer inputs (what makes GPTQ and AWQ beat round-to-nearest)."""
    rng = np.random.default_rng(seed)
    k = max(2, cols // 4)
    x = rng.standard_normal((n, k)) @ rng.standard_normal((k, cols)) / np.sqrt(k)
    x += 0.3 * rng.standard_normal((n, cols))
    x[:, rng.choice(cols, size=outliers, replace=False)] *= 8.0
    return x.astype(np.float32)


def output_error(w: np.ndarray, deq: np.ndarray, x: np.ndarray) -> float:
    """sum over rows of |(W - Q) x|^2."""
    d = (w.reshape(w.shape[0], -1) - deq.reshape(w.shape[0], -1)).astype(np.float64)
    return float(((x.astype(np.float64) @ d.T) ** 2).sum())


def apply_to_model(model: torch.nn.Module, tensors: dict) -> None:
    """Load quantize_tensors' output into `model` in place: weights dequantized, float arrays as given,
    `<prefix>.input_scale` as a pre-hook dividing the input like runtime.ops.linear."""
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, value in tensors.items():
            if name.endswith(".input_scale"):
                s = torch.from_numpy(np.asarray(value, dtype=np.float32))
                modules[name.removesuffix(".input_scale")].register_forward_pre_hook(
                    lambda m, args, s=s: (args[0] / s,) + tuple(args[1:])
                )
                continue
            if isinstance(value, CodebookTensor):
                arr = dequantize_codebook(value)
            else:
                arr = dequantize(value) if isinstance(value, QuantizedTensor) else np.asarray(value, dtype=np.float32)
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)))


def same_bytes(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, QuantizedTensor):
            if not isinstance(y, QuantizedTensor) or x.shape != y.shape or x.bits != y.bits:
                return False
            parts = [(x.codes, y.codes), (x.scales, y.scales)]
            if x.zeros is not None or y.zeros is not None:
                if x.zeros is None or y.zeros is None:
                    return False
                parts.append((x.zeros, y.zeros))
            if any(p.tobytes() != q.tobytes() for p, q in parts):
                return False
        elif np.asarray(x).tobytes() != np.asarray(y).tobytes():
            return False
    return True


def run_awq_with_random_scales(cal, monkeypatch, seed: int):
    """Run the AWQ stage over `cal`'s blocks with random log-normal scales instead of searched ones and no
    rounding, so only the folding is exercised. Returns the SequentialQuantizer (modified, input_scales)."""
    from wavq.converter.quant import sequential
    from wavq.converter.quant.recipe import parse_method

    rng = np.random.default_rng(seed)

    def random_scales(weights, specs, stats):
        s = torch.from_numpy(np.exp(rng.standard_normal(stats.cols) * 0.7)).half().float()
        return s, {"alpha": 0.5, "error_before": 1.0, "error_after": 0.5}

    monkeypatch.setattr(sequential, "search_scales", random_scales)
    monkeypatch.setattr(sequential.SequentialQuantizer, "_quantize_target", lambda self, t, st: None)
    q = sequential.SequentialQuantizer(
        parse_method("awq"), {n: None for n in cal.targets}, damp=0.01, act_order=False, true_sequential=True, seed=0
    )
    q.run(cal.blocks, cal.batches)
    return q
