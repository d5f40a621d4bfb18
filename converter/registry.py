"""Architecture registry: exporters register by Hugging Face config class and say what they cannot convert."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .calibrate import CalibItem
    from .quant.sequential import Calibration

# Tensor kinds. Weights of these kinds are quantized; everything else (norms, biases, positions) stays float.
QUANTIZABLE_KINDS = ("linear", "conv", "embedding")


# What torch.load's weights-only unpickler raises on a damaged pytorch_model.bin besides its UnpicklingError: its
# stack and memo handling fail on random bytes with these. Caught only around loading a checkpoint's weights.
DAMAGED_PICKLE_ERRORS: tuple[type[Exception], ...] = (IndexError, KeyError)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class ConversionError(Exception):
    """A conversion cannot proceed; the message says why in the user's terms."""


class UnsupportedModelError(ConversionError):
    """The checkpoint is not one wavq can convert (architecture, head, or feature)."""


@dataclasses.dataclass
class ExportTensor:
    name: str  # the Hugging Face state_dict key, verbatim (exceptions are listed by each exporter)
    array: np.ndarray  # float32, checkpoint layout
    kind: str  # "linear" | "conv" | "embedding" | "norm" | "bias" | "other"

    @property
    def quantizable(self) -> bool:
        return self.kind in QUANTIZABLE_KINDS and self.array.ndim >= 2


class Exporter:
    """One architecture's export: its metadata for the runtime and its tensors, in forward order."""

    architecture: str = ""

    def __init__(self, model: Any, source: str):
        self.model = model
        self.source = source

    def meta(self) -> dict:
        """Everything the runtime needs besides tensors: dims, vocabulary, preprocessing, generation."""
        raise NotImplementedError

    def tensors(self) -> Iterator[ExportTensor]:
        raise NotImplementedError

    def extra_tensors(self) -> Iterator[ExportTensor]:
        """Non-weight arrays the runtime needs (e.g. the mel filterbank). Never quantized."""
        return iter(())

    def calibration(
        self, items: list[CalibItem], tensors: list[ExportTensor], split_attention: bool = True
    ) -> Calibration | None:
        """The block-sequential calibration set-up on `items` (quant/sequential.py), or None when the
        architecture has none (calibrated methods then refuse it; clip search and mixed precision fall back to
        weight-error objectives). `split_attention` False keeps each attention one block (AWQ needs it)."""
        return None


@dataclasses.dataclass
class Registration:
    config_classes: tuple[type, ...]
    load: Callable[[str, dict], Exporter]  # (source, load kwargs) -> Exporter


_REGISTRY: list[Registration] = []


def register(*config_classes: type) -> Callable:
    """Decorator for a loader function `load(source, **kwargs) -> Exporter` handling these config classes."""

    def deco(fn):
        _REGISTRY.append(Registration(tuple(config_classes), fn))
        return fn

    return deco


# Modules whose import registers an architecture. Imported on first use, so `import wavq.converter` stays cheap.
ARCHITECTURE_MODULES = ("wavq.converter.whisper", "wavq.converter.wav2vec2")
_imported = False


def _import_architectures() -> None:
    global _imported
    if not _imported:
        import importlib

        for mod in ARCHITECTURE_MODULES:
            importlib.import_module(mod)
        _imported = True


def supported_configs() -> list[str]:
    _import_architectures()
    return sorted({c.__name__ for r in _REGISTRY for c in r.config_classes})


def loader_for(config: Any) -> Callable:
    _import_architectures()
    for r in _REGISTRY:
        if type(config) in r.config_classes:
            return r.load
    raise UnsupportedModelError(
        f"model type {getattr(config, 'model_type', type(config).__name__)!r} is not supported; wavq converts "
        f"{', '.join(supported_configs())}"
    )
