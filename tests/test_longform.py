"""Long-form transcription wired into the Whisper runtime (model.transcribe with timestamps, fallback, silence rules,
word timestamps, VAD, resampling), against transformers' long-form generate on real tiny.en and against transformers'
cross-attention on a tiny random model."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from wavq.formats import MalformedHeaderError
from wavq.runtime import load
from wavq.runtime.audio import load_audio
from wavq.runtime.bpe import BPEError
from wavq.runtime.decoding import DecodingOptions, build_prompt, decode
from wavq.runtime.whisper import CrossScores

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from formats_helpers import rebuild, split  # noqa: E402
from tiny_models import tiny_whisper  # noqa: E402

from wavq.converter.export import convert  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_60S = ROOT / "tests" / "data" / "longform" / "chapter-60s.whisper-tiny.en.json"
LIBRISPEECH = ROOT.parent / "shared" / "librispeech"
TINY_EN = "openai/whisper-tiny.en"
BOUNDARY_TOLERANCE = 0.02  # seconds: one timestamp step
RATE = 16_000
SAMPLE = str(pathlib.Path(__file__).resolve().parent.parent / "samples" / "1272-128104-0000.flac")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A 1+1-layer random Whisper with tiny.en's tokenizer and generation config, exported at float32."""
    d = tmp_path_factory.mktemp("random")
    checkpoint = tiny_whisper(d / "hf")
    path = str(d / "random.wq")
    convert(checkpoint, path)
    return checkpoint, path, load(path, cache=True)


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    try:
        transformers.WhisperForConditionalGeneration.from_pretrained(TINY_EN)
    except OSError:
        pytest.skip(f"{TINY_EN} is not in the Hugging Face cache")
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.en.wq")
    convert(TINY_EN, path)
    return load(path, cache=True)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (
        0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    ).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- random model


def test_alignment_head_scores_equal_transformers_cross_attention(random_model):
    checkpoint, _, model = random_model
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    mel = model.log_mel(_speechlike(3.0))
    tokens = [model.sot, model.no_timestamps, 400, 401, 402]
    cross = model.cross_kv(model.encode(mel))
    scores = CrossScores(model.generation.alignment_heads)
    plain = model.decoder_step(np.array([tokens]), model.new_state(1, 8), cross)
    collected = model.decoder_step(np.array([tokens]), model.new_state(1, 8), cross, scores)
    assert np.array_equal(plain, collected)  # collecting changes nothing
    with torch.no_grad():
        out = hf(
            input_features=torch.from_numpy(mel[None]),
            decoder_input_ids=torch.tensor([tokens]),
            output_attentions=True,
        )
    qk = scores.stacked()
    assert qk.shape == (len(model.generation.alignment_heads), len(tokens), model.dims.n_audio_ctx)
    weights = np.exp(qk - qk.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    for i, (layer, head) in enumerate(model.generation.alignment_heads):
        ref = out.cross_attentions[layer][0, head].numpy()
        assert np.abs(weights[i] - ref).max() < 1e-5


def test_alignment_heads_default_to_the_upper_half(random_model):
    _, _, model = random_model
    d = model.dims
    # tiny.en's generation config names heads of 4 layers; this model has 1, so the converter stored none
    assert model.generation.alignment_heads == tuple(
        (layer, head) for layer in range(d.decoder_layers // 2, d.decoder_layers) for head in range(d.decoder_heads)
    )


def test_timestamp_prompt_and_previous_text(random_model):
    _, _, model = random_model
    short = build_prompt(model, DecodingOptions())
    assert short[-1] == model.no_timestamps
    timed = build_prompt(model, DecodingOptions(without_timestamps=False))
    assert model.no_timestamps not in timed and timed[0] == model.sot
    previous = tuple(range(300, 800))
    prompted = build_prompt(model, DecodingOptions(without_timestamps=False, previous=previous))
    keep = model.dims.n_text_ctx // 2 - 1
    assert prompted == [model.generation.prev_sot_token_id, *previous[-keep:], *timed]


def test_timestamp_decoding_is_well_formed_and_sampling_reproducible(random_model):
    _, _, model = random_model
    mel = model.log_mel(_speechlike(5.0))
    ts = model.no_timestamps + 1
    options = DecodingOptions(without_timestamps=False, max_new_tokens=20)
    greedy = decode(model, mel, options)
    assert greedy.tokens and greedy.tokens[0] >= ts  # the timestamp rules: a window starts with a timestamp
    assert 0.0 <= greedy.no_speech_prob <= 1.0 and greedy.sum_logprob <= 0.0
    hot = dataclasses.replace(options, temperature=1.0)
    a = decode(model, mel, hot, np.random.default_rng(7))
    b = decode(model, mel, hot, np.random.default_rng(7))
    assert a.tokens == b.tokens and a.sum_logprob == b.sum_logprob
    c = decode(model, mel, hot, np.random.default_rng(8))
    assert c.tokens != a.tokens or c.sum_logprob != a.sum_logprob


def test_sample_rate_resamples_and_vad_maps_times_back(random_model):
    _, _, model = random_model
    speech = _speechlike(4.0)
    from wavq.runtime.audio import resample

    at_8k = resample(speech, RATE, 8000)
    kw = {"max_new_tokens": 4, "temperature": 0.0}
    assert (
        model.transcribe(at_8k, sample_rate=8000, **kw).text == model.transcribe(resample(at_8k, 8000, RATE), **kw).text
    )
    padded = np.concatenate([np.zeros(5 * RATE, np.float32), speech])
    result = model.transcribe(padded, vad=True, without_timestamps=False, **kw)
    assert result.segments and all(s.start >= 4.5 for s in result.segments)  # the VAD pads regions by 0.2 s
    assert all(s.end >= s.start for s in result.segments)


def test_files_without_merges_still_load_but_cannot_encode_prompts(random_model, tmp_path):
    _, path, _ = random_model
    meta = load(path).meta
    assert meta["tokenizer"]["merges"] and meta["generation"]["max_initial_timestamp_index"] == 50

    def drop(header: dict) -> None:
        header["meta"]["tokenizer"].pop("merges")
        header["meta"]["generation"].pop("alignment_heads")

    model = load(_rewrite(path, tmp_path / "old.wq", drop))
    assert model.config.merges is None and model.generation.alignment_heads
    with pytest.raises(BPEError, match="re-convert"):
        model.transcribe(_speechlike(2.0), initial_prompt="Hello.", max_new_tokens=2)


@pytest.mark.parametrize(
    "section,key,value,field",
    [
        ("generation", "alignment_heads", [[1, 0]], "generation.alignment_heads[0][0]"),
        ("generation", "alignment_heads", [[0, 2]], "generation.alignment_heads[0][1]"),
        ("generation", "alignment_heads", [0], "generation.alignment_heads[0]"),
        ("generation", "max_initial_timestamp_index", -1, "generation.max_initial_timestamp_index"),
        ("tokenizer", "merges", ["a"], "tokenizer.merges[0]"),
        ("tokenizer", "merges", ["a b c"], "tokenizer.merges[0]"),
        ("tokenizer", "merges", [7], "tokenizer.merges[0]"),
        ("tokenizer", "merges", ["a " + "b" * 2000], "tokenizer.merges[0]"),
    ],
)
def test_new_fields_are_validated(random_model, tmp_path, section, key, value, field):
    _, path, _ = random_model

    def change(header: dict) -> None:
        header["meta"][section][key] = value

    with pytest.raises(MalformedHeaderError, match=f"header field {re.escape(field)} "):
        load(_rewrite(path, tmp_path / "bad.wq", change))


def _rewrite(src: str, dst: pathlib.Path, change) -> str:
    with open(src, "rb") as f:
        _, header, data = split(f.read())
    change(header)
    dst.write_bytes(rebuild(header, data))
    return str(dst)


@pytest.mark.real
def test_60s_file_equals_transformers_long_form(tiny_en):
    if not (LIBRISPEECH / "test-clean").is_dir():
        pytest.skip("LibriSpeech test-clean is not in ../shared/librispeech")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_longform import build_audio

    ref = json.loads(REFERENCE_60S.read_text(encoding="utf-8"))
    result = tiny_en.transcribe(build_audio(LIBRISPEECH, ref["utterances"]))
    assert result.text == ref["text"].strip()
    assert [s.text for s in result.segments] == [s["text"] for s in ref["segments"]]
    for ours, theirs in zip(result.segments, ref["segments"]):
        assert abs(ours.start - theirs["start"]) <= BOUNDARY_TOLERANCE + 1e-9
        assert abs(ours.end - theirs["end"]) <= BOUNDARY_TOLERANCE + 1e-9
        assert ours.temperature == 0.0 and ours.avg_logprob < 0 and 0 <= ours.no_speech_prob <= 1
    assert result.language == "en" and result.language_probability == 1.0


@pytest.mark.real
def test_white_noise_and_silence_give_no_text(tiny_en):
    """White noise is dropped by the silence rule by default. Digital silence is a window with no signal, which is
    not decoded (decoded, tiny.en writes ' you' with P(<|nospeech|>) ~0.94 but an average log-probability of ~-0.86,
    above the -1 the rule also asks for, as transformers' long-form generate does); the VAD drops it as well."""
    noise = (0.1 * np.random.default_rng(0).standard_normal(10 * RATE)).astype(np.float32)
    assert tiny_en.transcribe(noise).text == ""
    silence = np.zeros(20 * RATE, np.float32)
    assert tiny_en.transcribe(silence).text == ""
    assert tiny_en.transcribe(silence, vad=True).text == ""
    # silence between speech: the speech is kept, nothing is written for the silent stretch
    speech = load_audio(SAMPLE, RATE)
    mixed = tiny_en.transcribe(np.concatenate([speech, np.zeros(35 * RATE, np.float32)]))
    words = lambda text: re.findall(r"[a-z']+", text.lower())  # noqa: E731 (the windows differ in punctuation)
    assert words(mixed.text) == words(tiny_en.transcribe(speech).text)


@pytest.mark.real
@pytest.mark.slow
def test_temperature_fallback_rescues_a_low_bit_loop(tmp_path, librispeech):
    """RTN 3-bit tiny.en loops on this dev-clean utterance at temperature 0; the fallback keeps a hotter decoding."""
    from wavq.converter.quant.recipe import Recipe
    from wavq.evaluation.datasets import find_utterances
    from wavq.runtime.transcribe import COMPRESSION_RATIO_THRESHOLD, compression_ratio

    utt = next(u for u in find_utterances(librispeech("dev-clean")) if u.id == "2412-153948-0000")
    try:
        convert(TINY_EN, str(tmp_path / "q3.wq"), Recipe(method="rtn", bits=3, group_size=128))
    except OSError:
        pytest.skip(f"{TINY_EN} is not in the Hugging Face cache")
    model = load(str(tmp_path / "q3.wq"), cache=True)
    audio = load_audio(utt.path, RATE)
    cold = model.transcribe(audio, temperature=0.0)  # no fallback: the loop stays (a window's ratio, per segment)
    assert max(s.compression_ratio for s in cold.segments) > COMPRESSION_RATIO_THRESHOLD
    rescued = model.transcribe(audio)
    assert all(s.temperature > 0 for s in rescued.segments)
    assert all(s.compression_ratio <= COMPRESSION_RATIO_THRESHOLD for s in rescued.segments)
    assert compression_ratio(rescued.text) <= COMPRESSION_RATIO_THRESHOLD
