"""Transcript files: txt, srt, vtt, tsv and json, as openai-whisper's writers format them.

- txt: one segment per line;
- srt: numbered cues, HH:MM:SS,mmm times;
- vtt: a WEBVTT header, MM:SS.mmm times (hours only when needed);
- tsv: start and end in integer milliseconds (no locale can turn a decimal point into a comma), then the text;
- json: the whole result (segments with their decoding fields and words).
With word timings, a subtitle cue spans its segment's first to last word. Files are written to a temporary name
in the output folder and renamed, so a failure never leaves a half-written transcript.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator

from .types import Transcription

MS_PER_HOUR = 3_600_000
MS_PER_MINUTE = 60_000
MS_PER_SECOND = 1_000


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    if seconds < 0:
        raise ValueError(f"timestamps are not negative, got {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, MS_PER_HOUR)
    minutes, ms = divmod(ms, MS_PER_MINUTE)
    secs, ms = divmod(ms, MS_PER_SECOND)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cues(result: Transcription) -> Iterator[tuple[float, float, str]]:
    """(start, end, text) per subtitle: from the words when there are word timings, else from the segments."""
    if result.segments and result.segments[0].words is not None:
        for s in result.segments:
            if s.words:
                text = s.words[0].word.strip() + "".join(w.word for w in s.words[1:])
                yield s.words[0].start, s.words[-1].end, text
        return
    for s in result.segments:
        yield s.start, s.end, s.text.strip().replace("-->", "->")


def to_txt(result: Transcription) -> str:
    return "".join(s.text.strip() + "\n" for s in result.segments)


def to_srt(result: Transcription) -> str:
    cues = []
    for i, (start, end, text) in enumerate(_cues(result), start=1):
        a, b = format_timestamp(start, True, ","), format_timestamp(end, True, ",")
        cues.append(f"{i}\n{a} --> {b}\n{text}\n\n")
    return "".join(cues)


def to_vtt(result: Transcription) -> str:
    cues = (f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n\n" for start, end, text in _cues(result))
    return "WEBVTT\n\n" + "".join(cues)


def to_tsv(result: Transcription) -> str:
    rows = (
        f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}\n"
        for s in result.segments
    )
    return "start\tend\ttext\n" + "".join(rows)


def to_json(result: Transcription) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False)


FORMATS: dict[str, Callable[[Transcription], str]] = {
    "txt": to_txt,
    "vtt": to_vtt,
    "srt": to_srt,
    "tsv": to_tsv,
    "json": to_json,
}
OUTPUT_FORMATS = (*FORMATS, "all")


def write_result(result: Transcription, name: str, output_dir: str | os.PathLike, output_format: str) -> list[str]:
    """Write `<output_dir>/<name>.<ext>` for one format or `all`; returns the paths written."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    formats = list(FORMATS) if output_format == "all" else [output_format]
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for fmt in formats:
        path = os.path.join(os.fspath(output_dir), f"{name}.{fmt}")
        write_atomic(path, FORMATS[fmt](result))
        paths.append(path)
    return paths


def write_atomic(path: str, text: str) -> None:
    """`text` as utf-8 at `path`, via a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
