"""Checkpoint -> .wq: load with transformers, pick the registered exporter, quantize, write one file."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from ..formats import QuantizedTensor, WqWriter
from ..formats.activation import ActivationSpec
from ..formats.codecs import CodebookTensor
from ..formats.errors import OutputExistsError
from .quant.recipe import Recipe
from .registry import ConversionError, Exporter, ExportTensor, loader_for

DTYPES = {"f32": np.float32, "f16": np.float16}


@dataclasses.dataclass
class ConvertReport:
    path: str
    architecture: str
    n_params: int  # weights of every stored model tensor (extra arrays such as mel filters excluded)
    n_quantized: int  # of which quantized
    file_size: int  # bytes
    seconds: float
    quantization: dict


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "unknown"


def load_exporter(source: str, revision: str | None = None) -> Exporter:
    """The registered exporter for a hub id or local directory, loaded the normal transformers way."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot load a model config from {source!r}: {str(e).splitlines()[0]}") from None
    load = loader_for(config)
    return load(source, config=config, revision=revision)


def _resolved_revision(source: str, revision: str | None) -> str:
    """The commit a hub id resolved to (the snapshot folder of the cached config), else what was asked for."""
    if os.path.isdir(source):
        return revision or "local"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # any hub-cache layout surprise only costs the provenance detail
        cached = None
    if isinstance(cached, str):
        return os.path.basename(os.path.dirname(cached))
    return revision or "unknown"


def provenance(source: str, revision: str | None) -> dict:
    return {
        # a local directory is recorded by its name only: the file must not carry the converting machine's paths
        "source": source if not os.path.isdir(source) else os.path.basename(os.path.normpath(source)),
        "revision": _resolved_revision(source, revision),
        "converter": f"wavq {_version('wavq')}",
        "transformers": _version("transformers"),
        "torch": _version("torch"),
    }


def convert(
    source: str,
    output: str | os.PathLike,
    recipe: Recipe | None = None,
    *,
    dtype: str = "f32",
    force: bool = False,
    revision: str | None = None,
    progress: bool = False,
    calib_items: list | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Convert `source` to a .wq file at `output`.

    `recipe` None (or method "none") exports unquantized in `dtype`. Tensors that stay float (norms, biases,
    positions, and everything when unquantized) are stored in `dtype`.
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a wavq.converter.quant.recipe.Recipe or None, got {type(recipe).__name__}")
    started = time.perf_counter()
    output = os.fspath(output)
    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if os.path.exists(output) and not force:
        raise OutputExistsError(f"{output} exists; pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConversionError(f"output directory {parent} does not exist")
    stage = on_stage or (lambda s: None)

    stage(f"loading {source}")
    exporter = load_exporter(source, revision)
    meta = dict(exporter.meta())
    tensors: list[ExportTensor] = list(exporter.tensors())
    quant_meta: dict = {"method": "none", "dtype": dtype}
    stored: dict[str, Any]
    act_specs: dict[str, ActivationSpec] = {}
    if recipe is None or recipe.plan is None:
        stored = {t.name: t.array for t in tensors}
    else:
        from .quant.pipeline import quantize_tensors

        stage(f"quantizing ({recipe.method})")
        stored, info = quantize_tensors(exporter, tensors, recipe, calib_items, progress)
        act_specs = info.pop("activation_specs", {})  # written on the tensor entries (SPEC.md 5.5), not as meta
        quant_meta = {**recipe.to_meta(), "dtype": dtype, **info}
    meta["quantization"] = quant_meta
    meta["provenance"] = provenance(source, revision)

    stage(f"writing {output}")
    n_params = n_quant = 0
    with WqWriter(output, meta, force=force) as w:
        for t in exporter.extra_tensors():
            w.add(t.name, np.asarray(t.array, dtype=np.float32))
        for name, value in stored.items():
            if isinstance(value, (QuantizedTensor, CodebookTensor)):
                n_quant += int(np.prod(value.shape))
                n_params += int(np.prod(value.shape))
                w.add(name, value, activation=act_specs.get(name))
            else:
                arr = np.asarray(value)
                n_params += arr.size
                w.add(name, arr.astype(DTYPES[dtype], copy=False))
    return ConvertReport(
        output,
        meta.get("architecture", "?"),
        n_params,
        n_quant,
        os.path.getsize(output),
        time.perf_counter() - started,
        quant_meta,
    )
