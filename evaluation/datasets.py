"""Finding utterances on disk: LibriSpeech's layout (with transcripts) or any folder of audio files."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

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


def _stem(path_or_id: str) -> str:
    """File name without folder and extension: an utterance id from a path or an id."""
    return os.path.splitext(os.path.basename(path_or_id))[0]


def _speaker(utterance_id: str) -> str | None:
    """The speaker of a LibriSpeech id (<speaker>-<chapter>-<n>), None for other ids."""
    return utterance_id.split("-")[0] if utterance_id.count("-") == 2 else None


def overlap_warning(calibration: Iterable[str], evaluation: Iterable[str]) -> str | None:
    """A warning when evaluation utterances were used for calibration, else None.

    Both arguments are utterance ids (file names without extension; a .wq file lists its calibration ids in
    meta["quantization"]["calibration"]["ids"]). LibriSpeech ids are <speaker>-<chapter>-<n>: when no utterance
    is shared but speakers are, that is reported too (milder: the subsets are meant to have disjoint speakers).
    """
    calib = {_stem(c) for c in calibration}
    evals = [_stem(e) for e in evaluation]
    shared = sorted({e for e in evals if e in calib})
    if shared:
        return (
            f"{len(shared)} of {len(evals)} evaluation utterances were used for calibration "
            f"(e.g. {', '.join(shared[:3])}); their error rates are optimistic"
        )
    calib_speakers = {s for s in map(_speaker, calib) if s is not None}
    shared_speakers = sorted({s for s in map(_speaker, evals) if s is not None} & calib_speakers)
    if shared_speakers:
        return (
            f"evaluation and calibration share {len(shared_speakers)} LibriSpeech speaker(s) "
            f"({', '.join(shared_speakers[:3])}); results may be optimistic"
        )
    return None


def spread(utterances: Sequence[Utterance], n: int | None) -> list[Utterance]:
    """`n` utterances evenly spaced over the sorted list (so over all its speakers), or all of them when n is None.

    The benchmarks' subsets of a test set: the same n always picks the same utterances.
    """
    if not n or n >= len(utterances):
        return list(utterances)
    step = len(utterances) / n
    return [utterances[int(i * step)] for i in range(n)]
