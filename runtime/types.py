"""Result types shared by every runtime model."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Word:
    word: str  # as spoken in the text, with its leading space and merged punctuation
    start: float  # seconds from the start of the audio
    end: float
    probability: float  # mean probability of the word's tokens


@dataclasses.dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    # long-form decoding details (openai-whisper's segment fields); None where a model does not produce them
    tokens: list[int] | None = None
    temperature: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    words: list[Word] | None = None


@dataclasses.dataclass
class Transcription:
    text: str
    segments: list[Segment] = dataclasses.field(default_factory=list)
    language: str | None = None
    language_probability: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
