"""--smooth ALPHA end to end on a tiny random Whisper (tests/tiny_models.py): the pipeline's smoothing stage
(converter/quant/smooth.py smooth_model, pipeline.smooth) keeps the float function, folds only where the graph
allows, and lowers the W8A8 error of a model with outlier channels."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from quant_helpers import apply_to_model  # noqa: E402
from tiny_models import tiny_whisper  # noqa: E402

from wavq.converter.calibrate import CalibItem  # noqa: E402
from wavq.converter.cli import main as convert_main  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.act import fake_quantize  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.registry import ConversionError  # noqa: E402
from wavq.converter.whisper import WhisperExporter  # noqa: E402
from wavq.formats.activation import ActivationSpec  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE  # noqa: E402

OUTLIER_CHANNEL, OUTLIER_GAIN = 5, 40.0  # one LayerNorm channel much louder than the rest, as in real checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


def _setup(checkpoint: str, outlier: bool = False):
    model = transformers.WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # LayerNorms start at 1 / 0: make them (and the folding into them) matter
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
        if outlier:
            for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
                layer.self_attn_layer_norm.weight[OUTLIER_CHANNEL] = OUTLIER_GAIN
                layer.final_layer_norm.weight[OUTLIER_CHANNEL] = OUTLIER_GAIN
    fe = transformers.WhisperFeatureExtractor.from_pretrained(checkpoint)
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    exporter = WhisperExporter(model, checkpoint, fe, tok, transformers.GenerationConfig.from_pretrained(checkpoint))
    rng = np.random.default_rng(0)
    t = np.arange(12000) / SAMPLE_RATE
    items = [
        CalibItem(f"u{i}", (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)))
        for i in range(2)
    ]
    items = [CalibItem(it.id, it.audio.astype(np.float32)) for it in items]
    return model, exporter, list(exporter.tensors()), items


def _smoothed(exporter, tensors, items, alpha: float):
    recipe = Recipe(bits=8, smooth=alpha)
    cal = pipeline.calibrate(exporter, tensors, recipe, recipe.plan, items)
    return cal, *pipeline.smooth(cal, tensors, recipe)


@pytest.fixture(scope="module")
def smoothed_outlier_model(checkpoint):
    """(float model with outlier channels, the same smoothed at alpha 0.5 by the pipeline, the exporter's
    tensors before and after, the smoothing report, calibration features, decoder ids)."""
    model, exporter, tensors, items = _setup(checkpoint, outlier=True)
    recipe = Recipe(bits=8, smooth=0.5)
    cal = pipeline.calibrate(exporter, tensors, recipe, recipe.plan, items)
    smoothed, report = pipeline.smooth(cal, tensors, recipe)
    smooth_model = copy.deepcopy(model)
    apply_to_model(smooth_model, {t.name: t.array for t in smoothed})
    x = torch.cat([b.x for b in cal.batches])  # the calibration utterances' log-mel features
    ids = torch.tensor([[model.config.decoder_start_token_id, 5, 17, 33, 40]] * len(x))
    return model, smooth_model, tensors, smoothed, report, x, ids


@torch.no_grad()
def test_smoothing_keeps_the_float_function_and_reports_its_sites(smoothed_outlier_model):
    model, smooth_model, tensors, smoothed, report, x, ids = smoothed_outlier_model
    changed = [a.name for a, b in zip(tensors, smoothed) if not np.array_equal(a.array, b.array)]
    assert "model.encoder.layers.0.self_attn_layer_norm.weight" in changed
    assert "model.encoder.layers.0.self_attn.v_proj.weight" in changed  # rows: out_proj's site; columns: qkv's
    assert "model.encoder.layers.0.fc2.weight" not in changed  # GELU before it: nothing to fold into
    assert report["alpha"] == 0.5
    assert ["model.encoder.layers.0.fc2.weight"] in report["skipped"]
    assert [
        "model.decoder.layers.0.encoder_attn.k_proj.weight",
        "model.decoder.layers.0.encoder_attn.v_proj.weight",
    ] in (report["skipped"])
    assert ["model.encoder.layers.0.fc1.weight"] in report["sites"]
    want = model(input_features=x, decoder_input_ids=ids).logits
    got = smooth_model(input_features=x, decoder_input_ids=ids).logits
    assert not torch.equal(smooth_model.model.encoder.layers[0].fc1.weight, model.model.encoder.layers[0].fc1.weight)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _w8a8_error(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor) -> float:
    """Relative squared error of every linear's output with 8-bit weights (symmetric, per output channel) and
    8-bit dynamic per-row inputs, summed over the linears of the model on one forward pass."""
    spec, num, den = ActivationSpec(8), [0.0], [0.0]

    def hook(module, args):
        a, w = args[0], module.weight
        step = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        exact = torch.nn.functional.linear(a, w)
        err = torch.nn.functional.linear(fake_quantize(a, spec), torch.round(w / step) * step) - exact
        num[0] += float(err.pow(2).sum())
        den[0] += float(exact.pow(2).sum())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        model(input_features=x, decoder_input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return num[0] / den[0]


@torch.no_grad()
def test_smoothing_lowers_the_w8a8_error_of_an_outlier_model(smoothed_outlier_model):
    model, smooth_model, _, _, _, x, ids = smoothed_outlier_model
    assert _w8a8_error(smooth_model, x, ids) < 0.5 * _w8a8_error(model, x, ids)


def test_smooth_needs_calibration_audio_and_a_valid_alpha(checkpoint, tmp_path):
    _, exporter, tensors, _ = _setup(checkpoint)
    with pytest.raises(ConversionError, match="calibration audio"):
        pipeline.quantize_tensors(exporter, tensors, Recipe(bits=8, smooth=0.5), None)
    with pytest.raises(ValueError, match="alpha"):
        Recipe(bits=8, smooth=1.5)
    with pytest.raises(ValueError, match="quantized weights"):
        Recipe(method="none", smooth=0.5)
    r = CliRunner().invoke(convert_main, ["unused", "-o", str(tmp_path / "m.wq"), "--bits", "8", "--smooth", "0.5"])
    assert r.exit_code != 0 and "--smooth" in r.output and "--calib" in r.output
    assert not (tmp_path / "m.wq").exists()


def test_smoothed_conversion_runs_in_the_runtime(checkpoint, tmp_path):
    """Through wavq-convert on a saved tiny checkpoint: the file loads and records the smoothing."""
    from wavq.formats import WqFile
    from wavq.runtime import load

    calib = tmp_path / "calib"
    calib.mkdir()
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(1)
    for i in range(2):
        sf.write(calib / f"c{i}.wav", (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    out = tmp_path / "s.wq"
    args = [checkpoint, "-o", str(out), "--bits", "8", "--act-bits", "8", "--smooth", "0.8", "--calib", str(calib)]
    r = CliRunner().invoke(convert_main, [*args, "--group-size", "16", "-q"])
    assert r.exit_code == 0, r.output
    with WqFile(str(out)) as f:
        q = f.meta["quantization"]
        assert q["smooth"]["alpha"] == 0.8 and q["smooth"]["sites"] and q["smooth"]["skipped"]
    assert load(str(out)) is not None
