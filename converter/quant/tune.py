"""Distillation tuning: after rounding, fit the quantized model's continuous parameters to the float model.

The codes stay as GPTQ / round-to-nearest chose them. What moves: every group scale (as a log-multiplier, so a
scale keeps its sign and never crosses zero), the offset row and float columns of decomposed tensors, and the
float tensors the file stores anyway (LayerNorm weights and biases, linear and convolution biases). The loss is
the KL divergence from the float model's output distribution to the quantized model's, over every calibration
position (Whisper: teacher-forced decoder tokens; CTC models: frames), which is what decoding is sensitive to;
block-wise objectives (GPTQ's, AWQ's) cannot see how errors compound through the network. This is the end-to-end
step of EfficientQAT (Chen et al., 2024), restricted to what a .wq stores as floats.

The teacher is summarised by its TEACHER_TOP_K most likely outputs at each position plus the mass of the rest;
the KL is computed exactly on that partition (a lower bound of the full KL that is tight when the tail is small,
and the student's own normalisation still penalises mass leaking to any token).
Measured effect: benchmarks/results/quant_table_whisper-base.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ...formats import QuantizedTensor
from .recipe import DEFAULT_TUNE_EPOCHS
from .rotate import unrotate_torch

TEACHER_TOP_K = 32  # teacher outputs kept per position
SCALE_LR = 1e-3  # Adam on log-scales: a relative step of ~0.1 % per update
FLOAT_LR = 1e-4  # Adam on norms, biases, offsets and float columns
WARMUP = 0.1  # fraction of the steps spent ramping the learning rate up (one-cycle schedule)


@dataclasses.dataclass
class Teacher:
    """Per calibration item: the teacher's top-k output ids (n, K), their log-probabilities, log of the rest."""

    ids: list[torch.Tensor]
    logp: list[torch.Tensor]
    log_rest: list[torch.Tensor]


def teacher_targets(teacher: torch.nn.Module, batches: list, outputs: Callable, k: int = TEACHER_TOP_K) -> Teacher:
    ids, logp, rest = [], [], []
    with torch.no_grad():
        for b in batches:
            for logits in outputs(teacher, b):
                lp = torch.log_softmax(logits.float(), dim=-1)
                top, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
                ids.append(idx)
                logp.append(top)
                rest.append(_log_rest(lp, idx))
    return Teacher(ids, logp, rest)


def _log_rest(lp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `ids` at each position (-inf when `ids` cover every output)."""
    return torch.logsumexp(lp.scatter(-1, ids, float("-inf")), dim=-1)


def partition_kl(logits: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, log_rest: torch.Tensor) -> torch.Tensor:
    """Summed over positions: KL(teacher || student) on the partition {each top-k output, everything else}."""
    lq = torch.log_softmax(logits.float(), dim=-1)
    kl = (logp.exp() * (logp - lq.gather(-1, ids))).sum(-1)
    has_rest = torch.isfinite(log_rest)
    if bool(has_rest.any()):
        lq_rest = _log_rest(lq, ids)
        term = log_rest.exp() * (log_rest - lq_rest)
        kl = kl + torch.where(has_rest, term, torch.zeros_like(term))
    return kl.sum()


class _Quantized:
    """One quantized weight as a function of trainable tensors: (codes - zero) * scale * exp(theta) [+ offset,
    float columns] [rotated back], written into every module that uses the weight (a tied embedding has two)."""

    def __init__(self, qt: QuantizedTensor, modules: list[torch.nn.Module]):
        self.qt = qt
        self.modules = modules
        self.shape = tuple(qt.shape)
        rows, cols = qt.codes.shape
        gs = qt.group_size
        zero = (
            np.full(qt.scales.shape, 1 << (qt.bits - 1), np.float32)
            if qt.zeros is None
            else qt.zeros.astype(np.float32)
        )
        self.q = torch.from_numpy(qt.codes.astype(np.float32) - np.repeat(zero, gs, axis=1)[:, :cols])
        self.s0 = torch.from_numpy(qt.scales.astype(np.float32))
        self.gs, self.cols = gs, cols
        self.rotation = qt.rotation  # the codes are of W R: the weight is (q * s) R^T (rotate.py)
        self.theta = torch.zeros_like(self.s0, requires_grad=True)
        self.offset = self.columns = self.outliers = None
        if qt.decomposed:
            self.offset = torch.tensor(qt.offset, dtype=torch.float32, requires_grad=True)
            self.columns = torch.from_numpy(np.asarray(qt.outlier_columns, dtype=np.int64))
            self.outliers = torch.tensor(qt.outliers.astype(np.float32), requires_grad=True)

    def scale_params(self) -> list[torch.Tensor]:
        return [self.theta]

    def float_params(self) -> list[torch.Tensor]:
        return [] if self.offset is None else [self.offset, self.outliers]

    def weight(self) -> torch.Tensor:
        s = torch.repeat_interleave(self.s0 * torch.exp(self.theta), self.gs, dim=1)[:, : self.cols]
        w = self.q * s
        if self.rotation:
            w = unrotate_torch(w, self.rotation)
        if self.offset is not None:
            w = w + self.offset
            if self.columns.numel():
                w = w.index_copy(1, self.columns, self.outliers)
        return w.reshape(self.shape)

    def materialize(self) -> None:
        w = self.weight()
        for m in self.modules:
            m.weight = w

    def result(self) -> QuantizedTensor:
        """The tuned tensor: same codes and zero points, float16 scales (a group whose tuned scale does not fit
        keeps its old one), tuned offset and float columns."""
        with torch.no_grad():
            s = (self.s0 * torch.exp(self.theta)).numpy().astype(np.float16)
        bad = ~np.isfinite(s) | (s == 0) & (self.qt.scales != 0)
        s[bad] = self.qt.scales[bad]
        out = dataclasses.replace(self.qt, scales=s)
        if self.offset is not None:
            out = dataclasses.replace(
                out,
                offset=self.offset.detach().numpy().astype(np.float32).copy(),
                outliers=_finite_f16(self.outliers.detach().numpy(), self.qt.outliers),
            )
        return out


def _finite_f16(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    bad = ~np.isfinite(h)
    h[bad] = fallback[bad]
    return h


def _owners(model: torch.nn.Module, param: torch.nn.Parameter) -> list[torch.nn.Module]:
    return [m for m in model.modules() if m._parameters.get("weight") is param]


def tune(
    model: torch.nn.Module,
    quantized: dict[str, QuantizedTensor],
    float_names: list[str],
    batches: list,
    outputs: Callable,
    teacher: Teacher,
    *,
    epochs: int = DEFAULT_TUNE_EPOCHS,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, QuantizedTensor], dict, dict]:
    """Tune `model` (whose quantized weights hold the dequantized values of `quantized`) towards `teacher`.

    Returns (tuned quantized tensors, float tensor name -> tuned float32 array, report). `model` keeps the
    tuned values as plain parameters afterwards.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    weights = {}
    for name, qt in quantized.items():
        owners = _owners(model, params[name])
        if owners:
            weights[name] = _Quantized(qt, owners)
    floats = {n: params[n] for n in float_names if n in params and n not in quantized}
    originals = {name: params[name] for name in weights}
    for w in weights.values():
        for m in w.modules:
            del m.weight  # a plain attribute from now on, recomputed from the trainable tensors each step
    for p in floats.values():
        p.requires_grad_(True)
    n_steps = epochs * len(batches)
    groups = [
        {"params": [t for w in weights.values() for t in w.scale_params()], "lr": SCALE_LR},
        {"params": [t for w in weights.values() for t in w.float_params()] + list(floats.values()), "lr": FLOAT_LR},
    ]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[SCALE_LR, FLOAT_LR], total_steps=max(n_steps, 1), pct_start=WARMUP
    )
    starts = np.cumsum([0] + [len(b.ids) for b in batches])
    rng = np.random.default_rng(seed)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc="tuning", unit="step", leave=False)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                epoch_kl = epoch_n = 0.0
                for bi in rng.permutation(len(batches)):
                    for w in weights.values():
                        w.materialize()
                    outs = outputs(model, batches[bi])
                    loss = 0.0
                    n = 0
                    for j, logits in enumerate(outs):
                        item = starts[bi] + j
                        loss = loss + partition_kl(
                            logits, teacher.ids[item], teacher.logp[item], teacher.log_rest[item]
                        )
                        n += logits.shape[0]
                    opt.zero_grad()
                    (loss / max(n, 1)).backward()
                    opt.step()
                    sched.step()
                    epoch_kl += float(loss.detach())
                    epoch_n += n
                    if bar is not None:
                        bar.update()
                history.append(epoch_kl / max(epoch_n, 1))
    finally:
        if bar is not None:
            bar.close()
        for p in floats.values():
            p.requires_grad_(False)
        with torch.no_grad():
            for name, w in weights.items():
                p = originals[name]
                p.copy_(w.weight().reshape(p.shape))
                for m in w.modules:
                    del m.weight
                    m.weight = p
    tuned = {name: w.result() for name, w in weights.items()}
    with torch.no_grad():  # what the file will hold: the float16-rounded scales' dequantized values
        from ...formats import dequantize

        for name, qt in tuned.items():
            originals[name].copy_(torch.from_numpy(dequantize(qt)).reshape(originals[name].shape))
    float_out = {n: p.detach().numpy().astype(np.float32).copy() for n, p in floats.items()}
    report = {"epochs": epochs, "steps": n_steps, "kl_per_epoch": [float(f"{k:.6g}") for k in history]}
    return tuned, float_out, report
