"""quantize_tensors: the exporter's tensors + a Recipe (+ calibration audio) -> what the .wq stores.

Stages, each a function from typed inputs to a typed result, composed by quantize_tensors:
  smooth      with Recipe.smooth, SmoothQuant migration on the calibration's working model (smooth.py), folded
              where the graph allows; the changed tensors replace the exporter's before anything is quantized;
  select      which quantizable tensors --keep pins to bits, keeps float, or leaves free;
  calibrate   the architecture's calibration set-up (Exporter.calibration): a working copy of the torch model
              with the exported arrays loaded (so exactly those values are quantized), cut into blocks;
  allocate    a QuantSpec per quantized tensor: the recipe's bits, or (target_bpw) an allocation by measured
              sensitivity (mixed.py): the expected loss increase from the diagonal Fisher of the model's loss on
              the calibration audio (fisher.py), or weight squared error without calibration;
  quantize    calibrated methods run block-sequentially (sequential.py); any quantizable tensor the calibration
              did not reach is quantized on its weight error (clip-searched when the method clips, rotated with
              --rotate where that errs less);
  tune        with "+tune", distil the float model into the scales and float tensors (tune.py);
  assemble    every input tensor in input order: QuantizedTensor for quantized weights (CodebookTensor for those
              the vq method quantized), float arrays otherwise
              (modified where AWQ folded a scale into them), plus `<prefix>.input_scale` float32 arrays right
              after their weight where an AWQ scale could not be folded;
  activations the activation spec of every quantized weight whose input the runtime multiplies as integer codes
              (Recipe.act_bits: dynamic per-row scales, or with act_static one scale per tensor, MSE-clipped on
              the inputs the quantized working model sees on the calibration audio; a rotated weight's spec
              applies to x R); returned in info["activation_specs"], which the exporter pops before the metadata;
  describe    meta["quantization"]: bits per tensor, effective bits per weight, calibration, errors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, NamedTuple

import numpy as np
import torch

from ...formats import QuantizedTensor
from ...formats.activation import ActivationSpec
from ...formats.codecs import CodebookTensor
from ..calibrate import CalibItem
from ..registry import ConversionError, Exporter, ExportTensor
from .act import ActRange, observe_inputs, static_spec
from .fisher import diagonal_fisher, fisher_error
from .mixed import (
    AllocationError,
    Candidate,
    allocate_bits,
    bits_per_weight,
    fixed_storage,
    make_candidate,
    mixed_options,
    option_bits_group,
    option_fakes,
    sensitivity,
)
from .recipe import FLOAT_KEEP_BITS, Plan, Recipe
from .rotate import block_size
from .rtn import QuantSpec, as_2d
from .sequential import Calibration, SequentialQuantizer
from .smooth import smooth_model
from .stats import IdentityStats
from .weight import StoredTensor, quantize_weight

ERROR_DIGITS = 6  # significant digits of the per-tensor errors reported in the metadata
TUNED_KINDS = ("norm", "bias")  # float tensors the tune stage fits along with the scales


class QuantResult(NamedTuple):
    tensors: dict[str, Any]  # name -> StoredTensor | np.ndarray, input order, input_scale after its weight
    info: dict  # for meta["quantization"]: bits per tensor, effective bits per weight, calibration, ...


@dataclasses.dataclass(frozen=True)
class Selection:
    """The quantizable tensors and what --keep made of them."""

    quantizable: list[ExportTensor]
    pinned: dict[str, int]  # name -> bits from --keep
    kept_float: list[str]  # --keep PATTERN=16|32
    free: list[ExportTensor]  # the recipe's bits, or the mixed-precision allocation, decide these
    outliers: dict[str, int]  # float columns of a decomposed embedding table (decompose.py); 0: plain codes
    rotate: bool  # Recipe.rotate

    def rotation_block(self, t: ExportTensor) -> int:
        """The rotation block a tensor may be stored under (0: never rotated; decomposed tables are not)."""
        return block_size(as_2d(t.array).shape[1]) if self.rotate and not self.outliers[t.name] else 0


@dataclasses.dataclass
class Quantized:
    results: dict[str, StoredTensor]  # every quantized weight
    uncalibrated: list[str]  # quantized on their weight error: the calibration did not reach them
    sequential: SequentialQuantizer | None  # the calibrated run (its errors, folds and input scales)


@dataclasses.dataclass
class Tuned:
    tensors: dict[str, QuantizedTensor]  # quantized weights with tuned scales (and decomposition floats)
    floats: dict[str, np.ndarray]  # tuned norms and biases
    report: dict | None  # for meta["quantization"]["tune"]; None when the method does not tune


NOT_TUNED = Tuned({}, {}, None)


def select(tensors: list[ExportTensor], recipe: Recipe) -> Selection:
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
    # embedding tables are stored decomposed (offset row + float columns + codes of the residual)
    outliers = {t.name: recipe.outlier_columns if t.kind == "embedding" else 0 for t in quantizable}
    return Selection(quantizable, pinned, kept_float, free, outliers, recipe.rotate)


def _check_keep(recipe: Recipe, quantizable: list[ExportTensor]) -> None:
    for pattern, _ in recipe.keep:
        if not any(fnmatch.fnmatchcase(t.name, pattern) for t in quantizable):
            example = quantizable[0].name if quantizable else "none"
            raise ConversionError(
                f"--keep pattern {pattern!r} matches no quantizable tensor (names look like {example!r})"
            )


def calibrate(
    exporter: Exporter, tensors: list[ExportTensor], recipe: Recipe, plan: Plan, items: list[CalibItem] | None
) -> Calibration | None:
    """The calibration set-up, or None when there is no audio or the method would not use it."""
    if recipe.needs_calibration and not items:
        raise ConversionError(f"method {plan.name!r} needs calibration audio (--calib DIR)")
    if not items or not recipe.uses_calibration:
        return None
    # AWQ and smoothing fold out_proj's scale into v_proj before v_proj is quantized: attention stays one block
    cal = exporter.calibration(list(items), tensors, split_attention=not (plan.awq or recipe.smooth is not None))
    if cal is None and recipe.needs_calibration:
        raise ConversionError(f"calibrated quantization ({plan.name}) is not available for {exporter.architecture}")
    return cal


def smooth(cal: Calibration | None, tensors: list[ExportTensor], recipe: Recipe) -> tuple[list[ExportTensor], dict]:
    """The tensors after SmoothQuant migration of the working model (unchanged without Recipe.smooth), and the
    report for meta["quantization"]["smooth"]."""
    if recipe.smooth is None:
        return tensors, {}
    if cal is None:
        raise ConversionError("--smooth measures activation ranges: it needs calibration audio (--calib DIR)")
    migration = smooth_model(cal, recipe.smooth)
    smoothed = [dataclasses.replace(t, array=cal.array(t.name)) if t.name in migration.changed else t for t in tensors]
    return smoothed, migration.report(recipe.smooth)


def allocate(sel: Selection, recipe: Recipe, cal: Calibration | None, progress: bool) -> dict[str, QuantSpec]:
    """A QuantSpec per quantized tensor: free tensors first (in allocation order), then the --keep pins."""
    if recipe.plan is not None and recipe.plan.rounder == "vq":
        specs = {t.name: _vq_spec(t, recipe) for t in sel.free}
    elif recipe.target_bpw is None:
        assert recipe.bits is not None  # Recipe: bits may be None only with target_bpw
        bits = int(recipe.bits)
        specs = {t.name: QuantSpec(bits, recipe.group_size, recipe.symmetric, sel.outliers[t.name]) for t in sel.free}
    else:
        chosen = _mixed_precision(sel, recipe, cal, progress)
        specs = {name: QuantSpec(b, g, recipe.symmetric, sel.outliers[name]) for name, (b, g) in chosen.items()}
    specs.update(
        {name: QuantSpec(b, recipe.group_size, recipe.symmetric, sel.outliers[name]) for name, b in sel.pinned.items()}
    )
    return specs


def _vq_spec(t: ExportTensor, recipe: Recipe) -> QuantSpec:
    """Codebook vectors for a free tensor; scalar codes of the next whole width (GPTQ) where the vector dimension
    does not divide its columns (e.g. wav2vec2's first convolution, 10 columns). Pinned tensors stay scalar."""
    assert recipe.bits is not None
    if as_2d(t.array).shape[1] % recipe.vq_dim:
        return QuantSpec(math.ceil(recipe.bits), recipe.group_size, recipe.symmetric)
    return QuantSpec(recipe.vq_index_bits, recipe.group_size, recipe.symmetric, vq_dim=recipe.vq_dim)


def _mixed_precision(
    sel: Selection, recipe: Recipe, cal: Calibration | None, progress: bool
) -> dict[str, tuple[int, int]]:
    """(bits, group size) per free tensor meeting recipe.target_bpw with the pinned tensors counted."""
    gs, sym = recipe.group_size, recipe.symmetric
    options = mixed_options((gs, *recipe.mixed_group_sizes), recipe.mixed_min_bits)
    errors = _fisher_errors(sel, recipe, options, cal, progress) if cal is not None else {}
    for t in sel.free:
        if t.name not in errors:  # not reached by the calibration: the weight squared error
            w2d = as_2d(t.array)
            stats = IdentityStats(w2d.shape[1])
            errors[t.name] = sensitivity(w2d, gs, sym, stats, options, sel.outliers[t.name], sel.rotation_block(t))
    candidates: list[Candidate] = [
        make_candidate(t.name, t.array.shape, gs, sym, errors[t.name], sel.outliers[t.name]) for t in sel.free
    ]
    shapes = {t.name: t.array.shape for t in sel.quantizable}
    pinned = {n: (shapes[n], b, sel.outliers[n]) for n, b in sel.pinned.items()}
    fixed_bits, fixed_numel = fixed_storage(pinned, gs, sym)
    try:
        chosen = allocate_bits(candidates, recipe.target_bpw, fixed_bits, fixed_numel)
    except AllocationError as e:
        raise ConversionError(str(e)) from None
    return {name: option_bits_group(o, gs) for name, o in chosen.items()}


def _fisher_errors(
    sel: Selection, recipe: Recipe, options: list[tuple[int, int]], cal: Calibration, progress: bool
) -> dict[str, dict]:
    """Expected loss increase of each option for the free tensors the calibration reaches."""
    targets = cal.targets
    wanted = [t for t in sel.free if t.name in targets]
    fisher = diagonal_fisher(
        {t.name: targets[t.name].module.weight for t in wanted}, cal.losses(cal.model, cal.batches), progress
    )
    gs, sym = recipe.group_size, recipe.symmetric
    return {
        t.name: {
            o: min(
                fisher_error(t.array, d, fisher[t.name])
                for d in option_fakes(as_2d(t.array), o, gs, sym, sel.outliers[t.name], sel.rotation_block(t))
            )
            for o in options
        }
        for t in wanted
    }


def quantize(
    sel: Selection,
    specs: dict[str, QuantSpec],
    recipe: Recipe,
    plan: Plan,
    cal: Calibration | None,
    progress: bool,
) -> Quantized:
    results: dict[str, StoredTensor] = {}
    run = None
    if cal is not None:
        targets = cal.targets
        run = SequentialQuantizer(
            plan,
            {n: s for n, s in specs.items() if n in targets},
            damp=recipe.damp,
            act_order=recipe.act_order,
            true_sequential=recipe.true_sequential,
            seed=recipe.seed,
            rotate=recipe.rotate,
            progress=progress,
        )
        run.run(cal.blocks, cal.batches)
        results.update(run.results)
    uncalibrated = []
    for t in sel.quantizable:
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
                seed=recipe.seed,
            ).qt
            uncalibrated.append(t.name)
    return Quantized(results, uncalibrated, run)


def tune_floats(
    exporter: Exporter, tensors: list[ExportTensor], quantized: Quantized, recipe: Recipe, cal: Calibration, progress
) -> Tuned:
    from .tune import teacher_targets, tune

    teacher = teacher_targets(exporter.model.float().eval(), cal.batches, cal.outputs)
    tuned, floats, report = tune(
        cal.model,
        quantized.results,
        [t.name for t in tensors if t.kind in TUNED_KINDS],
        cal.batches,
        cal.outputs,
        teacher,
        epochs=recipe.tune_epochs,
        seed=recipe.seed,
        progress=progress,
    )
    return Tuned(tuned, floats, report)


def assemble(
    tensors: list[ExportTensor], results: dict[str, StoredTensor], tuned: Tuned, quantized: Quantized, cal
) -> dict[str, Any]:
    run = quantized.sequential
    out: dict[str, Any] = {}
    for t in tensors:
        if t.name in results:
            out[t.name] = results[t.name]
            scale_name = t.name.rsplit(".", 1)[0] + ".input_scale"
            if run is not None and scale_name in run.input_scales:
                out[scale_name] = run.input_scales[scale_name]
        elif t.name in tuned.floats:
            out[t.name] = tuned.floats[t.name]
        elif run is not None and t.name in run.modified:
            out[t.name] = cal.array(t.name)
        else:
            out[t.name] = t.array
    return out


def describe(
    sel: Selection,
    specs: dict[str, QuantSpec],
    results: dict[str, StoredTensor],
    quantized: Quantized,
    tuned: Tuned,
    recipe: Recipe,
    plan: Plan,
    cal: Calibration | None,
    items: list[CalibItem] | None,
) -> dict[str, Any]:
    quantizable = [t.name for t in sel.quantizable if t.name in results]
    info: dict[str, Any] = {
        "method": plan.name,
        "bits_per_weight": _significant(bits_per_weight(results.values())),
        "tensor_bits": {name: _code_bits(results[name]) for name in quantizable},
    }
    if recipe.rotate:  # the tensors stored rotated (SPEC.md 5.4): each kept the smaller error of the two ways
        info["rotated"] = [name for name in quantizable if results[name].rotation]
    if recipe.mixed_group_sizes:  # the allocation chose group sizes too (0 = per output channel, as --group-size)
        info["tensor_group_size"] = {name: specs[name].group_size for name in info["tensor_bits"]}
    if sel.kept_float:
        info["kept_float"] = sel.kept_float
    run = quantized.sequential
    if cal is not None and run is not None:
        items = items or []
        info["calibration"] = {"samples": len(items), "seed": recipe.seed, "ids": [it.id for it in items], **cal.info}
        info.update(_calibrated_errors(run))
    if tuned.report is not None:
        info["tune"] = tuned.report
    if quantized.uncalibrated and (cal is not None or recipe.needs_calibration):
        info["uncalibrated"] = quantized.uncalibrated
    return info


def _code_bits(t: StoredTensor) -> float:
    """Bits per weight of a tensor's codes (a vector index's bits spread over its weights), scales excluded."""
    return t.index_bits / t.dim if isinstance(t, CodebookTensor) else t.bits


def _calibrated_errors(run: SequentialQuantizer) -> dict[str, Any]:
    info: dict[str, Any] = {"relative_output_error": {n: _significant(e) for n, e in run.errors.items()}}
    if run.rotation_errors:  # with rotate: each weight's relative output error stored plain and rotated
        info["rotation_errors"] = {n: [_significant(a), _significant(b)] for n, (a, b) in run.rotation_errors.items()}
    if run.awq_alpha:  # the exponent AWQ chose for each scaled weight (0: left unscaled)
        info["awq_alpha"] = dict(run.awq_alpha)
    if run.input_scales:
        info["input_scales"] = sorted(run.input_scales)
    if run.gptq_failed:
        info["gptq_fallback_rtn"] = run.gptq_failed
    return info


def _significant(x: float) -> float:
    return float(f"{x:.{ERROR_DIGITS}g}")


def quantize_tensors(
    exporter: Exporter,
    tensors: list[ExportTensor],
    recipe: Recipe,
    calib_audio: list[CalibItem] | None = None,
    progress: bool = False,
) -> QuantResult:
    plan = recipe.plan
    if plan is None:
        return QuantResult({t.name: t.array for t in tensors}, {"method": "none"})
    cal = calibrate(exporter, tensors, recipe, plan, calib_audio)
    tensors, smoothing = smooth(cal, tensors, recipe)
    sel = select(tensors, recipe)
    specs = allocate(sel, recipe, cal, progress)
    quantized = quantize(sel, specs, recipe, plan, cal, progress)
    tuned = tune_floats(exporter, tensors, quantized, recipe, cal, progress) if plan.tune and cal else NOT_TUNED
    results = {**quantized.results, **tuned.tensors}
    out = assemble(tensors, results, tuned, quantized, cal)
    info = describe(sel, specs, results, quantized, tuned, recipe, plan, cal, calib_audio)
    if smoothing:
        info["smooth"] = smoothing
    if recipe.act_bits is not None:
        ranges = observe_activations(cal, results) if recipe.act_static and cal is not None else {}
        info["activation_specs"] = activations(results, recipe, ranges)
        info["act_static_tensors"] = len(ranges)
    return QuantResult(out, info)


# weights stored quantized that no product multiplies (looked up by position only)
LOOKUP_ONLY = ("embed_positions",)


def activations(
    results: dict[str, Any], recipe: Recipe, ranges: dict[str, ActRange] | None = None
) -> dict[str, ActivationSpec]:
    """The activation spec of every quantized matrix (2-D) weight the runtime multiplies through ops.linear:
    convolution kernels (3-D, the front end) and position tables keep float inputs. A weight with an observed
    range gets a static spec, the others dynamic ones."""
    if recipe.act_bits is None:
        return {}
    bits, ranges = recipe.act_bits, ranges or {}
    return {
        name: static_spec(ranges[name], bits) if name in ranges else ActivationSpec(bits)
        for name, qt in results.items()
        if isinstance(qt, QuantizedTensor)
        and len(qt.shape) == 2
        and not any(part in name.split(".") for part in LOOKUP_ONLY)
    }


def observe_activations(cal: Calibration, results: dict[str, StoredTensor]) -> dict[str, ActRange]:
    """|x| histograms of the inputs of every quantized linear weight the calibration reaches, over a forward
    pass of the working model (its weights as quantized) on every calibration utterance; rotated weights see x R."""
    targets = cal.targets
    modules = {n: targets[n].module for n, qt in results.items() if n in targets and len(qt.shape) == 2}
    rotations = {n: results[n].rotation for n in modules if results[n].rotation}
    with torch.no_grad(), observe_inputs(modules, rotations) as ranges:
        for loss in cal.losses(cal.model, cal.batches):
            loss()
    return {n: r for n, r in ranges.items() if r.n}
