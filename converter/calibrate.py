"""Calibration audio: a LibriSpeech-layout directory or any folder of audio files, N utterances chosen by seed.

Selection is deterministic: every audio file under the directory (recursively, sorted by relative path) is a
candidate, and numpy's default_rng(seed) picks N of them without replacement; the chosen files are returned in
path order. Transcripts come from LibriSpeech's `<speaker>-<chapter>.trans.txt` files (`<utt-id> TEXT` per line)
wherever they exist; other files have text None (Whisper's calibration then uses the float model's own output).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..evaluation.datasets import overlap_warning  # noqa: F401  (re-exported: converter users call it here)
from ..runtime.audio import SAMPLE_RATE, load_audio
from .registry import ConversionError

MAX_SECONDS = 30.0  # longer files are cut: Whisper sees 30 s windows, and it bounds Wav2Vec2's attention cost
AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif")
TRANSCRIPT_SUFFIX = ".trans.txt"


class CalibrationError(ConversionError):
    """Calibration audio that cannot be used (missing directory, no audio files, unreadable files)."""


@dataclasses.dataclass(frozen=True)
class CalibItem:
    id: str  # the file name without extension (the LibriSpeech utterance id)
    audio: np.ndarray  # float32 mono at SAMPLE_RATE, at most MAX_SECONDS long
    text: str | None = None  # reference transcript when the directory has one
    path: str | None = None  # relative to the calibration directory


def list_audio_files(root: str | os.PathLike) -> list[Path]:
    """Audio files under root (or root itself if it is a file), sorted by their path relative to root."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CalibrationError(f"calibration audio {root} does not exist")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_transcripts(root: str | os.PathLike) -> dict[str, str]:
    """utterance id -> transcript from every *.trans.txt file under root (LibriSpeech layout)."""
    root = Path(root)
    if root.is_file():
        root = root.parent
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*" + TRANSCRIPT_SUFFIX)):
        for line in path.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt and text:
                out[utt] = text.strip()
    return out


def choose(n_files: int, n: int, seed: int) -> list[int]:
    """Indices of the files to use: min(n, n_files) of them, by seed, in increasing order."""
    if n < 1:
        raise CalibrationError(f"the number of calibration samples must be >= 1, got {n}")
    if n >= n_files:
        return list(range(n_files))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_files, size=n, replace=False))


def select_calibration(path: str | os.PathLike, n: int = 128, seed: int = 0) -> list[CalibItem]:
    """Load n calibration utterances (fewer if the directory has fewer) chosen deterministically by seed."""
    root = Path(path)
    files = list_audio_files(root)
    if not files:
        raise CalibrationError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    texts = read_transcripts(root)
    base = root.parent if root.is_file() else root
    items = []
    max_samples = int(MAX_SECONDS * SAMPLE_RATE)
    for i in choose(len(files), n, seed):
        f = files[i]
        try:
            audio = load_audio(f, SAMPLE_RATE)
        except (ValueError, OSError, RuntimeError) as e:
            raise CalibrationError(f"cannot read calibration audio {f}: {e}") from None
        items.append(
            CalibItem(
                id=f.stem,
                audio=np.ascontiguousarray(audio[:max_samples], dtype=np.float32),
                text=texts.get(f.stem),
                path=f.relative_to(base).as_posix(),
            )
        )
    return items
