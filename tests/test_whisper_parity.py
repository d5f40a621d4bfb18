"""Whisper runtime vs transformers on small randomly initialised models (fast).

Each model is a WhisperForConditionalGeneration with random weights, saved with a processor and generation
config taken from the real tiny.en / base checkpoints in the Hugging Face cache, converted with
wavq.converter.export.convert, and run by wavq.runtime.whisper.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wavq.converter.export import convert  # noqa: E402
from wavq.converter.registry import UnsupportedModelError  # noqa: E402
from wavq.formats import WqFile  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.decoding import max_new_tokens  # noqa: E402
from wavq.runtime.weights import Weights  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
ENGLISH, MULTILINGUAL = "openai/whisper-tiny.en", "openai/whisper-base"
ENCODER_TOL = 1e-4
MAX_NEW = 20  # random models never say end of text; keep the runs short


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    processor_from: str
    n_mels: int = 80
    encoder_layers: int = 2
    decoder_layers: int = 2


SPECS = [
    Spec("en-80", ENGLISH),
    Spec("multi-80", MULTILINGUAL),
    Spec("multi-128", MULTILINGUAL, n_mels=128),
    Spec("distil-en", ENGLISH, encoder_layers=3, decoder_layers=1),  # shallow decoder like distil-whisper
]


def _processor_parts(source: str, n_mels: int):
    from transformers import AutoTokenizer, GenerationConfig, WhisperFeatureExtractor

    try:
        tok = AutoTokenizer.from_pretrained(source)
        gen = GenerationConfig.from_pretrained(source)
    except OSError:
        pytest.skip(f"{source} is not in the Hugging Face cache (../shared/models/install-whisper.sh)")
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    return tok, fe, gen


def _build(spec: Spec, root) -> str:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tok, fe, gen = _processor_parts(spec.processor_from, spec.n_mels)
    special = dict(
        decoder_start_token_id=gen.decoder_start_token_id,
        eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
    )
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=spec.n_mels,
        d_model=64,
        encoder_layers=spec.encoder_layers,
        encoder_attention_heads=4,
        decoder_layers=spec.decoder_layers,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        **special,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger than the 0.02 init so logits have clear winners (no float near-ties)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15 if "embed_positions" not in name else 0.5)
    d = os.path.join(root, spec.name)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    fe.save_pretrained(d)
    gen.save_pretrained(d)
    out = os.path.join(root, spec.name + ".wq")
    convert(d, out)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    cache = {}

    def get(spec: Spec):
        if spec.name not in cache:
            from transformers import WhisperForConditionalGeneration

            d = _build(spec, str(root))
            hf = WhisperForConditionalGeneration.from_pretrained(d).eval()
            cache[spec.name] = (hf, load(d + ".wq", cache=True), d)
        return cache[spec.name]

    return get


@pytest.fixture(scope="module")
def speech():
    import soundfile

    audio, rate = soundfile.read(os.path.join(SAMPLES, "1272-128104-0000.flac"), dtype="float32")
    assert rate == 16000
    return audio


def _features(hf_dir: str, audio: np.ndarray):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(hf_dir)
    return fe(audio, sampling_rate=16000, return_tensors="pt").input_features


def _hf_generate(hf, feats, **kw) -> list[int]:
    with torch.no_grad():
        out = hf.generate(feats, **kw)
    return out[0].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_encoder_matches_transformers(built, speech, spec):
    hf, model, d = built(spec)
    feats = _features(d, speech)
    with torch.no_grad():
        ref = hf.model.encoder(feats).last_hidden_state[0].numpy()
    mel = model.log_mel(speech)
    assert np.abs(mel - feats[0].numpy()).max() <= 1e-4
    out = model.encode(feats[0].numpy())
    assert out.shape == (1500, 64)
    assert np.abs(out - ref).max() <= ENCODER_TOL


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_decoder_logits_match_transformers(built, speech, spec):
    hf, model, d = built(spec)
    feats = _features(d, speech)
    prompt = (
        [model.sot]
        + ([model.lang_to_id["<|en|>"], model.task_to_id["transcribe"]] if model.is_multilingual else [])
        + [model.no_timestamps]
    )
    ids = prompt + [400, 401, 402, 11, 13]
    with torch.no_grad():
        ref = hf(input_features=feats, decoder_input_ids=torch.tensor([ids])).logits[0].numpy()
    cross = model.cross_kv(model.encode(feats[0].numpy()))
    state = model.new_state()
    got = [model.decoder_step(np.array([ids[:3]]), state, cross)[0]]  # a prefix, then one token at a time
    for t in ids[3:]:
        got.append(model.decoder_step(np.array([[t]]), state, cross)[0])
    assert np.abs(np.stack(got) - ref[2:]).max() <= 1e-3  # logits are ~10x larger than hidden states


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_greedy_tokens_match_generate(built, speech, spec):
    hf, model, d = built(spec)
    feats = _features(d, speech)
    ref = _hf_generate(hf, feats, max_new_tokens=MAX_NEW)
    prompt, tokens = model.generate(feats[0].numpy(), max_new_tokens=MAX_NEW)
    assert tokens == ref
    assert len(tokens) == MAX_NEW


@pytest.mark.slow
def test_greedy_default_length_matches_generate(built, speech, monkeypatch):
    """No max_new_tokens: generation stops at transformers' max_length, which counts the prompt too
    (min(max_length + prompt length, 448) positions). A small max_length keeps the test fast."""
    hf, model, d = built(SPECS[3])
    feats = _features(d, speech)
    ref = _hf_generate(hf, feats, max_length=30)
    monkeypatch.setattr(model, "generation", dataclasses.replace(model.generation, max_length=30))
    _, tokens = model.generate(feats[0].numpy())
    assert tokens == ref
    assert len(tokens) == 30
    gen = dataclasses.replace(model.generation, max_length=448)
    assert max_new_tokens(gen, model.dims.n_text_ctx, 2, None) == 446  # the 448-position context caps the default


@pytest.mark.slow
@pytest.mark.parametrize("language,task", [("de", "translate"), ("french", "transcribe"), ("en", None)])
def test_multilingual_prompt_matches_generate(built, speech, language, task):
    hf, model, d = built(SPECS[1])
    feats = _features(d, speech)
    kw = {"language": language} | ({"task": task} if task else {})
    ref = _hf_generate(hf, feats, max_new_tokens=MAX_NEW, **kw)
    prompt, tokens = model.generate(feats[0].numpy(), max_new_tokens=MAX_NEW, language=language, task=task)
    assert tokens == ref
    assert prompt[1] == model.language_id(language)


def test_language_detection_matches_transformers(built, speech):
    hf, model, d = built(SPECS[1])
    feats = _features(d, speech)
    with torch.no_grad():
        ref = int(hf.detect_language(feats)[0])
    lang, probs = model.detect_language(model.cross_kv(model.encode(feats[0].numpy())))
    assert lang == ref
    assert abs(sum(probs.values()) - 1.0) < 1e-6
    prompt = model.prompt(None, None, model.cross_kv(model.encode(feats[0].numpy())))
    assert prompt == [model.sot, ref, model.task_to_id["transcribe"], model.no_timestamps]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.name)
@pytest.mark.parametrize("beams,length_penalty", [(2, None), (4, 0.5)])
def test_beam_search_matches_generate(built, speech, spec, beams, length_penalty):
    hf, model, d = built(spec)
    feats = _features(d, speech)
    kw = {} if length_penalty is None else {"length_penalty": length_penalty}
    ref = _hf_generate(hf, feats, max_new_tokens=12, num_beams=beams, **kw)
    _, tokens = model.generate(feats[0].numpy(), max_new_tokens=12, beam_size=beams, length_penalty=length_penalty)
    assert tokens == ref


def test_english_only_rejects_other_languages(built):
    _, model, _ = built(SPECS[0])
    with pytest.raises(ValueError, match="English-only"):
        model.prompt("de", None)
    with pytest.raises(ValueError, match="English-only"):
        model.prompt(None, "translate")
    assert model.prompt("en", "transcribe") == [model.sot, model.no_timestamps]


def test_multilingual_rejects_unknown_language_and_task(built):
    _, model, _ = built(SPECS[1])
    with pytest.raises(ValueError, match="unknown language"):
        model.prompt("klingon", None)
    with pytest.raises(ValueError, match="task must be"):
        model.prompt("en", "summarize")


@pytest.mark.slow
def test_long_audio_is_cut_into_equal_windows(built, speech):
    _, model, _ = built(SPECS[0])
    long = np.concatenate([speech] * 11)  # 64.4 s -> 3 windows of 21.5 s
    windows = model.windows(long)
    assert len(windows) == 3 and windows[0][0] == 0 and windows[-1][1] == len(long)
    assert max(e - s for s, e in windows) <= model.n_samples
    result = model.transcribe(long, max_new_tokens=3, without_timestamps=True)
    assert len(result.segments) == 3
    assert result.segments[-1].end == pytest.approx(len(long) / 16000)
    assert result.language == "en"


def test_transcribe_list_and_text(built, speech):
    hf, model, d = built(SPECS[0])
    results = model.transcribe([speech, speech[:16000]], max_new_tokens=5, without_timestamps=True)
    assert len(results) == 2
    _, tokens = model.generate(model.log_mel(speech), max_new_tokens=5)
    assert results[0].text == model.decode_tokens(tokens).strip()


def test_converter_tensors_and_meta(built):
    _, model, d = built(SPECS[1])
    f = WqFile(d + ".wq")
    meta = f.meta
    assert meta["architecture"] == "whisper"
    assert "proj_out.weight" not in f.tensors  # tied to the token embedding, stored once
    assert f.info("model.decoder.embed_tokens.weight").shape == (51865, 64)
    assert f.info("preprocess.mel_filters").shape == (201, 80)
    assert meta["dims"]["decoder_layers"] == 2 and meta["dims"]["n_mels"] == 80
    tok = meta["tokenizer"]
    assert len(tok["tokens"]) == 51865 and tok["tokens"][tok["special"]["sot"]] == "<|startoftranscript|>"
    gen = meta["generation"]
    assert gen["is_multilingual"] and gen["lang_to_id"]["<|en|>"] == 50259
    assert gen["begin_suppress_tokens"] == [220, 50257] and gen["suppress_tokens"]
    assert gen["languages"]["de"] == "german"


def test_converter_kinds(built):
    from wavq.converter.whisper import _load_whisper

    _, _, d = built(SPECS[3])
    exporter = _load_whisper(d)
    kinds = {t.name: t.kind for t in exporter.tensors()}
    assert kinds["model.decoder.embed_tokens.weight"] == "embedding"
    assert kinds["model.encoder.embed_positions.weight"] == "other"
    assert kinds["model.decoder.embed_positions.weight"] == "other"
    assert kinds["model.encoder.conv1.weight"] == "conv"
    assert kinds["model.decoder.layers.0.encoder_attn.k_proj.weight"] == "linear"
    assert "model.decoder.layers.1.fc1.weight" not in kinds  # one decoder layer
    assert set(kinds) == set(exporter.model.state_dict()) - {"proj_out.weight"}


@pytest.mark.slow
def test_quantized_low_memory_equals_cached(built, speech, tmp_path):
    from wavq.converter.quant.recipe import Recipe

    _, _, d = built(SPECS[1])
    path = str(tmp_path / "q4.wq")
    convert(d, path, Recipe(method="rtn", bits=4, group_size=32))
    fast, lean = load(path, cache=True), load(path, cache=False)
    mel = fast.log_mel(speech)
    a = fast.generate(mel, max_new_tokens=8, language="en")
    b = lean.generate(mel, max_new_tokens=8, language="en")
    assert a == b
    assert WqFile(path).info("model.decoder.embed_tokens.weight").quantized


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_rotated_file_matches_transformers_with_its_weights(built, speech, tmp_path, cache):
    """A file with rotated tensors (SPEC.md 5.4) decodes like transformers given the file's dequantized weights,
    whether the runtime rotates each decoding step's inputs (low memory) or keeps the weights (cache)."""
    from wavq.converter.quant.recipe import Recipe

    hf, model, d = built(SPECS[1])
    path = str(tmp_path / "r4.wq")
    convert(d, path, Recipe(method="rtn", bits=4, group_size=32, rotate=True))
    f = WqFile(path)
    rotated = [n for n, t in f.tensors.items() if t.rotation]
    assert f.layout_revision == 3 and any("decoder" in n for n in rotated)
    qhf = transformers.WhisperForConditionalGeneration.from_pretrained(d).eval()
    params = dict(qhf.named_parameters())
    with torch.no_grad():
        for name, info in f.tensors.items():
            if info.quantized and name in params:
                params[name].copy_(torch.from_numpy(f.array(name)))
    qmodel = load(path, cache=cache)
    feats = _features(d, speech)
    ids = [
        qmodel.sot,
        qmodel.lang_to_id["<|en|>"],
        qmodel.task_to_id["transcribe"],
        qmodel.no_timestamps,
        400,
        401,
        402,
        11,
        13,
    ]
    with torch.no_grad():
        ref = qhf(input_features=feats, decoder_input_ids=torch.tensor([ids])).logits[0].numpy()
    cross = qmodel.cross_kv(qmodel.encode(feats[0].numpy()))
    state = qmodel.new_state()
    got = [qmodel.decoder_step(np.array([ids[:3]]), state, cross)[0]]
    for t in ids[3:]:
        got.append(qmodel.decoder_step(np.array([[t]]), state, cross)[0])
    assert np.abs(np.stack(got) - ref[2:]).max() <= 1e-3
    # the cached mode keeps each weight with its rotation undone (it never re-reads the codes per step)
    assert all((qmodel.weights.uncached_rotation(n) == 0) == cache for n in rotated)
    # and the rotation is undone: the stored codes read as weights would give another model
    assert max(float(np.abs(f.array(n, unrotate=False) - f.array(n)).max()) for n in rotated) > 0.05


def test_weights_from_dict(built, speech):
    """WhisperModel runs on in-memory weights (Weights(dict, meta)) as on the file."""
    _, model, d = built(SPECS[0])
    f = WqFile(d + ".wq")
    mem = type(model)(Weights({n: f.array(n) for n in f.tensors}, f.meta))
    mel = model.log_mel(speech)
    assert mem.generate(mel, max_new_tokens=4) == model.generate(mel, max_new_tokens=4)


def test_unsupported_heads_are_rejected(tmp_path):
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(
        vocab_size=100,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_labels=3,
    )
    WhisperForAudioClassification(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="WhisperForAudioClassification"):
        convert(str(tmp_path), str(tmp_path / "x.wq"))


def test_runtime_imports_without_torch():
    code = (
        "import sys, wavq.runtime.whisper, wavq.runtime.mel, wavq.runtime.tokenizer; "
        "bad = [m for m in ('torch', 'transformers', 'safetensors', 'jiwer') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("source", [ENGLISH, MULTILINGUAL])
def test_tokenizer_decode_equals_transformers(source, tmp_path):
    """Byte-level decoding from the stored vocabulary equals the transformers tokenizer's
    decode(skip_special_tokens=True), including tokens that split multi-byte characters and special tokens."""
    from wavq.converter.whisper import tokenizer_meta
    from wavq.runtime.tokenizer import ByteLevelBPEDecoder

    tok, _, _ = _processor_parts(source, 80)
    dec = ByteLevelBPEDecoder.from_meta(tokenizer_meta(tok))
    rng = np.random.default_rng(0)
    texts = ["Hello, world!", " Grüße aus Köln — ça va? 日本語のテキスト 🎉", " naïve café", " 1,234.5 %"]
    cases = [tok.encode(t, add_special_tokens=False) for t in texts]
    cases += [rng.integers(0, len(tok), size=12).tolist() for _ in range(200)]  # incl. specials, timestamps
    for ids in cases:
        assert dec.decode(ids) == tok.decode(ids, skip_special_tokens=True), ids
