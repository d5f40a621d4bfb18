"""Finding utterances on disk: LibriSpeech's layout (with transcripts) or any folder of audio files."""

from __future__ import annotations

import dataclasses
import os

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus", ".m4a", ".aiff", ".aif")


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    path: str
    text: str | None = None  # reference transcript when the dataset has one


class DatasetError(ValueError):
    """A data directory that holds no usable utterances."""


def find_utterances(root: str | os.PathLike, subset: str | None = None) -> list[Utterance]:
    """Utterances under `root` (or `root/subset`), sorted by id.

    LibriSpeech layout: `*.trans.txt` files of `<utt-id> <TEXT>` lines next to `<utt-id>.flac`. Otherwise every
    audio file below the folder, with no transcript.
    """
    root = os.fspath(root)
    base = os.path.join(root, subset) if subset else root
    if not os.path.isdir(base):
        raise DatasetError(f"{base}: no such directory")
    texts: dict[str, str] = {}
    audio: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if fn.endswith(".trans.txt"):
                with open(full, encoding="utf-8") as f:
                    for line in f:
                        utt, _, text = line.strip().partition(" ")
                        if utt:
                            texts[utt] = text.strip()
            elif fn.lower().endswith(AUDIO_EXTENSIONS):
                audio.setdefault(os.path.splitext(fn)[0], full)
    if not audio:
        raise DatasetError(f"{base}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return [Utterance(uid, audio[uid], texts.get(uid)) for uid in sorted(audio)]
