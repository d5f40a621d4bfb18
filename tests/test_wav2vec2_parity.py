"""Wav2Vec2 / HuBERT / Data2VecAudio CTC: numpy runtime vs transformers on tiny random checkpoints.

Every architecture variant transformers builds is in the grid: feature-encoder GroupNorm vs LayerNorm, post-norm vs
stable-layer-norm encoders, conv bias on/off, odd conv stacks, even/odd positional kernels and groups, HuBERT without
the feature-projection LayerNorm and with the BatchNorm positional conv, Data2VecAudio's positional conv stack, and
non-default activations. Each checkpoint is saved with a Wav2Vec2CTCTokenizer and feature extractor, converted
with wavq.converter.export.convert and compared on logits (<= 1e-4) and greedy transcripts (identical).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import CTC_VOCAB, TINY_CTC_DIMS  # noqa: E402

import wavq.converter.wav2vec2  # noqa: E402,F401  (registers the loader)
from wavq.converter.export import convert  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.wav2vec2 import Wav2Vec2CTCModel  # noqa: E402

SR = 16_000
LOGITS_TOL = 1e-4
CHUNK_TOL = 1e-5
# id -> (config class name, config overrides, feature-extractor return_attention_mask)
VARIANTS = {
    "w2v-base": (
        "Wav2Vec2Config",
        dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, num_conv_pos_embeddings=4),
        False,
    ),
    "w2v-lv60": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            conv_bias=True,
            num_conv_pos_embeddings=5,
            num_conv_pos_embedding_groups=4,
            num_attention_heads=4,
        ),
        True,
    ),
    "w2v-group-stable-odd": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="group",
            do_stable_layer_norm=True,
            conv_bias=True,
            conv_dim=(8, 12, 16),
            conv_kernel=(7, 3, 2),
            conv_stride=(3, 2, 2),
            num_conv_pos_embeddings=6,
            num_conv_pos_embedding_groups=4,
            feat_extract_activation="relu",
            hidden_act="gelu_new",
            mask_time_prob=0.05,
        ),
        True,
    ),
    "w2v-layer-post-silu": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=False,
            conv_bias=False,
            num_conv_pos_embeddings=3,
            hidden_act="silu",
            layer_norm_eps=1e-6,
            num_hidden_layers=3,
        ),
        False,
    ),
    "hubert-base-noprojln": (
        "HubertConfig",
        dict(
            feat_extract_norm="group", do_stable_layer_norm=False, feat_proj_layer_norm=False, num_conv_pos_embeddings=4
        ),
        False,
    ),
    "hubert-large-batchnorm": (
        "HubertConfig",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            conv_bias=True,
            conv_pos_batch_norm=True,
            num_conv_pos_embeddings=5,
        ),
        True,
    ),
    "data2vec": (
        "Data2VecAudioConfig",
        dict(conv_bias=True, conv_pos_kernel_size=4, num_conv_pos_embeddings=3, num_conv_pos_embedding_groups=4),
        True,
    ),
}


def build_checkpoint(
    directory,
    config_name: str,
    overrides: dict,
    return_attention_mask: bool,
    *,
    seed: int = 0,
    do_normalize: bool = True,
    do_lower_case: bool = False,
):
    """Save a random *ForCTC model with its tokenizer and feature extractor to `directory`; return the model."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config_cls = getattr(transformers, config_name)
    config = config_cls(**{**TINY_CTC_DIMS, **overrides})
    model_cls = {
        "Wav2Vec2Config": transformers.Wav2Vec2ForCTC,
        "HubertConfig": transformers.HubertForCTC,
        "Data2VecAudioConfig": transformers.Data2VecAudioForCTC,
    }[config_name]
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms start at 1/0 and BatchNorm stats at 0/1: make them matter
        for name, buf in list(model.named_parameters()) + list(model.named_buffers()):
            if "norm" in name and buf.dtype.is_floating_point:
                noise = torch.randn(buf.shape, generator=gen) * 0.2
                buf.copy_(buf.abs() + 0.5 if name.endswith("running_var") else buf + noise)
            elif name.endswith(".bias"):
                buf.add_(torch.randn(buf.shape, generator=gen) * 0.1)
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(CTC_VOCAB)}, f)
    tokenizer = transformers.Wav2Vec2CTCTokenizer(os.path.join(directory, "vocab.json"), do_lower_case=do_lower_case)
    tokenizer.save_pretrained(directory)
    fe = transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=SR, do_normalize=do_normalize, return_attention_mask=return_attention_mask
    )
    fe.save_pretrained(directory)
    return model, tokenizer, fe


def speechlike(n: int, seed: int) -> np.ndarray:
    """Noise with a slow envelope and a DC offset, so normalisation and GroupNorm statistics matter."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    env = 0.3 + np.abs(np.sin(2 * np.pi * 1.7 * t + seed))
    return (0.1 * env * rng.standard_normal(n) + 0.05).astype(np.float32)


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(request, tmp_path_factory):
    config_name, overrides, mask = VARIANTS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    model, tok, fe = build_checkpoint(d / "ckpt", config_name, overrides, mask)
    convert(str(d / "ckpt"), d / "model.wq")
    rt = load(d / "model.wq")
    assert isinstance(rt, Wav2Vec2CTCModel)
    return request.param, model, tok, fe, rt


def hf_logits(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**inputs).logits.numpy()


@pytest.mark.parametrize("n", [3_000, 24_000])  # short, and long enough for three feature-encoder chunks
def test_single_logits_and_transcript(case, n):
    name, model, tok, fe, rt = case
    x = speechlike(n, seed=n)
    inputs = fe(x, sampling_rate=SR, return_tensors="pt")
    ref = hf_logits(model, inputs)
    values, mask = rt.preprocess([x])
    np.testing.assert_allclose(values, inputs["input_values"].numpy(), atol=1e-6)
    got = rt.logits(values, mask)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= LOGITS_TOL, name
    assert rt.transcribe(x).text == tok.decode(ref.argmax(-1)[0])


def test_batched_with_padding(case):
    name, model, tok, fe, rt = case
    xs = [speechlike(n, seed=n) for n in (12_000, 5_000, 8_330)]
    inputs = fe(xs, sampling_rate=SR, padding=True, return_tensors="pt")
    assert ("attention_mask" in inputs) == rt.return_attention_mask
    ref = hf_logits(model, inputs)
    values, mask = rt.preprocess(xs)
    np.testing.assert_allclose(values, inputs["input_values"].numpy(), atol=1e-6)
    if mask is not None:
        np.testing.assert_array_equal(mask, inputs["attention_mask"].numpy())
    got = rt.logits(values, mask)
    assert np.abs(got - ref).max() <= LOGITS_TOL, name  # every frame, padding included
    frames = model._get_feat_extract_output_lengths(torch.tensor([len(x) for x in xs])).tolist()
    want = [tok.decode(ref[b, : frames[b]].argmax(-1)) for b in range(len(xs))]
    assert [t.text for t in rt.transcribe(xs, batch_size=3)] == want


def test_explicit_mask_on_any_model(case):
    """logits() honours a mask the way the model does, whatever the feature extractor's default."""
    name, model, tok, fe, rt = case
    xs = [speechlike(n, seed=n) for n in (6_000, 2_500)]
    inputs = fe(xs, sampling_rate=SR, padding=True, return_attention_mask=True, return_tensors="pt")
    ref = hf_logits(model, inputs)
    got = rt.logits(inputs["input_values"].numpy(), inputs["attention_mask"].numpy())
    assert np.abs(got - ref).max() <= LOGITS_TOL, name


def test_chunked_feature_encoder_is_exact(case):
    name, model, tok, fe, rt = case
    x = speechlike(9_000, seed=5)
    whole = rt.feature_encoder(x, chunk_frames=10**9)
    for chunk in (1, 7, 64):
        assert np.abs(rt.feature_encoder(x, chunk_frames=chunk) - whole).max() <= CHUNK_TOL, (name, chunk)
    with torch.no_grad():
        ref = model.base_model.feature_extractor(torch.from_numpy(x)[None]).numpy()[0].T
    assert np.abs(whole - ref).max() <= LOGITS_TOL


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["w2v-base", "w2v-lv60"])
def test_windowed_matches_transformers_pipeline(variant, tmp_path):
    config_name, overrides, mask = VARIANTS[variant]
    model, tok, fe = build_checkpoint(tmp_path / "ckpt", config_name, overrides, mask)
    convert(str(tmp_path / "ckpt"), tmp_path / "model.wq")
    rt = load(tmp_path / "model.wq")
    pipe = transformers.pipeline("automatic-speech-recognition", model=model, tokenizer=tok, feature_extractor=fe)
    x = speechlike(41_000, seed=3)
    for chunk_s, stride_s in ((0.8, 0.15), (1.0, (0.1, 0.3))):
        want = pipe(x.copy(), chunk_length_s=chunk_s, stride_length_s=stride_s)["text"]
        assert rt.transcribe(x, chunk_length_s=chunk_s, stride_length_s=stride_s).text == want


@pytest.mark.slow
def test_windowed_equals_unwindowed_when_context_is_local(tmp_path):
    """With no attention layers, no input normalisation and LayerNorm convs, every frame depends on a bounded
    neighbourhood; windows whose strides cover it must reproduce the unwindowed ids exactly."""
    overrides = dict(
        feat_extract_norm="layer", do_stable_layer_norm=False, num_hidden_layers=0, num_conv_pos_embeddings=4
    )
    model, tok, fe = build_checkpoint(tmp_path / "ckpt", "Wav2Vec2Config", overrides, True, do_normalize=False)
    convert(str(tmp_path / "ckpt"), tmp_path / "model.wq")
    rt = load(tmp_path / "model.wq")
    x = speechlike(50_000, seed=11)
    whole = rt.transcribe(x, chunk_length_s=0)
    ids = rt.logits(x[None]).argmax(-1)[0]
    for chunk_s, stride_s in ((0.5, 0.1), (0.7, (0.05, 0.2))):
        window = rt._aligned(chunk_s)
        np.testing.assert_array_equal(rt._windowed_ids(x, window, stride_s), ids)
        got = rt.transcribe(x, chunk_length_s=chunk_s, stride_length_s=stride_s)
        assert got.text == whole.text and got.segments == whole.segments


def test_old_weight_norm_naming_loads_the_same(tmp_path):
    """Checkpoints from before torch parametrizations store weight_g / weight_v; both fold to the same kernel."""
    from safetensors.torch import load_file, save_file

    config_name, overrides, mask = VARIANTS["w2v-base"]
    model, tok, fe = build_checkpoint(tmp_path / "ckpt", config_name, overrides, mask)
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(path)
    old = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }
    assert any(k.endswith("weight_g") for k in old)
    save_file(old, path, metadata={"format": "pt"})
    convert(str(tmp_path / "ckpt"), tmp_path / "model.wq")
    rt = load(tmp_path / "model.wq")
    x = speechlike(4_000, seed=1)
    ref = hf_logits(model, fe(x, sampling_rate=SR, return_tensors="pt"))
    assert np.abs(rt.logits(*rt.preprocess([x])) - ref).max() <= LOGITS_TOL
