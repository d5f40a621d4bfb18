"""Wav2Vec2-CTC word timings: word offsets as Wav2Vec2CTCTokenizer.decode(..., output_word_offsets=True) gives them,
times = frame x total stride / sampling rate, kept right across long-audio windows and VAD regions; Whisper's
transcribe keywords accepted at their defaults and refused by name otherwise."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_wav2vec2_parity import SR, build_checkpoint, speechlike  # noqa: E402
from tiny_models import CTC_VOCAB as VOCAB  # noqa: E402

from wavq.converter.export import convert  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.vad import speech_regions  # noqa: E402
from wavq.runtime.wav2vec2 import MAX_SEGMENT_S, SEGMENT_PAUSE_S, WHISPER_ONLY_OPTIONS  # noqa: E402

# no attention layers, no input normalisation, LayerNorm convs: every frame depends on a bounded neighbourhood, so
# windows whose strides cover it reproduce the unwindowed ids exactly (test_wav2vec2_parity.py)
LOCAL = dict(feat_extract_norm="layer", do_stable_layer_norm=False, num_hidden_layers=0, num_conv_pos_embeddings=4)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    model, tok, fe = build_checkpoint(d / "ckpt", "Wav2Vec2Config", LOCAL, True, do_normalize=False)
    convert(str(d / "ckpt"), d / "model.wq")
    return model, tok, load(d / "model.wq")


def _words(result):
    return [w for s in result.segments for w in s.words]


def test_decoder_word_offsets_match_transformers(local):
    """Random id paths with repeats, blanks, delimiters and out-of-vocabulary ids: same words, same frames."""
    _, tok, rt = local
    rng = np.random.default_rng(0)
    weights = np.ones(len(VOCAB))
    weights[[0, 4]] = 8  # blanks and delimiters are common in real paths
    for trial in range(50):
        ids = rng.choice(len(VOCAB), size=int(rng.integers(0, 80)), p=weights / weights.sum())
        ids = np.repeat(ids, rng.integers(1, 4, size=ids.shape))  # a token held for several frames
        text, words = rt.decoder.decode(ids)
        ref = tok.decode(ids, output_word_offsets=True)
        assert text == ref.text, trial
        assert words == [(w["word"], w["start_offset"], w["end_offset"]) for w in ref.word_offsets], trial


def test_word_timestamps_match_transformers(local):
    model, tok, rt = local
    x = speechlike(30_000, seed=4)
    ids = rt.logits(x[None]).argmax(-1)[0]
    ref = tok.decode(ids, output_word_offsets=True)
    assert len(ref.word_offsets) > 3  # the test needs several words
    per_frame = model.config.inputs_to_logits_ratio / SR
    result = rt.transcribe(x, word_timestamps=True)
    words = _words(result)
    assert [w.word.strip() for w in words] == [w["word"] for w in ref.word_offsets]
    assert [w.start for w in words] == [round(int(w["start_offset"]) * per_frame, 3) for w in ref.word_offsets]
    assert [w.end for w in words] == [round(int(w["end_offset"]) * per_frame, 3) for w in ref.word_offsets]
    assert all(0 < w.probability <= 1 for w in words)
    assert result.text == ref.text
    # segments: runs of words split at pauses, none longer than MAX_SEGMENT_S
    for s in result.segments:
        assert s.start == s.words[0].start and s.end == s.words[-1].end and s.end - s.start <= MAX_SEGMENT_S
        assert s.text == "".join(w.word for w in s.words)
    for a, b in zip(result.segments, result.segments[1:]):
        assert b.start - a.end >= SEGMENT_PAUSE_S or b.end - a.start > MAX_SEGMENT_S
    # without word timestamps: the same segments, no words
    plain = rt.transcribe(x)
    assert [(s.start, s.end, s.text, s.words) for s in plain.segments] == [
        (s.start, s.end, s.text, None) for s in result.segments
    ]


@pytest.mark.slow
def test_windowed_word_times_equal_unwindowed(local):
    _, _, rt = local
    x = speechlike(50_000, seed=11)
    whole = _words(rt.transcribe(x, chunk_length_s=0, word_timestamps=True))
    assert len(whole) > 3
    for chunk_s, stride_s in ((0.5, 0.1), (0.7, (0.05, 0.2))):
        got = _words(rt.transcribe(x, chunk_length_s=chunk_s, stride_length_s=stride_s, word_timestamps=True))
        assert [(w.word, w.start, w.end) for w in got] == [(w.word, w.start, w.end) for w in whole]
        np.testing.assert_allclose([w.probability for w in got], [w.probability for w in whole], atol=1e-4)


def test_vad_transcribes_speech_regions_at_their_times(local):
    _, _, rt = local
    speech = speechlike(24_000, seed=5)
    x = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    (a, e), *rest = speech_regions(x, SR)
    assert not rest and 0 < a < SR
    got = _words(rt.transcribe(x, vad=True, word_timestamps=True))
    alone = _words(rt.transcribe(x[a:e], word_timestamps=True))
    assert got and [(w.word, w.start) for w in got] == [(w.word, round(w.start + a / SR, 3)) for w in alone]
    assert rt.transcribe(np.zeros(SR, np.float32), vad=True).segments == []


def test_whisper_options_accepted_at_defaults_refused_otherwise(local):
    _, _, rt = local
    x = speechlike(8_000, seed=2)
    assert rt.transcribe(x, **WHISPER_ONLY_OPTIONS).text == rt.transcribe(x).text
    for name, value in [
        ("temperature", (0.5,)),
        ("language", "en"),
        ("task", "translate"),
        ("beam_size", 4),
        ("initial_prompt", "hello"),
        ("condition_on_previous_text", False),
        ("no_speech_threshold", 0.3),
    ]:
        with pytest.raises(ValueError, match=f"^{name} does not apply to Wav2Vec2-CTC"):
            rt.transcribe(x, **{name: value})
    with pytest.raises(TypeError, match="no_such_option"):
        rt.transcribe(x, no_such_option=1)


def test_sample_rate_of_an_array(local):
    """`sample_rate` is the rate of an array input: it is resampled to the model's rate first."""
    from wavq.runtime.audio import load_audio

    _, _, rt = local
    at_8k = speechlike(8_000, seed=3)
    resampled = load_audio(at_8k, SR, 8_000)
    assert resampled.shape == (16_000,)
    got = rt.transcribe(at_8k, sample_rate=8_000, word_timestamps=True)
    want = rt.transcribe(resampled, word_timestamps=True)
    assert got == want and got.text
