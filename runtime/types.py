"""Result types shared by every runtime model."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str


@dataclasses.dataclass
class Transcription:
    text: str
    segments: list[Segment] = dataclasses.field(default_factory=list)
    language: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
