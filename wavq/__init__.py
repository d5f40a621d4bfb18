"""wavq: quantized Whisper and Wav2Vec2-CTC speech recognition with a numpy + msgpack runtime.

    from wavq import load
    result = load("base.wq").transcribe("talk.flac")

The exported names are imported on first use (PEP 562), not when `wavq` is: every `wavq.*` module imports this
file first, and the `wavq` command must set the BLAS thread count (`--threads`) before numpy is first imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .runtime import load
    from .runtime.types import Segment, Transcription, Word

_EXPORTS = {
    "load": "wavq.runtime",
    "Transcription": "wavq.runtime.types",
    "Segment": "wavq.runtime.types",
    "Word": "wavq.runtime.types",
}

__all__ = ["load", "Transcription", "Segment", "Word", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wavq' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
