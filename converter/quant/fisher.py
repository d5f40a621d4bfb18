"""Diagonal Fisher information of the model's own loss, for comparing quantization error across tensors.

Layer-local errors (|dW x|^2 per layer) live in different units from layer to layer and ignore how an error
propagates to the output, so they cannot rank tensors of different layers against each other: on tiny.en they
sent most layers to 2 bits (or starved the tied embedding) and the model fell apart. The Fisher F = E[g^2] of the
per-utterance loss gives every weight the same unit: to second order, quantizing W to W + dW raises the expected
loss by 1/2 sum(F * dW^2). Losses (from the architecture runners): Whisper's teacher-forced token cross-entropy,
CTC models' frame cross-entropy against the float model's own best path. A tied embedding's gradient includes
both its uses (input lookup and output projection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch


def diagonal_fisher(
    weights: dict[str, torch.nn.Parameter], losses: Iterable[Callable[[], torch.Tensor]], progress: bool = False
) -> dict[str, np.ndarray]:
    """Mean squared gradient of each weight over the per-sample losses (one backward pass each)."""
    unique = {}
    for name, p in weights.items():
        unique.setdefault(id(p), (name, p))
    acc = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in unique.values()}
    for _, p in unique.values():
        p.requires_grad_(True)
    n = 0
    try:
        with torch.enable_grad():
            it = losses
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(losses, desc="measuring sensitivity", unit="utt", leave=False)
            for loss_fn in it:
                for _, p in unique.values():
                    p.grad = None
                loss_fn().backward()
                for name, p in unique.values():
                    if p.grad is not None:
                        acc[name] += p.grad.detach().float() ** 2
                n += 1
    finally:
        for _, p in unique.values():
            p.grad = None
            p.requires_grad_(False)
    by_param = {id(p): (acc[name] / max(n, 1)).numpy() for name, p in unique.values()}
    return {name: by_param[id(p)] for name, p in weights.items()}


def fisher_error(w: np.ndarray, deq: np.ndarray, fisher: np.ndarray) -> float:
    """Expected loss increase (up to the factor 1/2) of replacing w by deq."""
    d = (np.asarray(w, dtype=np.float32) - np.asarray(deq, dtype=np.float32).reshape(w.shape)).astype(np.float64)
    return float((fisher.astype(np.float64) * d * d).sum())
