"""Wav2Vec2-CTC conversion: what is stored, what is rejected, quantized/f16 files, CTC decoding vs the tokenizer."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_wav2vec2_parity import SR, VARIANTS, build_checkpoint, hf_logits, speechlike  # noqa: E402
from tiny_models import CTC_VOCAB as VOCAB  # noqa: E402
from tiny_models import TINY_CTC_DIMS  # noqa: E402

import wavq.converter.wav2vec2 as w2v_converter  # noqa: E402
from wavq.converter.export import convert  # noqa: E402
from wavq.converter.registry import QUANTIZABLE_KINDS, UnsupportedModelError, loader_for  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.wav2vec2 import CTCDecoder, Wav2Vec2InputError  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    config_name, overrides, mask = VARIANTS["w2v-base"]
    model, tok, fe = build_checkpoint(d / "ckpt", config_name, {**overrides, "mask_time_prob": 0.05}, mask)
    return d, model, tok, fe


def test_stored_names_and_kinds(base):
    d, model, tok, fe = base
    exporter = w2v_converter.load(str(d / "ckpt"))
    tensors = list(exporter.tensors())
    names = [t.name for t in tensors]
    assert len(names) == len(set(names))
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight" in names  # the folded weight norm, the listed exception
    assert not any("parametrizations" in n or n.endswith(("weight_g", "weight_v", "masked_spec_embed")) for n in names)
    kinds = {t.name: t.kind for t in tensors}
    assert kinds["wav2vec2.feature_extractor.conv_layers.0.conv.weight"] == "conv"
    assert kinds["wav2vec2.encoder.pos_conv_embed.conv.weight"] == "conv"
    assert kinds["lm_head.weight"] == kinds["wav2vec2.feature_projection.projection.weight"] == "linear"
    assert kinds["wav2vec2.encoder.layers.0.attention.q_proj.weight"] == "linear"
    assert all(t.kind not in QUANTIZABLE_KINDS for t in tensors if t.array.ndim == 1)
    folded = model.wav2vec2.encoder.pos_conv_embed.conv.weight.detach().numpy()
    np.testing.assert_allclose(
        dict((t.name, t.array) for t in tensors)["wav2vec2.encoder.pos_conv_embed.conv.weight"], folded, atol=1e-7
    )
    meta = exporter.meta()
    assert meta["architecture"] == "wav2vec2-ctc"
    assert meta["tokenizer"]["vocab"] == VOCAB and meta["tokenizer"]["pad_token"] == "<pad>"
    assert meta["tokenizer"]["word_delimiter_token"] == "|"
    assert meta["preprocess"] == {
        "sampling_rate": SR,
        "do_normalize": True,
        "return_attention_mask": False,
        "padding_value": 0.0,
    }


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_old_style_weight_norm_module_folds():
    conv = torch.nn.Conv1d(8, 8, 5, padding=2, groups=2)
    old = torch.nn.utils.weight_norm(conv, name="weight", dim=2)
    with torch.no_grad():
        old.weight_g.mul_(1.7)
    x = torch.randn(1, 8, 20)
    with torch.no_grad():
        ref = old(x)
        got = torch.nn.functional.conv1d(
            x, torch.from_numpy(w2v_converter.fold_weight_norm(old)), old.bias, padding=2, groups=2
        )
    assert (got - ref).abs().max() < 1e-6


def _expect_rejected(directory, match):
    with pytest.raises(UnsupportedModelError, match=match):
        w2v_converter.load(str(directory))


def test_rejects_pretraining_only_checkpoints(tmp_path):
    config_name, overrides, mask = VARIANTS["w2v-base"]
    config = transformers.Wav2Vec2Config(**{**TINY_CTC_DIMS, **overrides})
    transformers.Wav2Vec2ForPreTraining(config).save_pretrained(tmp_path / "pt")
    _expect_rejected(tmp_path / "pt", "Wav2Vec2ForPreTraining checkpoint without a CTC head")
    # no architectures recorded, but the weights lack lm_head
    from safetensors.torch import load_file, save_file

    build_checkpoint(tmp_path / "nohead", config_name, overrides, mask)
    path = tmp_path / "nohead" / "model.safetensors"
    save_file(
        {k: v for k, v in load_file(path).items() if not k.startswith("lm_head")}, path, metadata={"format": "pt"}
    )
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "nohead")
    cfg.architectures = None
    cfg.save_pretrained(tmp_path / "nohead")
    _expect_rejected(tmp_path / "nohead", "no trained CTC head")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(add_adapter=True, output_hidden_size=16), "add_adapter"),
        (dict(adapter_attn_dim=8), "adapter"),
        (dict(hidden_act="gelu_fast"), "hidden_act"),
        (dict(feat_extract_activation="tanh"), "feat_extract_activation"),
    ],
)
def test_rejects_options_it_cannot_run(tmp_path, overrides, match):
    config_name, base_overrides, mask = VARIANTS["w2v-base"]
    build_checkpoint(tmp_path / "x", config_name, {**base_overrides, **overrides}, mask)
    _expect_rejected(tmp_path / "x", match)


def test_conformer_is_rejected_by_the_registry():
    with pytest.raises(UnsupportedModelError, match="not supported"):
        loader_for(transformers.Wav2Vec2ConformerConfig())
    assert loader_for(transformers.HubertConfig()) is w2v_converter.load


@pytest.mark.parametrize("bits, group_size, tol", [(8, 0, 0.05), (4, 128, 0.5)])  # relative L2 logits error
def test_rtn_quantized_file_runs(base, tmp_path, bits, group_size, tol):
    """export.convert with an RTN recipe quantizes the conv and linear weights; the runtime runs the file."""
    from wavq.converter.quant.recipe import Recipe

    d, model, tok, fe = base
    report = convert(str(d / "ckpt"), tmp_path / "q.wq", Recipe(method="rtn", bits=bits, group_size=group_size))
    assert set(report.quantization["tensor_bits"]) == {
        t.name for t in w2v_converter.load(str(d / "ckpt")).tensors() if t.quantizable
    }
    rt = load(tmp_path / "q.wq")
    x = speechlike(8_000, seed=2)
    ref = hf_logits(model, fe(x, sampling_rate=SR, return_tensors="pt"))
    got = rt.logits(*rt.preprocess([x]))
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - ref) <= tol * np.linalg.norm(ref)


def test_f16_file(base, tmp_path):
    d, model, tok, fe = base
    convert(str(d / "ckpt"), tmp_path / "h.wq", dtype="f16")
    rt = load(tmp_path / "h.wq")
    x = speechlike(8_000, seed=3)
    ref = hf_logits(model, fe(x, sampling_rate=SR, return_tensors="pt"))
    assert np.abs(rt.logits(*rt.preprocess([x])) - ref).max() <= 1e-2


def test_input_errors(base, tmp_path):
    d, model, tok, fe = base
    convert(str(d / "ckpt"), tmp_path / "m.wq")
    rt = load(tmp_path / "m.wq")
    with pytest.raises(Wav2Vec2InputError, match="receptive field"):
        rt.logits(np.zeros(10, np.float32))
    with pytest.raises(Wav2Vec2InputError, match="does not match"):
        rt.logits(np.zeros((2, 800), np.float32), np.ones((2, 700), np.int32))
    assert rt.transcribe(np.zeros(10, np.float32)).text == ""
    with pytest.raises(ValueError, match="chunk_length_s"):
        rt.transcribe(speechlike(4_000, 1), chunk_length_s=-1)
    # long audio is windowed by default (30 s windows past 60 s), never with 0, always past a given length
    assert rt._window_length(60 * SR, None) == 0
    assert rt._window_length(61 * SR, None) == 30 * SR
    assert rt._window_length(600 * SR, 0) == 0
    assert rt._window_length(3 * SR, 2.0) == 2 * SR and rt._window_length(SR, 2.0) == 0


@pytest.mark.parametrize("lower", [False, True])
def test_ctc_decoder_matches_tokenizer(tmp_path, lower):
    config_name, overrides, mask = VARIANTS["w2v-base"]
    _, tok, _ = build_checkpoint(tmp_path / "t", config_name, overrides, mask, do_lower_case=lower)
    meta = {
        "vocab": VOCAB + ["<extra>"],
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "word_delimiter_token": "|",
        "replace_word_delimiter_char": " ",
        "do_lower_case": lower,
        "clean_up_tokenization_spaces": False,
    }
    meta["vocab"][-1] = "<unk>"  # an lm_head row beyond the tokenizer's vocabulary decodes to <unk>
    dec = CTCDecoder(meta)
    rng = np.random.default_rng(0)
    weights = np.full(len(VOCAB) + 1, 1.0)
    weights[0], weights[4] = 12.0, 4.0  # mostly blanks, some word delimiters, like real CTC output
    for trial in range(30):
        runs = rng.choice(len(weights), size=rng.integers(0, 60), p=weights / weights.sum())
        ids = np.repeat(runs, rng.integers(1, 4, size=runs.shape[0]))
        ids[ids == len(VOCAB)] = 3 if trial % 2 else len(VOCAB)
        text, words = dec.decode(ids)
        assert text == tok.decode(ids.tolist())
        if ids.size:
            want = tok.decode(ids.tolist(), output_word_offsets=True)["word_offsets"]
            assert [(w.lower() if lower else w, s, e) for w, s, e in words] == [
                (o["word"].lower() if lower else o["word"], o["start_offset"], o["end_offset"]) for o in want
            ]


@pytest.mark.slow
def test_eval_cli_reports_wer_and_warns_when_evaluating_calibration_audio(base, tmp_path):
    from click.testing import CliRunner

    from wavq.converter.calibrate import select_calibration
    from wavq.converter.quant.recipe import Recipe
    from wavq.runtime.cli import main

    d, *_ = base
    samples = os.path.join(os.path.dirname(__file__), os.pardir, "samples")
    calib = select_calibration(samples, 2, seed=0)
    convert(str(d / "ckpt"), tmp_path / "c.wq", Recipe(method="clip", bits=8), calib_items=calib)
    convert(str(d / "ckpt"), tmp_path / "f.wq")
    runner = CliRunner()
    used = runner.invoke(main, ["eval", str(tmp_path / "c.wq"), "--data", samples])
    assert used.exit_code == 0, used.output
    assert "2 of 4 evaluation utterances were used for calibration" in used.stderr
    assert any(c.id in used.stderr for c in calib)
    assert "WER" in used.stdout and "utterances     4" in used.stdout
    clean = runner.invoke(main, ["eval", str(tmp_path / "f.wq"), "--data", samples])  # no calibration: no warning
    assert clean.exit_code == 0, clean.output
    assert "warning" not in clean.stderr
