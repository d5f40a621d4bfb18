"""The numpy runtime: `load("model.wq").transcribe("talk.wav")`. Imports numpy and msgpack only."""

from __future__ import annotations

import os

from ..formats import FormatError, MalformedHeaderError, WqFile
from .audio import AudioError, load_audio
from .types import Segment, Transcription
from .weights import Weights

ARCHITECTURES = ("whisper", "wav2vec2-ctc")


def load(path: str | os.PathLike, *, cache: bool = False):
    """Open a .wq model. Weights stay memory-mapped and are dequantized per layer as they are used;
    `cache=True` keeps dequantized weights after first use (faster, needs float32 memory for the model)."""
    f = WqFile(path)
    arch = f.meta.get("architecture")
    weights = Weights(f, cache=cache)
    if arch == "whisper":
        from .whisper import WhisperModel

        return WhisperModel(weights)
    if arch == "wav2vec2-ctc":
        from .wav2vec2 import Wav2Vec2CTCModel

        return Wav2Vec2CTCModel(weights)
    f.close()
    raise MalformedHeaderError(
        f.path, f"architecture {arch!r} is not one this runtime runs ({', '.join(ARCHITECTURES)})"
    )


__all__ = ["load", "load_audio", "AudioError", "Transcription", "Segment", "Weights", "FormatError"]
