"""quantize_tensors: the exporter's tensors + a Recipe (+ calibration audio) -> what the .wq stores.

Flow:
  1. bits (and, with Recipe.mixed_group_sizes, group size) per tensor: --keep pins first; then either the
     recipe's bits, or (target_bpw) an allocation by measured sensitivity (mixed.py): the expected loss
     increase from the diagonal Fisher of the model's loss on the calibration audio (fisher.py), or weight
     squared error without calibration;
  2. calibrated methods run block-sequentially over a working copy of the torch model (sequential.py with the
     architecture's blocks from calib_whisper.py / calib_wav2vec2.py), the exported arrays loaded into it first
     so exactly those values are quantized;
  3. any quantizable tensor the calibration did not reach is rounded to nearest (sequential.quantize_weight on
     its weight error: clip-searched when the method clips, rotated with --rotate where that errs less).
The returned dict has every input tensor in input order: QuantizedTensor for quantized weights, float arrays
otherwise (modified where AWQ folded a scale into them), plus `<prefix>.input_scale` float32 arrays right after
their weight where an AWQ scale could not be folded.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
from typing import Any, NamedTuple

import numpy as np
import torch

from ...formats import QuantizedTensor
from ..registry import ConversionError, ExportTensor
from .fisher import diagonal_fisher, fisher_error
from .mixed import (
    AllocationError,
    allocate_bits,
    bits_per_weight,
    fixed_storage,
    make_candidate,
    mixed_options,
    option_fakes,
    sensitivity,
)
from .recipe import FLOAT_KEEP_BITS, Recipe
from .rotate import block_size
from .rtn import QuantSpec, as_2d
from .sequential import SequentialQuantizer, quantize_weight
from .stats import IdentityStats

# architecture (Exporter.architecture) -> module with build(model, exporter, items, tensor_names, split_attention)
# and optionally prepare(model)
CALIBRATION_MODULES = {"whisper": "..calib_whisper", "wav2vec2-ctc": "..calib_wav2vec2"}
ERROR_DIGITS = 6  # significant digits of the per-tensor errors reported in the metadata
TUNED_KINDS = ("norm", "bias")  # float tensors the tune stage fits along with the scales


class QuantResult(NamedTuple):
    tensors: dict[str, Any]  # name -> QuantizedTensor | np.ndarray, input order, input_scale after its weight
    info: dict  # for meta["quantization"]: bits per tensor, effective bits per weight, calibration, ...


class _Calibration:
    """A working copy of the model with the exported arrays loaded, cut into blocks."""

    def __init__(self, exporter, tensors: list[ExportTensor], items: list, module, split_attention: bool = True):
        self.model = copy.deepcopy(exporter.model).float().eval()
        self.model.requires_grad_(False)
        if hasattr(module, "prepare"):
            module.prepare(self.model)
        self.params = dict(self.model.named_parameters(remove_duplicate=False))
        self.loaded: set[str] = set()
        with torch.no_grad():
            for t in tensors:
                p = self.params.get(t.name)
                if p is not None and tuple(p.shape) == tuple(t.array.shape):
                    p.copy_(torch.from_numpy(np.asarray(t.array, dtype=np.float32)))
                    self.loaded.add(t.name)
        self.blocks, self.batches, self.info = module.build(
            self.model, exporter, items, {t.name for t in tensors}, split_attention
        )
        self.targets = {t.name: t for b in self.blocks for t in b.targets if t.name in self.loaded}
        self.module = module

    def array(self, name: str) -> np.ndarray:
        return self.params[name].detach().numpy().copy()


def _check_keep(recipe: Recipe, quantizable: list[ExportTensor]) -> None:
    for pattern, _ in recipe.keep:
        if not any(fnmatch.fnmatchcase(t.name, pattern) for t in quantizable):
            example = quantizable[0].name if quantizable else "none"
            raise ConversionError(
                f"--keep pattern {pattern!r} matches no quantizable tensor (names look like {example!r})"
            )


def _significant(x: float) -> float:
    return float(f"{x:.{ERROR_DIGITS}g}")


def quantize_tensors(
    exporter, tensors: list[ExportTensor], recipe: Recipe, calib_audio: list | None = None, progress: bool = False
) -> QuantResult:
    plan = recipe.plan
    if plan is None:
        return QuantResult({t.name: t.array for t in tensors}, {"method": "none"})
    quantizable = [t for t in tensors if t.quantizable]
    _check_keep(recipe, quantizable)
    pinned: dict[str, int] = {}
    kept_float: list[str] = []
    for t in quantizable:
        b = recipe.keep_bits(t.name)
        if b in FLOAT_KEEP_BITS:
            kept_float.append(t.name)
        elif b is not None:
            pinned[t.name] = b
    free = [t for t in quantizable if t.name not in pinned and t.name not in kept_float]

    architecture = getattr(exporter, "architecture", "?")
    if recipe.needs_calibration and not calib_audio:
        raise ConversionError(f"method {plan.name!r} needs calibration audio (--calib DIR)")
    cal = None
    if calib_audio and recipe.uses_calibration:
        module_name = CALIBRATION_MODULES.get(architecture)
        if module_name is None:
            if recipe.needs_calibration:
                raise ConversionError(f"calibrated quantization ({plan.name}) is not available for {architecture}")
        else:
            # AWQ folds out_proj's scale into v_proj before v_proj is quantized: attention must stay one block
            cal = _Calibration(
                exporter,
                tensors,
                list(calib_audio),
                importlib.import_module(module_name, __package__),
                split_attention=not plan.awq,
            )

    def quantizer(specs: dict[str, QuantSpec]) -> SequentialQuantizer:
        return SequentialQuantizer(
            plan,
            specs,
            damp=recipe.damp,
            act_order=recipe.act_order,
            true_sequential=recipe.true_sequential,
            seed=recipe.seed,
            rotate=recipe.rotate,
            progress=progress,
        )

    # embedding tables are stored decomposed (offset row + float columns + codes of the residual)
    outliers = {t.name: recipe.outlier_columns if t.kind == "embedding" else 0 for t in quantizable}

    def rotation_for(t: ExportTensor) -> int:
        """The rotation block a tensor may be stored under (0: never rotated)."""
        return block_size(as_2d(t.array).shape[1]) if recipe.rotate and not outliers[t.name] else 0

    # -- bits per tensor ------------------------------------------------------------------------------------
    groups: dict[str, int] = {}  # allocated group sizes; every other tensor uses recipe.group_size
    if recipe.target_bpw is not None:
        gs, sym = recipe.group_size, recipe.symmetric
        options = mixed_options((gs, *recipe.mixed_group_sizes), recipe.mixed_min_bits)
        errors: dict[str, dict] = {}
        if cal is not None:
            wanted = [t for t in free if t.name in cal.targets]
            fisher = diagonal_fisher(
                {t.name: cal.targets[t.name].module.weight for t in wanted},
                cal.module.losses(cal.model, cal.batches),
                progress,
            )
            for t in wanted:
                w2d = as_2d(t.array)
                errors[t.name] = {
                    o: min(
                        fisher_error(t.array, d, fisher[t.name])
                        for d in option_fakes(w2d, o, gs, sym, outliers[t.name], rotation_for(t))
                    )
                    for o in options
                }
        for t in free:
            if t.name not in errors:
                w2d = as_2d(t.array)
                errors[t.name] = sensitivity(
                    w2d, gs, sym, IdentityStats(w2d.shape[1]), options, outliers[t.name], rotation_for(t)
                )
        candidates = [make_candidate(t.name, t.array.shape, gs, sym, errors[t.name], outliers[t.name]) for t in free]
        shapes = {t.name: t.array.shape for t in quantizable}
        fixed_bits, fixed_numel = fixed_storage({n: (shapes[n], b, outliers[n]) for n, b in pinned.items()}, gs, sym)
        try:
            chosen = allocate_bits(candidates, recipe.target_bpw, fixed_bits, fixed_numel)
        except AllocationError as e:
            raise ConversionError(str(e)) from None
        bits = {name: b for name, (b, _) in chosen.items()}
        groups = {name: g for name, (_, g) in chosen.items()}
    else:
        bits = {t.name: recipe.bits for t in free}
    bits.update(pinned)
    specs = {
        name: QuantSpec(b, groups.get(name, recipe.group_size), recipe.symmetric, outliers[name])
        for name, b in bits.items()
    }

    # -- quantize -------------------------------------------------------------------------------------------
    results: dict[str, QuantizedTensor] = {}
    q = None
    if cal is not None:
        q = quantizer({n: s for n, s in specs.items() if n in cal.targets})
        q.run(cal.blocks, cal.batches)
        results.update(q.results)
    uncalibrated = []
    for t in quantizable:
        if t.name in specs and t.name not in results:
            # the weight error decides clip ranges and, with rotate, whether the tensor is stored rotated
            results[t.name] = quantize_weight(
                t.array,
                specs[t.name],
                IdentityStats(as_2d(t.array).shape[1]),
                plan,
                damp=recipe.damp,
                act_order=recipe.act_order,
                rotate=recipe.rotate,
            ).qt
            uncalibrated.append(t.name)

    # -- tune -----------------------------------------------------------------------------------------------
    tuned_floats: dict[str, np.ndarray] = {}
    tune_report = None
    if plan.tune:
        from .tune import teacher_targets, tune

        teacher = teacher_targets(exporter.model.float().eval(), cal.batches, cal.module.outputs)
        tuned, tuned_floats, tune_report = tune(
            cal.model,
            results,
            [t.name for t in tensors if t.kind in TUNED_KINDS],
            cal.batches,
            cal.module.outputs,
            teacher,
            epochs=recipe.tune_epochs,
            seed=recipe.seed,
            progress=progress,
        )
        results.update(tuned)

    # -- assemble -------------------------------------------------------------------------------------------
    out: dict[str, Any] = {}
    for t in tensors:
        if t.name in results:
            out[t.name] = results[t.name]
            scale_name = t.name.rsplit(".", 1)[0] + ".input_scale"
            if q is not None and scale_name in q.input_scales:
                out[scale_name] = q.input_scales[scale_name]
        elif t.name in tuned_floats:
            out[t.name] = tuned_floats[t.name]
        elif q is not None and t.name in q.modified:
            out[t.name] = cal.array(t.name)
        else:
            out[t.name] = t.array

    info: dict[str, Any] = {
        "method": plan.name,
        "bits_per_weight": _significant(bits_per_weight(results.values())),
        "tensor_bits": {t.name: results[t.name].bits for t in quantizable if t.name in results},
    }
    if recipe.rotate:  # the tensors stored rotated (SPEC.md 5.4): each kept the smaller error of the two ways
        info["rotated"] = [t.name for t in quantizable if t.name in results and results[t.name].rotation]
    if recipe.mixed_group_sizes:  # the allocation chose group sizes too (0 = per output channel, as --group-size)
        info["tensor_group_size"] = {name: specs[name].group_size for name in info["tensor_bits"]}
    if kept_float:
        info["kept_float"] = kept_float
    if cal is not None:
        info["calibration"] = {
            "samples": len(calib_audio),
            "seed": recipe.seed,
            "ids": [str(getattr(it, "id", i)) for i, it in enumerate(calib_audio)],
            **cal.info,
        }
        info["relative_output_error"] = {n: _significant(e) for n, e in q.errors.items()}
        if q.rotation_errors:  # with rotate: each weight's relative output error stored plain and rotated
            info["rotation_errors"] = {n: [_significant(a), _significant(b)] for n, (a, b) in q.rotation_errors.items()}
        if q.awq_alpha:  # the exponent AWQ chose for each scaled weight (0: left unscaled)
            info["awq_alpha"] = dict(q.awq_alpha)
        if q.input_scales:
            info["input_scales"] = sorted(q.input_scales)
        if q.gptq_failed:
            info["gptq_fallback_rtn"] = q.gptq_failed
    if tune_report is not None:
        info["tune"] = tune_report
    if uncalibrated and (cal is not None or recipe.needs_calibration):
        info["uncalibrated"] = uncalibrated
    return QuantResult(out, info)
