"""Parity with openai-whisper itself, when it is installed (it needs torch, numba and tiktoken; not a dependency):
the seek loop against its transcribe() driven by the same random decodings, DTW and the median filter against its
timing.py, the timestamp rules against its ApplyTimestampRules, punctuation merging, and the subtitle writers."""

from __future__ import annotations

import dataclasses
import io
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
pytest.importorskip("tiktoken")
whisper_transcribe = pytest.importorskip("whisper.transcribe")
whisper_timing = pytest.importorskip("whisper.timing")
whisper_decoding = pytest.importorskip("whisper.decoding")
whisper_utils = pytest.importorskip("whisper.utils")
whisper_tokenizer = pytest.importorskip("whisper.tokenizer")

from wavq.runtime import timing, writers  # noqa: E402
from wavq.runtime.timestamps import TimestampRules  # noqa: E402
from wavq.runtime.transcribe import TranscribeOptions, WindowDecoding, transcribe_windows  # noqa: E402
from wavq.runtime.types import Segment, Transcription, Word  # noqa: E402

SR, HOP, N_MELS = 16_000, 160, 80
TOKENIZER = whisper_tokenizer.get_tokenizer(False, num_languages=99, language="en", task="transcribe")
TB = TOKENIZER.timestamp_begin
WORDS = TOKENIZER.encode(" the cat sat on a mat and then it ran off to see what was there")


def random_window(rng: np.random.Generator) -> tuple[list[int], float, float]:
    """One decoding as the timestamp rules allow it: segments, maybe an unfinished or repetitive tail."""
    kind = rng.integers(0, 6)
    if kind == 0:
        return [], float(rng.uniform(-2, 0)), float(rng.uniform(0, 1))
    if kind == 1:  # no timestamps at all
        return [int(t) for t in rng.choice(WORDS, rng.integers(1, 6))], float(rng.uniform(-1.5, 0)), 0.1
    tokens: list[int] = []
    t = int(rng.integers(0, 50))
    for _ in range(int(rng.integers(1, 5))):
        end = min(1500, t + int(rng.integers(1, 400)))
        text = [int(w) for w in rng.choice(WORDS, rng.integers(1, 5))]
        if rng.random() < 0.15:
            text = [int(WORDS[1])] * 70  # a loop: compresses far better than speech
        tokens += [TB + t, *text, TB + end]
        t = end
        if t >= 1500:
            break
    if kind == 2 and t < 1500:  # an unfinished segment after the last pair
        tokens += [TB + t, *[int(w) for w in rng.choice(WORDS, 3)]]
    elif kind == 3 and len(tokens) >= 3:  # pairs all the way: the next segment opens and closes at once
        tokens += [tokens[-1]]
    return tokens, float(rng.uniform(-1.6, -0.05)), float(rng.choice([0.01, 0.3, 0.7, 0.95]))


class Decodings:
    """The k-th call gets the k-th random decoding, whichever implementation calls."""

    def __init__(self, seed: int):
        self.seed = seed
        self.calls: list[tuple[list[int], float]] = []

    def __call__(self, prompt: list[int], temperature: float) -> WindowDecoding:
        rng = np.random.default_rng([self.seed, len(self.calls)])
        tokens, avg_logprob, no_speech = random_window(rng)
        self.calls.append((list(prompt), float(temperature)))
        return WindowDecoding(tokens, avg_logprob, no_speech, temperature)


class FakeWhisper:
    device = torch.device("cpu")
    dims = types.SimpleNamespace(n_mels=N_MELS, n_audio_ctx=1500, n_text_ctx=448)
    is_multilingual = False
    num_languages = 99

    def __init__(self, decodings: Decodings):
        self.decodings = decodings

    def decode(self, mel, options):
        r = self.decodings(list(options.prompt or []), options.temperature)
        text = TOKENIZER.decode(r.tokens).strip()
        return whisper_decoding.DecodingResult(
            audio_features=None,
            language="en",
            tokens=r.tokens,
            text=text,
            avg_logprob=r.avg_logprob,
            no_speech_prob=r.no_speech_prob,
            temperature=r.temperature,
            compression_ratio=whisper_utils.compression_ratio(text),
        )


@pytest.mark.parametrize("seed", range(20))
def test_seek_loop_equals_openai_transcribe(seed):
    rng = np.random.default_rng(1000 + seed)
    seconds = float(rng.choice([5.0, 29.5, 31.0, 75.3, 150.0]))
    condition = bool(seed % 3)
    prompt_text = "Mr. Quilter's gospel." if seed % 4 == 0 else None
    audio = np.zeros(int(seconds * SR), np.float32)
    theirs = Decodings(seed)
    ref = whisper_transcribe.transcribe(
        FakeWhisper(theirs),
        audio,
        condition_on_previous_text=condition,
        initial_prompt=prompt_text,
        fp16=False,
    )
    ours = Decodings(seed)
    content_frames = len(audio) // HOP
    initial = TOKENIZER.encode(" " + prompt_text.strip()) if prompt_text else []
    result = transcribe_windows(
        np.zeros((N_MELS, content_frames), np.float32),
        content_frames,
        lambda mel, prompt, temperature: ours(prompt, temperature),
        TOKENIZER.decode,
        timestamp_begin=TB,
        eot=TOKENIZER.eot,
        options=TranscribeOptions(condition_on_previous_text=condition),
        initial_prompt_tokens=initial,
    )
    assert ours.calls == theirs.calls  # same windows, prompts and temperatures, call for call
    fields = ("start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob")
    assert [tuple(getattr(s, f) for f in fields) for s in result.segments] == [
        tuple(s[f] for f in fields) for s in ref["segments"]
    ]
    assert result.text == ref["text"]


@pytest.mark.parametrize("shape", [(1, 1), (4, 9), (17, 60), (40, 33)])
def test_dtw_equals_openai(shape):
    rng = np.random.default_rng(shape[0])
    for x in (rng.standard_normal(shape), rng.integers(0, 3, shape).astype(np.float64)):
        rows, cols = timing.dtw(x)
        ref = whisper_timing.dtw_cpu(x.copy())
        np.testing.assert_array_equal(np.stack([rows, cols]), ref)


def test_median_filter_equals_openai():
    x = np.random.default_rng(0).standard_normal((4, 12, 50)).astype(np.float32)
    for width in (1, 3, 7):
        ref = whisper_timing.median_filter(torch.from_numpy(x), width).numpy()
        np.testing.assert_array_equal(timing.median_filter(x, width), ref)


def test_merge_punctuations_equals_openai():
    words = [" (", "yes", ")", " well", ",", " “", "quote", "”", ".", " -", "x", " '", "y", "'"]
    ours = [timing.WordTiming(w, [i], i, i + 1, 0.5) for i, w in enumerate(words)]
    ref = [whisper_timing.WordTiming(w, [i], i, i + 1, 0.5) for i, w in enumerate(words)]
    timing.merge_punctuations(ours, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    whisper_timing.merge_punctuations(ref, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    assert [dataclasses.astuple(w) for w in ours] == [dataclasses.astuple(w) for w in ref]


def test_timestamp_rules_equal_openai():
    rng = np.random.default_rng(5)
    tok = types.SimpleNamespace(timestamp_begin=TB, eot=TOKENIZER.eot, no_timestamps=TOKENIZER.no_timestamps)
    prompt = [TOKENIZER.sot, TOKENIZER.no_timestamps - 1]
    for _ in range(60):
        n = int(rng.integers(0, 8))
        history = [int(rng.choice([rng.integers(0, 1000), TB + rng.integers(0, 1501)])) for _ in range(n)]
        tokens = np.array([prompt + history] * 2)
        logits = rng.standard_normal((2, TB + 1501)).astype(np.float32) * 3
        logits[1, TB:] += 2.0
        ours = logits.copy()
        TimestampRules(timestamp_begin=TB, eot=tok.eot, no_timestamps=tok.no_timestamps, sample_begin=2).apply(
            ours, tokens
        )
        ref = torch.from_numpy(logits.copy())
        whisper_decoding.ApplyTimestampRules(tok, 2, 50).apply(ref, torch.from_numpy(tokens))
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref.numpy()), err_msg=str(history))


def _as_dict(result: Transcription) -> dict:
    d = result.to_dict()
    for s in d["segments"]:
        if s["words"] is None:
            del s["words"]
    return d


@pytest.mark.parametrize("with_words", [False, True])
def test_writers_equal_openai(with_words):
    words = [[Word(" Hello", 0.5, 0.9, 0.9), Word(" there.", 0.9, 1.4, 0.8)], [Word(" A", 3601.2, 3602.0, 0.7)]]
    result = Transcription(
        " Hello there. A",
        [
            Segment(0.4, 1.5, " Hello there.", words=words[0] if with_words else None),
            Segment(3600.0, 3602.25, " A --> B\tC" if not with_words else " A", words=words[1] if with_words else None),
        ],
    )
    for fmt, cls in (("srt", "WriteSRT"), ("vtt", "WriteVTT"), ("tsv", "WriteTSV"), ("txt", "WriteTXT")):
        buf = io.StringIO()
        getattr(whisper_utils, cls)(".").write_result(_as_dict(result), buf)
        assert writers.FORMATS[fmt](result) == buf.getvalue(), fmt
