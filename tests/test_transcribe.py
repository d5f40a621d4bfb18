"""The long-form seek loop with a scripted decoder: seeks, segments, prompts, temperature fallback and silence
skipping, against what openai-whisper's transcribe() does with the same decodings (worked out by hand below)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wavq.runtime.transcribe import (
    N_FRAMES,
    TranscribeOptions,
    WindowDecoding,
    compression_ratio,
    split_window,
    transcribe_windows,
)
from wavq.runtime.types import Segment, Word

EOT, TS = 50, 100  # text tokens 0..49, end of text 50, <|0.00|> = 100 (so <|t|> = 100 + t / 0.02)
N_MELS = 4


def ts(seconds: float) -> int:
    return TS + round(seconds / 0.02)


def decode_text(tokens) -> str:
    return "".join(f" w{t}" for t in tokens if t < EOT)


@dataclasses.dataclass
class Call:
    seek: int
    prompt: list[int]
    temperature: float


class ScriptedDecoder:
    """Returns the scripted decodings in order; records where each window started (the mel holds frame indices)."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[Call] = []

    def __call__(self, mel_segment, prompt, temperature):
        assert mel_segment.shape == (N_MELS, N_FRAMES)
        self.calls.append(Call(int(mel_segment[0, 0]), list(prompt), temperature))
        tokens, avg_logprob, no_speech = self.script.pop(0)
        return WindowDecoding(list(tokens), avg_logprob, no_speech, temperature)


def run(script, content_frames, **kw):
    mel = np.tile(np.arange(content_frames, dtype=np.float32), (N_MELS, 1))  # frame j holds j
    decoder = ScriptedDecoder(script)
    options = kw.pop("options", TranscribeOptions())
    result = transcribe_windows(
        mel, content_frames, decoder, decode_text, timestamp_begin=TS, eot=EOT, options=options, **kw
    )
    assert not decoder.script, "every scripted decoding is used"
    return result, decoder.calls


OK = -0.2  # a confident average log-probability
W1 = [ts(0), 1, 2, ts(5), ts(5), 3, ts(12), ts(12), 4, 5]  # two closed segments, then an unfinished one
W2 = [ts(0), 4, 5, ts(8)]  # no pair: one segment up to its last timestamp
W3 = [ts(0), 6, ts(2), ts(2), 7, ts(2.8)]  # a pair, then a single timestamp before end of text


def test_seeks_to_the_last_closed_segment():
    result, calls = run([(W1, OK, 0.01), (W2, OK, 0.01), (W3, OK, 0.01)], content_frames=4500)
    # window 1 at 0; its unfinished "w4 w5" is dropped and decoding resumes at the last pair, 12 s = frame 1200;
    # window 2 has no pair, so the whole 30 s is consumed: 1200 + 3000 = 4200; window 3 holds the last 3 s
    assert [c.seek for c in calls] == [0, 1200, 4200]
    times = [(round(s.start, 6), round(s.end, 6)) for s in result.segments]
    assert times == [(0, 5), (5, 12), (12, 20), (42, 44), (44, 44.8)]
    assert [s.tokens for s in result.segments] == [W1[:4], W1[4:7], W2, W3[:3], W3[3:]]
    assert [s.text for s in result.segments] == [" w1 w2", " w3", " w4 w5", " w6", " w7"]
    assert result.text == " w1 w2 w3 w4 w5 w6 w7"
    # each window is prompted with every token kept so far, timestamps included
    assert calls[0].prompt == [] and calls[1].prompt == W1[:7] and calls[2].prompt == W1[:7] + W2
    s = result.segments[0]
    assert (s.temperature, s.avg_logprob, s.no_speech_prob) == (0.0, OK, 0.01)
    assert s.compression_ratio == pytest.approx(compression_ratio("w1 w2 w3 w4 w5"))  # the whole window's text


def test_single_timestamp_ending_consumes_the_window():
    tokens = [ts(0), 1, ts(3), ts(3), 2, ts(7)]
    result, calls = run([(tokens, OK, 0.0), ([ts(0), 3, ts(1)], OK, 0.0)], content_frames=3500)
    assert [c.seek for c in calls] == [0, 3000]
    assert [(s.start, s.end) for s in result.segments] == [(0, 3), (3, 7), (30, 31)]


def test_no_timestamps_make_one_segment_to_the_window_end():
    result, calls = run([([1, 2, 3], OK, 0.0), ([ts(0), 4], OK, 0.0)], content_frames=3250)
    assert [c.seek for c in calls] == [0, 3000]
    # <|0.00|> alone does not end a segment: the short last window ends at the audio's end
    assert [(s.start, s.end) for s in result.segments] == [(0, 30), (30, 32.5)]


LOOP = [ts(0)] + [9] * 80 + [ts(29)]  # " w9 w9 w9 ...": compresses far better than speech


def test_temperature_fallback_on_repetition_and_low_logprob():
    assert compression_ratio(decode_text(LOOP).strip()) > 2.4
    good = [ts(0), 1, ts(2)]
    script = [(LOOP, OK, 0.0), (good, -1.5, 0.0), (good, -0.5, 0.0)]
    result, calls = run(script, content_frames=1000)
    assert [c.temperature for c in calls] == [0.0, 0.2, 0.4]  # the loop, then too improbable, then accepted
    assert len(result.segments) == 1 and result.segments[0].temperature == 0.4
    assert result.segments[0].avg_logprob == -0.5


def test_all_temperatures_failing_keep_the_last_decoding():
    result, calls = run([(LOOP, OK, 0.0)] * 6, content_frames=1000)
    assert [c.temperature for c in calls] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert result.segments[0].temperature == 1.0 and result.segments[0].compression_ratio > 2.4


def test_hot_decoding_resets_the_prompt():
    w = [ts(0), 1, ts(10), ts(10), 2, ts(20), ts(20), 3]  # seeks to 20 s each time
    script = [(w, OK, 0.0)] + [(LOOP, OK, 0.0)] * 3 + [(w, OK, 0.0)] + [(w, OK, 0.0)]
    result, calls = run(script, content_frames=5000)
    assert [(c.seek, c.temperature) for c in calls] == [(0, 0)] + [(2000, t) for t in (0, 0.2, 0.4, 0.6)] + [(4000, 0)]
    # window 2 was accepted at 0.6 > 0.5: window 3 is prompted with nothing before it
    assert calls[1].prompt == w[:6] and calls[5].prompt == []


def test_no_condition_on_previous_text():
    w = [ts(0), 1, ts(10), ts(10), 2, ts(20), ts(20), 3]
    options = TranscribeOptions(condition_on_previous_text=False)
    result, calls = run([(w, OK, 0.0)] * 2, content_frames=4000, options=options, initial_prompt_tokens=[7, 8])
    # the initial prompt is used once, then never the decoded text; it is not part of the result's text
    assert [c.prompt for c in calls] == [[7, 8], []]
    assert result.text == " w1 w2 w1 w2"


def test_initial_prompt_and_conditioning():
    w = [ts(0), 1, ts(10), ts(10), 2, ts(20), ts(20), 3]
    result, calls = run([(w, OK, 0.0)] * 2, content_frames=4000, initial_prompt_tokens=[7, 8])
    assert [c.prompt for c in calls] == [[7, 8], [7, 8] + w[:6]]
    assert result.text == " w1 w2 w1 w2"


def test_silence_is_skipped_unless_the_decoding_is_confident():
    silent = ([ts(0), 1, ts(2)], -1.2, 0.9)  # <|nospeech|> likely and improbable tokens: silence, no fallback
    confident = ([ts(0), 2, ts(2)], -0.3, 0.9)  # <|nospeech|> likely but the text is confident: kept
    result, calls = run([silent, confident], content_frames=3100)
    assert [(c.seek, c.temperature) for c in calls] == [(0, 0.0), (3000, 0.0)]
    assert [s.text for s in result.segments] == [" w2"] and result.segments[0].start == 30
    assert result.text == " w2"
    # without a no-speech threshold the improbable window falls back through every temperature instead
    result, calls = run([silent] * 6, content_frames=100, options=TranscribeOptions(no_speech_threshold=None))
    assert len(calls) == 6 and result.text == " w1"


def test_empty_and_instant_segments_lose_their_text():
    tokens = [ts(0), 1, ts(0.5), ts(0.5), ts(0.5)]
    segs, advance, single = split_window(tokens, TS, 0.0, 3000, lambda a, b, t: Segment(a, b, decode_text(t), t))
    assert single is False and advance == 50 and [(s.start, s.end) for s in segs] == [(0, 0.5), (0.5, 0.5)]
    result, _ = run([([ts(0), ts(1), 1, ts(2)], OK, 0.0)], content_frames=500)
    # the instant "segment" <|0.00|> before the pair is kept, empty; speech starts at 1 s
    assert [(s.start, s.end, s.text, s.tokens) for s in result.segments] == [
        (0, 0, "", []),
        (1, 2, " w1", [ts(1), 1, ts(2)]),
    ]


def test_word_alignment_moves_the_seek_to_the_last_word():
    w = [ts(0), 1, ts(10), ts(10), 2, 3]  # unfinished second segment: the seek would be 10 s

    def align(segments, mel_segment, num_frames, time_offset, last_end):
        for s in segments:
            s.words = [Word(" w", s.start + 1, s.end - 1.5, 0.9)]
        aligned.append((mel_segment[0, 0], num_frames, time_offset, last_end))

    aligned: list = []
    result, calls = run([(w, OK, 0.0), ([ts(0), 4, ts(3)], OK, 0.0)], content_frames=1500, align_words=align)
    assert [c.seek for c in calls] == [0, 850]  # the last word ends at 8.5 s
    assert aligned == [(0, 1500, 0.0, 0.0), (850, 650, 8.5, 8.5)]


def test_word_alignment_without_words_seeks_to_the_last_segment_end():
    def no_words(segments, mel_segment, num_frames, time_offset, last_end):
        for s in segments:
            s.words = []

    # no pair, not ending on a single timestamp: without alignment the whole window would be consumed
    result, calls = run([([ts(0), 1, ts(8), 2], OK, 0.0), ([ts(0), 3, ts(1)], OK, 0.0)], 3500, align_words=no_words)
    assert [c.seek for c in calls] == [0, 800]
    assert result.segments[0].words == []


def test_options_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        TranscribeOptions(temperature=())
    with pytest.raises(ValueError, match=">= 0"):
        TranscribeOptions(temperature=(0.0, -1.0))
