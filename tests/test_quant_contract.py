"""The converter's typed contracts: convert takes a Recipe, the rounders take plain matrices, the pipeline
stages hand each other what the next one needs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quant_helpers import same_bytes  # noqa: E402

from wavq.converter.export import convert  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.gptq import gptq  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.quant.rtn import QuantSpec, fake_quant, rtn  # noqa: E402
from wavq.converter.registry import ConversionError, Exporter, ExportTensor  # noqa: E402
from wavq.formats import QuantizedTensor  # noqa: E402


def _tensors() -> list[ExportTensor]:
    rng = np.random.default_rng(0)

    def arr(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    return [
        ExportTensor("embed.weight", arr(40, 32), "embedding"),
        ExportTensor("conv.weight", arr(16, 8, 3), "conv"),
        ExportTensor("conv.bias", arr(16), "bias"),
        ExportTensor("fc1.weight", arr(32, 64), "linear"),
        ExportTensor("fc2.weight", arr(64, 32), "linear"),
        ExportTensor("norm.weight", arr(32), "norm"),
    ]


def test_convert_takes_a_recipe_only(tmp_path):
    out = tmp_path / "m.wq"
    for wrong in ({"method": "rtn", "bits": 4}, "rtn", 4):
        with pytest.raises(TypeError, match="Recipe"):
            convert("openai/whisper-tiny.en", out, wrong)
    assert not out.exists()


@pytest.mark.parametrize("spec", [QuantSpec(4, 16, False, outliers=2), QuantSpec(4, 16, False, rotation=16)])
def test_rounders_take_a_plain_matrix_spec(spec):
    w = np.ones((8, 32), np.float32)
    for call in (lambda: rtn(w, spec), lambda: fake_quant(w, spec), lambda: gptq(w, torch.eye(32), spec, 0.01)):
        with pytest.raises(ValueError, match="plain spec"):
            call()


def test_stages_compose():
    """select -> allocate -> quantize -> assemble -> describe give quantize_tensors' contract: pins and float
    keeps honoured, embeddings decomposed, conv weights in their own shape, every tensor in input order."""
    tensors = _tensors()
    recipe = Recipe(bits=3, group_size=16, keep=(("fc2.*", 6), ("conv.*", 16)))
    sel = pipeline.select(tensors, recipe)
    assert [t.name for t in sel.free] == ["embed.weight", "fc1.weight"]
    assert sel.pinned == {"fc2.weight": 6} and sel.kept_float == ["conv.weight"]
    assert pipeline.calibrate(Exporter(None, "x"), tensors, recipe, recipe.plan, None) is None
    specs = pipeline.allocate(sel, recipe, None, progress=False)
    assert specs == {
        "embed.weight": QuantSpec(3, 16, False, outliers=recipe.outlier_columns),
        "fc1.weight": QuantSpec(3, 16, False),
        "fc2.weight": QuantSpec(6, 16, False),
    }
    quantized = pipeline.quantize(sel, specs, recipe, recipe.plan, None, progress=False)
    assert quantized.uncalibrated == list(specs) and quantized.sequential is None
    out = pipeline.assemble(tensors, quantized.results, pipeline.NOT_TUNED, quantized, None)
    assert list(out) == [t.name for t in tensors]
    assert isinstance(out["embed.weight"], QuantizedTensor) and out["embed.weight"].decomposed
    assert out["conv.weight"] is tensors[1].array  # kept float
    info = pipeline.describe(
        sel, specs, quantized.results, quantized, pipeline.NOT_TUNED, recipe, recipe.plan, None, None
    )
    assert info["tensor_bits"] == {"embed.weight": 3, "fc1.weight": 3, "fc2.weight": 6}
    assert info["kept_float"] == ["conv.weight"] and "calibration" not in info
    whole, whole_info = pipeline.quantize_tensors(Exporter(None, "x"), tensors, recipe)
    assert same_bytes(out, whole) and whole_info == info


def test_calibrated_methods_need_an_exporter_with_calibration():
    tensors = _tensors()
    recipe = Recipe(method="gptq", bits=4)
    items = [object()]
    with pytest.raises(ConversionError, match="needs calibration audio"):
        pipeline.calibrate(Exporter(None, "x"), tensors, recipe, recipe.plan, None)
    with pytest.raises(ConversionError, match="not available"):
        pipeline.calibrate(Exporter(None, "x"), tensors, recipe, recipe.plan, items)
