"""What every benchmark table states about where it was measured."""

from __future__ import annotations

import os
import platform
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
