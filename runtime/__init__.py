"""The numpy runtime: `load("model.wq").transcribe("talk.wav")`. Imports numpy and msgpack only."""

from __future__ import annotations

import os

from ..formats import FormatError, MalformedHeaderError, WqFile
from .audio import AudioError, load_audio
from .types import Segment, Transcription
from .wav2vec2 import Wav2Vec2CTCModel
from .weights import Weights, file_order
from .whisper import WhisperModel, reuse_rank

ARCHITECTURES = ("whisper", "wav2vec2-ctc")


def load(
    path: str | os.PathLike, *, cache: bool = False, max_memory: float | None = None
) -> WhisperModel | Wav2Vec2CTCModel:
    """Open a .wq model. Weights stay memory-mapped and are dequantized per layer as they are used;
    `cache=True` keeps dequantized weights after first use (faster, needs float32 memory for the model);
    `max_memory` (bytes) keeps those that fit in that much float32 memory, the most re-read first
    (`Weights.plan`; Whisper: `whisper.reuse_rank`).

    The header's metadata is validated here (runtime/config.py): anything the model cannot run raises
    `MalformedHeaderError` naming the file and the field, before any header value sizes an allocation."""
    f = WqFile(path)
    arch = f.meta.get("architecture")
    try:
        weights = Weights(f, cache=cache, max_memory=max_memory, rank=reuse_rank if arch == "whisper" else file_order)
        if arch == "whisper":
            return WhisperModel(weights)
        if arch == "wav2vec2-ctc":
            return Wav2Vec2CTCModel(weights)
        raise MalformedHeaderError(
            f.path, f"architecture {arch!r} is not one this runtime runs ({', '.join(ARCHITECTURES)})"
        )
    except BaseException:
        f.close()
        raise


__all__ = ["load", "load_audio", "AudioError", "Transcription", "Segment", "Weights", "FormatError"]
