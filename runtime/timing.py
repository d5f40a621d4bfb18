"""Word-level timestamps from cross-attention, as openai-whisper's timing.py computes them.

The decoder is run once more over <|startoftranscript|>... <|notimestamps|> text <|endoftext|>; the cross-attention
scores of the model's alignment heads (decoder layer, head pairs that follow the audio in time) are softmaxed over
the window's audio frames, normalised per frame across tokens, median-filtered along time and averaged over the
heads. Dynamic time warping then finds the monotonic token -> time path of highest attention, and a word starts
where the path enters its first token. Punctuation is merged into its neighbouring words; words at pauses and
segment edges are clipped to a plausible length.

Everything here is numpy on arrays the model hands over: `find_alignment` takes the scores and the tokens'
probabilities, `assign_words` puts the words into the window's segments.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence

import numpy as np

from .types import Segment, Word

TOKENS_PER_SECOND = 50  # encoder positions (and timestamp steps) per second: 20 ms each
MEDIAN_FILTER_WIDTH = 7  # encoder positions, openai-whisper's medfilt_width
PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # merged into the following word
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # merged into the preceding word
SENTENCE_END_MARKS = ".。!！?？"
MAX_MEDIAN_WORD_DURATION = 0.7  # seconds: the typical word length is capped at this when clipping long words
LONG_PAUSE_MEDIANS = 4  # a first word ending this many median durations after the last speech follows a pause
SEGMENT_EDGE_SLACK = 0.5  # seconds a word may overhang its segment's timestamp before the timestamp wins
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})  # words are split at character boundaries


@dataclasses.dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the window's start
    end: float
    probability: float


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of `width` (odd) along the last axis, reflect-padded at the ends."""
    if width <= 0 or width % 2 == 0:
        raise ValueError(f"the median filter width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:  # too short to reflect-pad: left as it is (as the reference)
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through the cost matrix x (N, M) from (0, 0) to (N-1, M-1).

    Returns (row indices, column indices) along the path. Steps are diagonal, down or right; ties go right, then
    down, as openai-whisper's dtw_cpu (float32 accumulated costs, float64 additions). Cells on one anti-diagonal
    depend only on the two before it, so each anti-diagonal is computed at once.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):  # cells (i, j), 1 <= i <= n, 1 <= j <= m, with i + j = d
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        c = np.choose(t, [c0, c1, c2])
        cost[i, j] = (x[i - 1, j - 1] + c.astype(np.float64)).astype(np.float32)
        trace[i, j] = t
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_tokens_on_unicode(
    tokens: Sequence[int], token_bytes: Callable[[int], bytes]
) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped so that each group decodes to whole characters (a character may span tokens)."""

    def decode(ts: Sequence[int]) -> str:
        return b"".join(token_bytes(t) for t in ts).decode("utf-8", errors="replace")

    full = decode(tokens)
    words: list[str] = []
    groups: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for t in tokens:
        current.append(t)
        text = decode(current)
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            words.append(text)
            groups.append(current)
            current = []
            offset += len(text)
    return words, groups


def split_to_word_tokens(
    tokens: Sequence[int], token_bytes: Callable[[int], bytes], eot: int, language: str | None = None
) -> tuple[list[str], list[list[int]]]:
    """Words (with their leading space) and their tokens; punctuation and special tokens are words of their own."""
    subwords, groups = split_tokens_on_unicode(tokens, token_bytes)
    if language in NO_SPACE_LANGUAGES:
        return subwords, groups
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for sub, group in zip(subwords, groups):
        if group[0] >= eot or sub.startswith(" ") or sub.strip() in string.punctuation or not words:
            words.append(sub)
            word_tokens.append(list(group))
        else:
            words[-1] += sub
            word_tokens[-1].extend(group)
    return words, word_tokens


def attention_matrix(
    qk: np.ndarray, num_frames: int, medfilt_width: int = MEDIAN_FILTER_WIDTH, qk_scale: float = 1.0
) -> np.ndarray:
    """(tokens, positions) alignment matrix from the alignment heads' raw cross-attention scores qk (heads, tokens,
    1500): softmax over the audio's positions, standardised per position across tokens, median-filtered, mean."""
    w = np.asarray(qk, dtype=np.float32)[:, :, : num_frames // 2] * np.float32(qk_scale)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    mean = w.mean(axis=-2, keepdims=True)
    std = w.std(axis=-2, keepdims=True)
    w = (w - mean) / std
    return median_filter(w, medfilt_width).mean(axis=0)


def find_alignment(
    qk: np.ndarray,
    sot_length: int,
    text_tokens: Sequence[int],
    text_token_probs: Sequence[float],
    num_frames: int,
    token_bytes: Callable[[int], bytes],
    eot: int,
    *,
    language: str | None = None,
    medfilt_width: int = MEDIAN_FILTER_WIDTH,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Words of `text_tokens` with times relative to the window.

    qk: the alignment heads' cross-attention scores (heads, tokens, 1500) for the decoder input
    [sot sequence (sot_length tokens), <|notimestamps|>, *text_tokens, <|endoftext|>]; text_token_probs: each text
    token's probability under the model in that same pass; num_frames: mel frames of real audio in the window.
    """
    if not text_tokens:
        return []
    matrix = attention_matrix(qk, num_frames, medfilt_width, qk_scale)[sot_length:-1]  # <|notimestamps|> + text
    text_indices, time_indices = dtw(-matrix)
    words, word_tokens = split_to_word_tokens(list(text_tokens) + [eot], token_bytes, eot, language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    probs = np.asarray(text_token_probs, dtype=np.float64)
    return [
        WordTiming(word, tokens, float(jump_times[i]), float(jump_times[j]), float(np.mean(probs[i:j])))
        for word, tokens, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:])
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Opening punctuation joins the next word, closing punctuation the previous one (emptied words stay, empty)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def assign_words(
    segments: list[Segment],
    alignment: list[WordTiming],
    time_offset: float,
    last_speech_timestamp: float,
    eot: int,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
) -> None:
    """Give each segment of one window its words (absolute times); clip implausibly long words at pauses and
    sentence ends, and move segment edges onto the words unless a word overhangs the segment's timestamp."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(MAX_MEDIAN_WORD_DURATION, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    index = 0
    for segment in segments:
        n_text = sum(1 for t in segment.tokens or () if t < eot)
        saved = 0
        words: list[Word] = []
        while index < len(alignment) and saved < n_text:
            timing = alignment[index]
            if timing.word:
                start, end = round(time_offset + timing.start, 2), round(time_offset + timing.end, 2)
                words.append(Word(timing.word, start, end, timing.probability))
            saved += len(timing.tokens)
            index += 1
        if words:
            _clip_edges(segment, words, median, longest, last_speech_timestamp)
            last_speech_timestamp = segment.end
        segment.words = words


def _clip_edges(segment: Segment, words: list[Word], median: float, longest: float, last_speech: float) -> None:
    first = words[0]
    # after a pause the first (and second) word may have absorbed the silence: keep them at most `longest`
    if first.end - last_speech > median * LONG_PAUSE_MEDIANS and (
        first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            first.end = words[1].start = boundary
        first.start = max(0, first.end - longest)
    if segment.start < first.end and segment.start - SEGMENT_EDGE_SLACK > first.start:
        first.start = max(0, min(first.end - median, segment.start))
    else:
        segment.start = first.start
    last = words[-1]
    if segment.end > last.start and segment.end + SEGMENT_EDGE_SLACK < last.end:
        last.end = max(last.start + median, segment.end)
    else:
        segment.end = last.end
