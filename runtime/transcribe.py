"""Long-form transcription: openai-whisper's sequential seek loop over 30-s windows, apart from any model.

For each window starting at `seek` the decoder writes timestamped segments (<|t0|> text <|t1|> ...). The loop
- keeps every segment closed by a timestamp pair, and seeks to the last closed segment's end (so a sentence cut by
  the window edge is decoded again, whole, in the next window); a window that ends on a single timestamp (no
  speech after it) or has no timestamp pair is consumed whole;
- conditions each window on the text so far (<|startofprev|> prompt), unless a window needed a temperature
  above 0.5, after which the earlier text is dropped from the prompt;
- re-decodes a window at the next temperature when its text compresses too well (a loop: gzip ratio above 2.4)
  or its tokens are improbable (average log-probability below -1), unless it is silence;
- skips a window as silence when <|nospeech|> is likely (0.6) and the decoding is improbable.

The model side is one callable, `decode_window(mel_segment, prompt, temperature) -> WindowDecoding`, so the loop
is tested with scripted decodings and any decoder (greedy or beam, any precision) plugs in.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from .timestamps import TIME_PRECISION
from .types import Segment, Transcription

SAMPLE_RATE = 16_000  # Hz
HOP_LENGTH = 160  # samples between mel frames: 10 ms
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
N_FRAMES = 3000  # 30 s of 10-ms mel frames: one window
INPUT_STRIDE = 2  # mel frames per encoder position, i.e. per timestamp step (TIME_PRECISION = 2 frames)
PAD_LOG_MEL = 0.0  # value past the end of the audio in a window's log-mel (openai-whisper and transformers pad 0)
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's fallback schedule
COMPRESSION_RATIO_THRESHOLD = 2.4  # gzip ratio of a window's text above which it is taken for a repetition loop
LOGPROB_THRESHOLD = -1.0  # average log-probability per token below which a decoding is taken as failed
NO_SPEECH_THRESHOLD = 0.6  # probability of <|nospeech|> above which an improbable window is taken as silence
PROMPT_RESET_TEMPERATURE = 0.5  # text decoded hotter than this is not used as a prompt


@dataclasses.dataclass(frozen=True)
class WindowDecoding:
    """What the decoder returns for one window at one temperature."""

    tokens: list[int]  # sampled tokens, timestamps included, end of text excluded
    avg_logprob: float  # sum of the sampled tokens' log-probabilities (end of text included) / (len(tokens) + 1)
    no_speech_prob: float  # probability of <|nospeech|> at the <|startoftranscript|> position
    temperature: float


class DecodeWindow(Protocol):
    def __call__(self, mel_segment: np.ndarray, prompt: list[int], temperature: float) -> WindowDecoding:
        """Decode one (n_mels, N_FRAMES) window; `prompt` is the previous text's tokens (without <|startofprev|>,
        possibly longer than the decoder takes: it keeps the last n_text_ctx // 2 - 1)."""
        ...


# (segments of one window, the window's log-mel, its frames of real audio, the window's start in seconds,
#  the last word end so far) -> sets each segment's words (and may move its start/end onto them)
WordAligner = Callable[[list[Segment], np.ndarray, int, float, float], None]


@dataclasses.dataclass(frozen=True)
class TranscribeOptions:
    temperature: tuple[float, ...] = TEMPERATURES
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD
    logprob_threshold: float | None = LOGPROB_THRESHOLD
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD
    condition_on_previous_text: bool = True

    def __post_init__(self) -> None:
        if not self.temperature:
            raise ValueError("at least one temperature is needed")
        if any(t < 0 for t in self.temperature):
            raise ValueError(f"temperatures must be >= 0, got {self.temperature}")


def compression_ratio(text: str) -> float:
    """Raw / zlib-compressed length of the utf-8 text: repetition loops compress far better than speech."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def decode_with_fallback(
    decode_window: DecodeWindow,
    mel_segment: np.ndarray,
    prompt: list[int],
    decode_text: Callable[[Sequence[int]], str],
    options: TranscribeOptions,
) -> tuple[WindowDecoding, float]:
    """The first decoding (coldest first) that passes the thresholds, else the hottest; and its compression ratio."""
    for temperature in options.temperature:
        result = decode_window(mel_segment, prompt, temperature)
        ratio = compression_ratio(decode_text(result.tokens).strip())
        too_repetitive = options.compression_ratio_threshold is not None and ratio > options.compression_ratio_threshold
        improbable = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
        silent = options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
        if not (too_repetitive or improbable) or (silent and improbable):
            break
    return result, ratio


def transcribe_windows(
    mel: np.ndarray,
    content_frames: int,
    decode_window: DecodeWindow,
    decode_text: Callable[[Sequence[int]], str],
    *,
    timestamp_begin: int,
    eot: int,
    options: TranscribeOptions = TranscribeOptions(),  # noqa: B008 (frozen, so one shared default is safe)
    initial_prompt_tokens: Sequence[int] = (),
    align_words: WordAligner | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Transcription:
    """The seek loop over the log-mel `mel` (n_mels, >= content_frames) of the whole recording.

    `decode_text` turns tokens into text (special tokens dropped). `align_words`, when given, adds words to the
    segments of each window, and the next window then starts at the last word's end (or the last segment's
    end when no word was found), as openai-whisper does.
    `progress(done_frames, content_frames)` is called after each window. The language is the caller's to set.
    """
    seek = 0
    all_tokens: list[int] = list(initial_prompt_tokens)
    prompt_reset_since = 0
    segments: list[Segment] = []
    last_speech_timestamp = 0.0
    while seek < content_frames:
        time_offset = seek / FRAMES_PER_SECOND
        segment_size = min(N_FRAMES, content_frames - seek)
        content = mel[:, seek : seek + segment_size]
        if np.ptp(content) == 0:
            # no signal at all (digital silence: every log-mel value at the floor) is not decoded: Whisper writes
            # " you" for it with P(<|nospeech|>) ~0.94 but a log-probability above the silence rule's threshold
            seek += segment_size
            if progress is not None:
                progress(min(seek, content_frames), content_frames)
            continue
        mel_segment = pad_or_trim(content, N_FRAMES)
        result, ratio = decode_with_fallback(
            decode_window, mel_segment, all_tokens[prompt_reset_since:], decode_text, options
        )
        previous_seek = seek
        if _is_silence(result, options):
            seek += segment_size
        else:
            current, advance, single_ending = split_window(
                result.tokens, timestamp_begin, time_offset, segment_size, _fields(result, ratio, eot, decode_text)
            )
            seek += advance
            if align_words is not None:
                align_words(current, mel_segment, segment_size, time_offset, last_speech_timestamp)
                speech_end = _speech_end(current)
                if not single_ending and speech_end is not None and speech_end > time_offset:
                    seek = round(speech_end * FRAMES_PER_SECOND)
                if speech_end is not None:
                    last_speech_timestamp = speech_end
            for s in current:  # an instantaneous or empty segment keeps its times but no text
                if s.start == s.end or not s.text.strip():
                    s.text, s.tokens = "", []
                    if s.words is not None:
                        s.words = []
            segments.extend(current)
            all_tokens.extend(t for s in current for t in s.tokens or ())
            if not options.condition_on_previous_text or result.temperature > PROMPT_RESET_TEMPERATURE:
                prompt_reset_since = len(all_tokens)
        if progress is not None:
            progress(min(seek, content_frames), content_frames)
        if seek <= previous_seek:  # cannot happen with the timestamp rules; guards a decoder that breaks them
            seek = previous_seek + segment_size
    return Transcription(decode_text(all_tokens[len(initial_prompt_tokens) :]), segments)


def _is_silence(result: WindowDecoding, options: TranscribeOptions) -> bool:
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    # a confident decoding is kept despite a high <|nospeech|> probability
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def _fields(
    result: WindowDecoding, ratio: float, eot: int, decode_text: Callable[[Sequence[int]], str]
) -> Callable[[float, float, list[int]], Segment]:
    def make(start: float, end: float, tokens: list[int]) -> Segment:
        return Segment(
            start=start,
            end=end,
            text=decode_text([t for t in tokens if t < eot]),
            tokens=tokens,
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=ratio,
            no_speech_prob=result.no_speech_prob,
        )

    return make


def split_window(
    tokens: Sequence[int],
    timestamp_begin: int,
    time_offset: float,
    segment_size: int,
    make: Callable[[float, float, list[int]], Segment],
) -> tuple[list[Segment], int, bool]:
    """Segments of one window's tokens, the mel frames to advance by, and whether it ended on a single timestamp.

    Segments are the runs between consecutive timestamp pairs. With no pair, the whole window is one segment that
    ends at its last timestamp (if any besides <|0.00|>) or at the window's end.
    """
    tokens = [int(t) for t in tokens]
    is_ts = [t >= timestamp_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]

    def at(token: int) -> float:
        return time_offset + (token - timestamp_begin) * TIME_PRECISION

    if not cuts:
        timestamps = [t for t, ts in zip(tokens, is_ts) if ts]
        if timestamps and timestamps[-1] != timestamp_begin:
            end = at(timestamps[-1])
        else:
            end = time_offset + segment_size / FRAMES_PER_SECOND
        return [make(time_offset, end, tokens)], segment_size, single_ending
    if single_ending:
        cuts.append(len(tokens))
    segments, last = [], 0
    for cut in cuts:
        piece = tokens[last:cut]
        segments.append(make(at(piece[0]), at(piece[-1]), piece))
        last = cut
    if single_ending:  # nothing is said after the last timestamp
        return segments, segment_size, True
    # the text after the last pair is unfinished: decode it again from the last closed segment's end
    return segments, (tokens[last - 1] - timestamp_begin) * INPUT_STRIDE, False


def pad_or_trim(mel: np.ndarray, n_frames: int = N_FRAMES) -> np.ndarray:
    """(n_mels, n_frames): cut, or padded on the right with PAD_LOG_MEL."""
    if mel.shape[-1] >= n_frames:
        return np.ascontiguousarray(mel[:, :n_frames])
    pad = np.full((mel.shape[0], n_frames - mel.shape[-1]), PAD_LOG_MEL, dtype=mel.dtype)
    return np.concatenate([mel, pad], axis=-1)


def _speech_end(segments: list[Segment]) -> float | None:
    """End of the last word, else of the last segment (openai-whisper's get_end)."""
    ends = [w.end for s in segments for w in s.words or ()]
    if ends:
        return ends[-1]
    return segments[-1].end if segments else None
