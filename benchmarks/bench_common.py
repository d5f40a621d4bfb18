"""What every benchmark table states about where it was measured, and the transformers-side helpers several
benchmarks share (a .wq file's weights and activation rounding in transformers' Whisper)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from importlib import metadata


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def versions() -> str:
    parts = []
    for pkg in ("numpy", "torch", "transformers"):
        try:
            parts.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def load_wq_weights(model, path: str) -> None:
    """Copy the dequantized weights of a .wq file into a transformers Whisper model (what the numpy runtime
    computes with; an input_scale the runtime divides by is folded into its weight's columns)."""
    import numpy as np
    import torch

    from wavq.formats import WqFile

    params = dict(model.named_parameters())
    wq = WqFile(path)
    names = [n for n in wq.tensors if not n.endswith(".input_scale") and n in params]
    missing = set(params) - set(names) - {"proj_out.weight"}  # proj_out is tied to embed_tokens
    if missing:
        raise RuntimeError(f"{path}: no tensor for {sorted(missing)[:3]}")
    with torch.no_grad():
        for name in names:
            w = np.array(wq.array(name))
            scale = name.removesuffix(".weight") + ".input_scale"
            if name.endswith(".weight") and scale in wq.tensors:
                w = w / wq.array(scale)[None, :]
            params[name].copy_(torch.from_numpy(w).reshape(params[name].shape))
    wq.close()


# Whisper's output projection multiplies by the token embedding: its input spec is stored with that tensor
TIED_WEIGHTS = {"model.decoder.embed_tokens.weight": "proj_out"}


@contextlib.contextmanager
def quantized_inputs(model, specs: dict) -> Iterator[None]:
    """Within the block the input of each module named in `specs` (module name -> ActivationSpec) is rounded as
    the runtime's integer path rounds it (converter.quant.act.fake_quantize: the same codes, as float values)."""
    from wavq.converter.quant.act import fake_quantize

    modules = dict(model.named_modules())

    def hook_for(spec):
        return lambda _module, args: (fake_quantize(args[0], spec).to(args[0].dtype), *args[1:])

    handles = [modules[name].register_forward_pre_hook(hook_for(spec)) for name, spec in specs.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def file_input_specs(path: str) -> dict:
    """Module name -> ActivationSpec of every linear input a .wq file quantizes, for quantized_inputs. Rotated
    or input-scaled weights are refused: their codes are taken of x R or x / s, which plain hooks do not model."""
    from wavq.formats import WqFile

    with WqFile(path) as f:
        specs = {n: f.info(n).activation for n in f.tensors if f.info(n).activation is not None}
        odd = [n for n in specs if f.info(n).rotation or n.removesuffix(".weight") + ".input_scale" in f.tensors]
    if odd:
        raise ValueError(f"{path}: {odd[0]} is rotated or input-scaled; the hook simulation does not model it")
    return {TIED_WEIGHTS.get(n, n.removesuffix(".weight")): spec for n, spec in specs.items()}
