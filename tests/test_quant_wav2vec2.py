"""Calibrated quantization of tiny random Wav2Vec2 / HuBERT / Data2VecAudio CTC models: the block runner matches
transformers, AWQ folding keeps the float function, and what quantize_tensors returns (folded norms, input
scales, quantized weights) runs in the numpy runtime exactly as in torch."""

from __future__ import annotations

import copy
import importlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quant_helpers import apply_to_model, run_awq_with_random_scales  # noqa: E402
from test_wav2vec2_parity import VARIANTS, build_checkpoint  # noqa: E402

import wavq.converter.wav2vec2 as w2v_converter  # noqa: E402
from wavq.converter import calib_wav2vec2  # noqa: E402
from wavq.converter.calibrate import CalibItem  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.registry import Exporter  # noqa: E402
from wavq.formats import QuantizedTensor, write_wq  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE  # noqa: E402
from wavq.runtime.wav2vec2 import Wav2Vec2CTCModel  # noqa: E402
from wavq.runtime.weights import Weights  # noqa: E402

CASES = ["w2v-base", "w2v-lv60", "hubert-base-noprojln", "data2vec"]
SR = SAMPLE_RATE


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory):
    config_name, overrides, mask = VARIANTS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    model = build_checkpoint(d / "ckpt", config_name, overrides, mask)
    model = model[0] if isinstance(model, tuple) else model
    exporter = w2v_converter.load(str(d / "ckpt"))
    rng = np.random.default_rng(0)
    t = np.arange(6000) / SR
    items = [
        CalibItem(
            f"u{i}",
            (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t * (1 + 2 * t)) + 0.05 * rng.standard_normal(t.size)).astype(
                np.float32
            )[: 4000 + 700 * i],
        )
        for i in range(4)
    ]
    return request.param, exporter, list(exporter.tensors()), items


def _calibration(exporter, tensors, items, split_attention=True):
    return exporter.calibration(items, tensors, split_attention)


def _logits(model, cal):
    with torch.no_grad():
        return [model(b.x[0]).logits for b in cal.batches]


def _runtime_matches_torch(exporter, tensors, items, out, tmp_path):
    """Write `out` to a file and check the numpy runtime's logits against torch with the same weights loaded;
    returns (that torch model, the calibration batches it was checked on)."""
    torch_model = copy.deepcopy(exporter.model)
    calib_wav2vec2.prepare(torch_model)  # plain positional conv, named like the stored tensor
    apply_to_model(torch_model, out)
    path = write_wq(tmp_path / "q.wq", exporter.meta(), {**{t.name: t.array for t in exporter.extra_tensors()}, **out})
    runtime = Wav2Vec2CTCModel(Weights.open(path))
    cal = _calibration(exporter, tensors, items[:2])
    for b, ref in zip(cal.batches, _logits(torch_model, cal)):
        got = runtime.logits(b.x[0].numpy())
        assert np.abs(got - ref.numpy()).max() < 1e-3 * max(1.0, float(ref.abs().max()))
    return torch_model, cal


@pytest.mark.slow
@pytest.mark.parametrize("split_attention", [True, False])
def test_block_runner_reproduces_transformers(case, split_attention):
    _, exporter, tensors, items = case
    cal = _calibration(exporter, tensors, items, split_attention)
    batches = cal.batches
    for block in cal.blocks[:-1]:
        batches = [block.forward(b) for b in batches]
    with torch.no_grad():
        for got, ref in zip([cal.blocks[-1].forward(b) for b in batches], _logits(exporter.model, cal)):
            assert (got - ref).abs().max() < 1e-5


@pytest.mark.slow
def test_awq_folding_leaves_the_float_model_unchanged(case, monkeypatch):
    name, exporter, tensors, items = case
    cal = _calibration(exporter, tensors, items, split_attention=False)  # as AWQ runs it
    before = _logits(exporter.model, cal)
    q = run_awq_with_random_scales(cal, monkeypatch, seed=2)
    stable = exporter.dims["do_stable_layer_norm"]
    assert any(n.endswith("attention.v_proj.weight") for n in q.modified)
    assert any(n.endswith("q_proj.input_scale") for n in q.input_scales) == (not stable)
    for a, b in zip(before, _logits(cal.model, cal)):
        assert (a - b).abs().max() < 1e-4 * max(1.0, float(a.abs().max()))


@pytest.mark.slow
def test_quantized_output_runs_in_the_runtime_as_in_torch(case, tmp_path):
    """Folded LayerNorms, v_proj rows, input scales and GPTQ codes mean the same thing to the numpy runtime as
    to torch; and the exporter's model is left untouched by calibration."""
    name, exporter, tensors, items = case
    state = {k: v.clone() for k, v in exporter.model.state_dict().items()}
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="awq+clip+gptq", bits=4, group_size=8), items
    )
    assert all(torch.equal(v, exporter.model.state_dict()[k]) for k, v in state.items())
    assert sum(isinstance(v, QuantizedTensor) for v in out.values()) == sum(t.quantizable for t in tensors)
    assert info["relative_output_error"]
    originals = {t.name: t.array for t in tensors}
    folded = [
        n
        for n, v in out.items()
        if n in originals and not isinstance(v, QuantizedTensor) and not np.array_equal(v, originals[n])
    ]
    scales = [n for n in out if n.endswith(".input_scale")]
    # AWQ changed things the runtime has to honour: folded LayerNorms (pre-norm layers), input scales (post-norm)
    if exporter.dims["do_stable_layer_norm"]:
        assert any(n.endswith("layer_norm.weight") for n in folded)
    else:
        assert scales
    torch_model, cal = _runtime_matches_torch(exporter, tensors, items, out, tmp_path)
    # and quantization error stays moderate at 4 bits against the float model
    for q, f in zip(_logits(torch_model, cal), _logits(exporter.model, cal)):
        assert float(((q - f) ** 2).mean()) < 0.1 * float((f**2).mean())


@pytest.mark.slow
def test_gptq_needs_supported_architecture(case):
    _, exporter, tensors, items = case

    class Other(Exporter):
        architecture = "other"

    with pytest.raises(pipeline.ConversionError, match="not available for other"):
        pipeline.quantize_tensors(Other(exporter.model, "other"), tensors, Recipe(method="gptq"), items)


def test_module_is_importable_by_name():
    assert importlib.import_module("wavq.converter.calib_wav2vec2") is calib_wav2vec2


@pytest.mark.slow
def test_mixed_precision_with_calibration(case):
    _, exporter, tensors, items = case
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="gptq", bits=None, target_bpw=5.0, group_size=8), items
    )
    qts = [v for v in out.values() if isinstance(v, QuantizedTensor)]
    assert 4.7 < info["bits_per_weight"] <= 5.0 and len({q.bits for q in qts}) > 1


@pytest.mark.slow
def test_tune_lowers_the_kl_and_runs_in_the_runtime(case, tmp_path):
    """Distillation tuning on CTC frame distributions: closer to the float model than GPTQ alone, and the tuned
    scales and norms mean the same thing to the numpy runtime as to torch."""
    from wavq.converter.quant.tune import partition_kl, teacher_targets

    _, exporter, tensors, items = case
    cal = _calibration(exporter, tensors, items)
    teacher = teacher_targets(exporter.model, cal.batches, calib_wav2vec2.outputs)

    def kl_and_logits(out):
        m = copy.deepcopy(exporter.model)
        calib_wav2vec2.prepare(m)
        apply_to_model(m, out)
        with torch.no_grad():
            logits = [calib_wav2vec2.outputs(m, b)[0] for b in cal.batches]
        kl = sum(
            float(partition_kl(lg, teacher.ids[i], teacher.logp[i], teacher.log_rest[i])) for i, lg in enumerate(logits)
        ) / sum(lg.shape[0] for lg in logits)
        return kl, logits

    base, _ = pipeline.quantize_tensors(exporter, tensors, Recipe(method="gptq", bits=3, group_size=8), items)
    tuned, info = pipeline.quantize_tensors(exporter, tensors, Recipe(method="gptq+tune", bits=3, group_size=8), items)
    kl_base, _ = kl_and_logits(base)
    kl_tuned, logits = kl_and_logits(tuned)
    assert kl_tuned < kl_base, (kl_tuned, kl_base)  # 8 steps on 4 tiny utterances: a small but sure gain
    path = write_wq(
        tmp_path / "t.wq", exporter.meta(), {**{t.name: t.array for t in exporter.extra_tensors()}, **tuned}
    )
    runtime = Wav2Vec2CTCModel(Weights.open(path))
    for b, ref in zip(cal.batches, logits):
        assert np.abs(runtime.logits(b.x[0].numpy()) - ref.numpy()).max() < 1e-3 * max(1.0, float(ref.abs().max()))


@pytest.mark.slow
def test_rotated_weights_run_in_the_runtime_as_in_torch(case, tmp_path):
    """--rotate on every architecture variant: the weights that kept a rotation (their error on the calibration
    inputs was smaller) are undone by the runtime exactly as torch computes with the converter's weights."""
    name, exporter, tensors, items = case
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="gptq+tune", bits=3, group_size=8, rotate=True), items
    )
    assert info["rotated"], "no weight of the random model kept a rotation"
    assert all(out[n].rotation for n in info["rotated"])
    _runtime_matches_torch(exporter, tensors, items, out, tmp_path)
