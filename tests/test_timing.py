"""Word timestamps: DTW and the median filter against plain re-statements of openai-whisper's dtw_cpu / backtrace
and torch median filter, alignment on synthetic attention with a known path, word splitting, punctuation merging
and segment edges."""

from __future__ import annotations

import numpy as np
import pytest

from wavq.runtime.timing import (
    WordTiming,
    assign_words,
    dtw,
    find_alignment,
    median_filter,
    merge_punctuations,
    split_to_word_tokens,
)
from wavq.runtime.tokenizer import ByteLevelBPEDecoder, bytes_to_unicode
from wavq.runtime.types import Segment

B = bytes_to_unicode()


def dtw_reference(x):
    """openai-whisper's dtw_cpu + backtrace, loop for loop (its numba code without numba)."""
    n, m = x.shape
    cost = np.ones((n + 1, m + 1), dtype=np.float32) * np.inf
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    result = []
    while i > 0 or j > 0:
        result.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return np.array(result)[::-1, :].T


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (5, 9), (12, 40), (30, 25)])
def test_dtw_equals_the_reference_loop(shape):
    rng = np.random.default_rng(sum(shape))
    for x in (rng.standard_normal(shape), rng.integers(0, 3, shape).astype(np.float64)):  # the second has ties
        rows, cols = dtw(x)
        ref = dtw_reference(x)
        np.testing.assert_array_equal(rows, ref[0])
        np.testing.assert_array_equal(cols, ref[1])


def test_dtw_follows_a_cheap_monotonic_path():
    x = np.ones((3, 6))
    path = [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    for i, j in path:
        x[i, j] = 0.0
    rows, cols = dtw(x)
    assert list(zip(rows.tolist(), cols.tolist())) == path


def test_median_filter_equals_torch_reference():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 40)).astype(np.float32)
    for width in (1, 3, 7):
        pad = width // 2
        padded = torch.nn.functional.pad(torch.from_numpy(x), (pad, pad, 0, 0), mode="reflect")
        ref = padded.unfold(-1, width, 1).sort()[0][..., pad].numpy()
        np.testing.assert_array_equal(median_filter(x, width), ref)
    short = x[..., :3]
    assert median_filter(short, 7) is short  # too short to reflect-pad: unchanged, as the reference
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, 4)


# -- a toy vocabulary: ids < 100 text, 100 eot -----------------------------------------------------------------
EOT = 100
PIECES = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: " (", 6: "yes", 7: ")", 8: ".", 9: " caf", 10: "é"}


def token_bytes(t):
    if t == EOT:
        return b"<|endoftext|>"
    if t == 11:  # the first byte of "é", and 12 the second: one character split over two tokens
        return "é".encode()[:1]
    if t == 12:
        return "é".encode()[1:]
    return PIECES[t].encode()


def test_split_to_word_tokens():
    words, tokens = split_to_word_tokens([1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, EOT], token_bytes, EOT)
    # "yes" has no leading space, so it joins " (" (openai-whisper splits words at spaces, then merges punctuation)
    assert words == [" Hello", ",", " world", " (yes", ")", ".", " café", "<|endoftext|>"]
    assert tokens == [[1], [2], [3, 4], [5, 6], [7], [8], [9, 11, 12], [EOT]]
    words, tokens = split_to_word_tokens([3, 4, 11, 12], token_bytes, EOT, language="ja")
    assert words == [" wor", "ld", "é"] and tokens == [[3], [4], [11, 12]]


def test_token_bytes_of_the_runtime_decoder_fit():
    vocab = [B[b] for b in range(256)] + ["<|endoftext|>"]
    dec = ByteLevelBPEDecoder(vocab, 256)
    ids = list(b" Ab") + [256]
    assert split_to_word_tokens(ids, dec.token_bytes, 256)[0] == [" Ab", "<|endoftext|>"]


def test_merge_punctuations():
    words = [" (", "yes", ")", " well", ",", " “", "quote", "”", "."]
    alignment = [WordTiming(w, [i], i, i + 1, 0.5) for i, w in enumerate(words)]
    merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    assert [a.word for a in alignment] == ["", " (yes)", "", " well,", "", "", " “quote”.", "", ""]
    assert alignment[1].tokens == [0, 1, 2] and alignment[6].tokens == [5, 6, 7, 8]
    assert alignment[1].start == 1  # times are not merged: a word keeps its own


def _attention_with_path(n_tokens_total, frames_per_row):
    """Scores (heads, tokens, 1500) whose rows attend sharply to consecutive spans of positions."""
    qk = np.full((2, n_tokens_total, 1500), -10.0, dtype=np.float32)
    pos = 0
    for row, n in frames_per_row.items():
        qk[:, row, pos : pos + n] = 10.0
        pos += n
    return qk


def test_find_alignment_recovers_a_known_path():
    # decoder input: sot (1 token), <|notimestamps|>, text [1, 3, 4, 8] = " Hello world.", eot
    text = [1, 3, 4, 8]
    # positions (20 ms each): notimestamps 0-9, Hello 10-34, wor 35-49, ld 50-69, "." 70-74, eot at the rest
    spans = {1: 10, 2: 25, 3: 15, 4: 20, 5: 5, 6: 25}
    qk = _attention_with_path(7, spans)
    words = find_alignment(qk, 1, text, [0.9, 0.8, 0.6, 0.5], num_frames=200, token_bytes=token_bytes, eot=EOT)
    assert [w.word for w in words] == [" Hello", " world", "."]
    # a word runs from where the path enters its first token's row... shifted one row by <|notimestamps|>
    assert [(w.start, w.end) for w in words] == [(0.0, 0.2), (0.2, 1.0), (1.0, 1.4)]
    assert [w.probability for w in words] == pytest.approx([0.9, 0.7, 0.5])
    assert find_alignment(qk, 1, [], [], 200, token_bytes, EOT) == []


def test_assign_words_sets_absolute_times_and_moves_segment_edges():
    segs = [
        Segment(10.0, 12.0, " Hello world.", tokens=[150, 1, 3, 4, 8, 160]),
        Segment(12.0, 13.0, " (yes)", tokens=[5, 6, 7]),
    ]
    alignment = [
        WordTiming(" Hello", [1], 0.1, 0.5, 0.9),
        WordTiming(" world", [3, 4], 0.5, 0.9, 0.8),
        WordTiming(".", [8], 0.9, 1.0, 0.7),
        WordTiming(" (", [5], 2.0, 2.1, 0.6),
        WordTiming("yes", [6], 2.1, 2.5, 0.6),
        WordTiming(")", [7], 2.5, 2.6, 0.6),
    ]
    assign_words(segs, alignment, time_offset=10.0, last_speech_timestamp=10.0, eot=EOT)
    # punctuation joins its word's text and tokens; times stay those of the word itself
    assert [(w.word, w.start, w.end) for w in segs[0].words] == [(" Hello", 10.1, 10.5), (" world.", 10.5, 10.9)]
    assert [(w.word, w.start, w.end) for w in segs[1].words] == [(" (yes)", 12.1, 12.5)]
    assert (segs[0].start, segs[0].end) == (10.1, 10.9)  # segment edges move onto the words
    assert (segs[1].start, segs[1].end) == (12.1, 12.5)
    assert segs[0].words[0].probability == 0.9


def test_a_word_overhanging_its_segment_is_clipped():
    seg = Segment(5.0, 6.0, " so", tokens=[1])
    # after a long pause the word absorbed 3 s of silence: clipped to twice the typical word length
    alignment = [WordTiming(" so", [1], 2.0, 5.9, 0.5), WordTiming(" a", [2], 6.0, 6.2, 0.5)]
    assign_words([seg], alignment, time_offset=0.0, last_speech_timestamp=0.0, eot=EOT)
    median = min(0.7, float(np.median([3.9, 0.2])))
    assert seg.words[0].start == pytest.approx(5.9 - 2 * median) and seg.start == pytest.approx(5.9 - 2 * median)
