"""Block-sequential calibration: capture a block's inputs once, quantize its weights, run it, move on.

An architecture (converter/calib_whisper.py, calib_wav2vec2.py) describes its torch model as a list of Blocks,
each a forward function from one batch state to the next plus the quantizable weights inside it (Targets),
grouped into stages in execution order, and the AWQ scaling sites (ScaleSites). This module is architecture-free:

for each block, on the block inputs produced by the already-quantized blocks before it:
  1. (awq) collect input statistics of all its targets in one pass, search and fold the scales;
  2. for each stage in order: collect its targets' input statistics (re-run up to the stage, with the earlier
     stages already quantized, when `true_sequential`), clip-search, round (RTN or GPTQ), and write the
     dequantized weights back into the model so everything downstream sees the quantized layer;
  3. run the block once more to produce the next block's inputs.
Statistics come from forward pre-hooks (add_batch), and a pass stops as soon as its last target has been seen.
Rows entering the statistics may be subsampled per sample (Block.max_rows) with a generator seeded by
(seed, sample, sequence length), so the result depends only on the inputs and the seed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .awq import add_input_scale, scale_columns, search_scales
from .recipe import Plan
from .rtn import QuantSpec, as_2d
from .stats import DiagStats, FullStats, IdentityStats, Stats
from .weight import StoredTensor, quantize_weight, stored_values

if TYPE_CHECKING:
    from ..registry import ExportTensor

# A tied embedding is calibrated as the output projection, on its logits error tr(dE H dE^T). Its other use, the
# decoder's input lookup, sees the weight error of the looked-up row directly; GPTQ alone would push error into
# the directions H ignores. The objective gets LOOKUP_WEIGHT * mean(diag H) * |dE|^2 added (H + w * mean * I).
LOOKUP_WEIGHT = 1.0


class StopForward(Exception):
    """Raised by a statistics hook once every target of the pass has been seen: the rest of the block is skipped."""


@dataclasses.dataclass
class Target:
    name: str  # the tensor's checkpoint name (…weight)
    module: torch.nn.Module  # nn.Linear or nn.Conv1d in the working model whose .weight holds it
    stage: int = 0  # order of quantization inside the block; a stage only sees quantized earlier stages
    domain: str = "main"  # which sequence its input rows come from (Batch.lengths / Block.max_rows key)
    lookup: bool = False  # also read row by row as an embedding table (tied output projection)

    @property
    def prefix(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclasses.dataclass
class ScaleSite:
    """Targets sharing one input, and how to divide that input by s (None: store `<prefix>.input_scale`)."""

    consumers: tuple[str, ...]
    fold: Callable[[torch.Tensor], Iterable[str]] | None = None  # returns the float tensor names it changed


@dataclasses.dataclass
class Block:
    name: str
    forward: Callable[[Any], Any]  # batch state -> next batch state
    targets: list[Target] = dataclasses.field(default_factory=list)
    scale_sites: list[ScaleSite] = dataclasses.field(default_factory=list)
    max_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # per domain, rows per sample kept


@dataclasses.dataclass
class Batch:
    """Base of the architectures' batch states: which samples, and how many rows of each domain are real."""

    ids: list[int]
    lengths: dict[str, list[int]] = dataclasses.field(default_factory=dict)


Losses = Callable[[torch.nn.Module, list], Iterator[Callable[[], torch.Tensor]]]
Outputs = Callable[[torch.nn.Module, Any], list[torch.Tensor]]


@dataclasses.dataclass
class Calibration:
    """An architecture's calibration set-up (Exporter.calibration): a working copy of its model with the exported
    arrays loaded, cut into blocks, and the batches entering the first block."""

    model: torch.nn.Module  # the working copy: quantization writes into it; the exporter's model stays float
    loaded: set[str]  # names of the exported arrays loaded into the working copy
    blocks: list[Block]
    batches: list
    info: dict[str, Any]  # for meta["quantization"]["calibration"]
    losses: Losses  # (model, batches) -> one per-utterance loss closure at a time, for the Fisher (fisher.py)
    outputs: Outputs  # (model, initial batch) -> each utterance's output logits, for distillation (tune.py)

    @property
    def targets(self) -> dict[str, Target]:
        """The quantizable weights the blocks reach, by name (those whose exported array was loaded)."""
        return {t.name: t for b in self.blocks for t in b.targets if t.name in self.loaded}

    def array(self, name: str) -> np.ndarray:
        """A float tensor of the working copy as it is now (after AWQ folded scales into it)."""
        return dict(self.model.named_parameters(remove_duplicate=False))[name].detach().numpy().copy()


def working_copy(
    model: torch.nn.Module, tensors: list[ExportTensor], prepare: Callable[[torch.nn.Module], None] | None = None
) -> tuple[torch.nn.Module, set[str]]:
    """A float32 eval copy of `model` (after `prepare`, which renames modules to match the exported tensors)
    with the exported arrays loaded, so exactly the stored values are quantized; and the names loaded."""
    work = copy.deepcopy(model).float().eval()
    work.requires_grad_(False)
    if prepare is not None:
        prepare(work)
    params = dict(work.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    with torch.no_grad():
        for t in tensors:
            p = params.get(t.name)
            if p is not None and tuple(p.shape) == tuple(t.array.shape):
                p.copy_(torch.from_numpy(np.asarray(t.array, dtype=np.float32)))
                loaded.add(t.name)
    return work, loaded


@contextlib.contextmanager
def without_output_projection(attention: torch.nn.Module):
    """Run an attention module (any whose forward ends in self.out_proj) up to its output projection: the
    runners cut attention there, so quantizing out_proj does not recompute the attention."""
    projection = attention.out_proj
    attention.out_proj = torch.nn.Identity()
    try:
        yield
    finally:
        attention.out_proj = projection


# -- turning a module's input into rows of its 2-D weight view --------------------------------------------------


def supports_stats(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv1d):
        return module.dilation == (1,) and isinstance(module.padding, tuple) and module.padding_mode == "zeros"
    return False


def new_stats(module: torch.nn.Module) -> Stats:
    if isinstance(module, torch.nn.Conv1d):
        cols = module.in_channels // module.groups * module.kernel_size[0]
        return FullStats(cols) if module.groups == 1 else DiagStats(cols, module.groups)
    return FullStats(module.in_features)


def _rows(module: torch.nn.Module, x: torch.Tensor, b: int, idx: torch.Tensor) -> torch.Tensor:
    """Rows (n, cols) — or (groups, n, cols) for a grouped conv — of item b's input at positions idx."""
    if isinstance(module, torch.nn.Linear):
        return x[b, idx]
    k, stride, pad = module.kernel_size[0], module.stride[0], module.padding[0]
    xb = torch.nn.functional.pad(x[b], (pad, pad))  # (C, T + 2 pad)
    patches = xb.unfold(1, k, stride)[:, idx, :]  # (C, n, K)
    g = module.groups
    c = patches.shape[0] // g
    # columns of the (out, C/groups * K) weight view are channel-major, kernel-minor
    rows = patches.reshape(g, c, -1, k).permute(0, 2, 1, 3).reshape(g, -1, c * k)  # (groups, n, C/groups * K)
    return rows[0] if g == 1 else rows


def _positions(module: torch.nn.Module, x: torch.Tensor) -> int:
    if isinstance(module, torch.nn.Linear):
        return x.shape[1]
    k, stride, pad = module.kernel_size[0], module.stride[0], module.padding[0]
    return (x.shape[-1] + 2 * pad - k) // stride + 1


class SequentialQuantizer:
    """Runs blocks in order, quantizing the targets named in `specs`; collects results and what it changed."""

    def __init__(
        self,
        plan: Plan,
        specs: dict[str, QuantSpec],
        *,
        damp: float,
        act_order: bool,
        true_sequential: bool,
        seed: int,
        rotate: bool = False,
        progress: bool = False,
    ):
        self.plan = plan
        self.specs = specs
        self.damp = damp
        self.act_order = act_order
        self.true_sequential = true_sequential
        self.seed = seed
        self.rotate = rotate  # also try each weight rotated (rotate.py) and keep the smaller output error
        self.progress = progress
        self.results: dict[str, StoredTensor] = {}
        self.input_scales: dict[str, np.ndarray] = {}  # "<prefix>.input_scale" -> float32 (cols,)
        self.modified: set[str] = set()  # float tensors changed by folding
        self.errors: dict[str, float] = {}  # relative output error of each quantized target on its inputs
        self.rotation_errors: dict[str, tuple[float, float]] = {}  # with rotate: (plain, rotated) relative errors
        self.awq_alpha: dict[str, float] = {}
        self.gptq_failed: list[str] = []
        self._batch: Batch | None = None
        self._block: Block | None = None
        self._rows_cache: dict = {}

    # -- row selection ----------------------------------------------------------------------------------------
    def _select(self, b: int, positions: int, domain: str) -> torch.Tensor:
        batch = self._batch
        lengths = batch.lengths.get(domain)
        valid = positions if lengths is None else min(int(lengths[b]), positions)
        limit = self._block.max_rows.get(domain)
        sample = int(batch.ids[b])
        key = (sample, positions, valid, limit)
        idx = self._rows_cache.get(key)
        if idx is None:
            if limit is None or valid <= limit:
                idx = torch.arange(valid)
            else:
                rng = np.random.default_rng([self.seed, sample, positions])
                idx = torch.from_numpy(np.sort(rng.choice(valid, size=limit, replace=False)))
            self._rows_cache[key] = idx
        return idx

    # -- statistics -------------------------------------------------------------------------------------------
    def collect(self, block: Block, batches: list, targets: list[Target], stop_early: bool) -> tuple[dict, list]:
        """Input statistics of `targets` over all batches; the block outputs too unless stop_early."""
        stats = {t.name: new_stats(t.module) for t in targets}
        wanted = {t.name for t in targets}
        seen: set[str] = set()

        def hook_for(t: Target):
            st = stats[t.name]

            def hook(module, args):
                x = args[0]
                if x.dim() == 2 and isinstance(module, torch.nn.Linear):
                    x = x[None]
                n = _positions(module, x)
                st.add_batch(
                    torch.cat([_rows(module, x, b, self._select(b, n, t.domain)) for b in range(x.shape[0])], dim=-2)
                )
                seen.add(t.name)
                if stop_early and seen >= wanted:
                    raise StopForward

            return hook

        handles = [t.module.register_forward_pre_hook(hook_for(t)) for t in targets]
        outputs = []
        self._block = block
        try:
            for batch in batches:
                self._batch = batch
                seen.clear()
                try:
                    out = block.forward(batch)
                except StopForward:
                    out = None
                if seen != wanted:
                    raise RuntimeError(f"block {block.name}: weights {sorted(wanted - seen)} were never used")
                if not stop_early:
                    outputs.append(out)
        finally:
            for h in handles:
                h.remove()
        return stats, outputs

    def forward(self, block: Block, batches: list) -> list:
        self._block = block
        return [block.forward(b) for b in batches]

    # -- quantization -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, blocks: list[Block], batches: list) -> None:
        for i, block in enumerate(self._bar(blocks, "quantizing")):
            batches = self._quantize_block(block, batches, last=i == len(blocks) - 1)

    def _bar(self, blocks: list[Block], desc: str):
        if not self.progress:
            return blocks
        from tqdm.auto import tqdm

        return tqdm(blocks, desc=desc, unit="block", leave=False)

    def _quantize_block(self, block: Block, batches: list, last: bool) -> list:
        targets = [t for t in block.targets if t.name in self.specs]
        if not targets:
            return self.forward(block, batches)
        by_name = {t.name: t for t in targets}
        sites = [s for s in block.scale_sites if all(c in by_name for c in s.consumers)] if self.plan.awq else []
        stats: dict[str, Stats] = {}
        observable = [t for t in targets if supports_stats(t.module)]
        if sites or not self.true_sequential:
            stats, _ = self.collect(block, batches, observable, stop_early=True)
            for site in sites:
                self._apply_awq(site, by_name, stats)
        stages = sorted({t.stage for t in targets})
        for k, stage in enumerate(stages):
            members = [t for t in targets if t.stage == stage]
            need = [
                t
                for t in members
                if supports_stats(t.module) and (t.name not in stats or (self.true_sequential and k > 0))
            ]
            if need:
                fresh, _ = self.collect(block, batches, need, stop_early=True)
                stats.update(fresh)
            for t in members:
                self._quantize_target(t, stats.pop(t.name, None))
        return [] if last else self.forward(block, batches)

    def _apply_awq(self, site: ScaleSite, by_name: dict[str, Target], stats: dict[str, Stats]) -> None:
        consumers = [by_name[c] for c in site.consumers]
        st = stats.get(consumers[0].name)
        if not isinstance(st, FullStats) or not all(isinstance(c.module, torch.nn.Linear) for c in consumers):
            return
        weights = [as_2d(c.module.weight.detach().numpy()) for c in consumers]
        s, report = search_scales(weights, [self.specs[c.name] for c in consumers], st)
        for c in consumers:
            self.awq_alpha[c.name] = report["alpha"]
        if report["alpha"] == 0.0:
            return  # s = 1: nothing to fold
        for c in consumers:
            scale_columns(c.module, s)
            stats[c.name].scale_inputs(s)
        if site.fold is not None:
            self.modified.update(site.fold(s))
        else:
            for c in consumers:
                add_input_scale(c.module, s)
                self.input_scales[c.prefix + ".input_scale"] = s.numpy().astype(np.float32)

    def _quantize_target(self, t: Target, st: Stats | None) -> None:
        w = t.module.weight.detach().numpy().copy()
        if st is None:
            st = IdentityStats(as_2d(w).shape[1])
        elif t.lookup and isinstance(st, FullStats):
            st = st.with_identity(LOOKUP_WEIGHT)
        r = quantize_weight(
            w,
            self.specs[t.name],
            st,
            self.plan,
            damp=self.damp,
            act_order=self.act_order,
            rotate=self.rotate,
            seed=self.seed,
        )
        with torch.no_grad():
            t.module.weight.copy_(torch.from_numpy(stored_values(r.qt)))
        self.errors[t.name] = r.error
        if r.rotation_errors is not None:
            self.rotation_errors[t.name] = r.rotation_errors
        if r.gptq_failed:
            self.gptq_failed.append(t.name)
        self.results[t.name] = r.qt
