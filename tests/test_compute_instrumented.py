"""The runtime's counted MACs and bit-operations (compute.count_macs around the real models) equal compute.py's
formulas exactly, on tiny random Whisper and Wav2Vec2 files converted by wavq-convert with integer activations;
and the integer path equals the float simulation of the same quantization bit for bit on the whole model."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from wavq.converter.cli import main as convert_main  # noqa: E402
from wavq.formats.reader import WqFile  # noqa: E402
from wavq.runtime import compute, intlinear, load, ops  # noqa: E402
from wavq.runtime.decoding import DecodingOptions, decode  # noqa: E402

SAMPLE_RATE = 16_000
MAX_NEW = 5  # decoded tokens: enough for several cached steps of a random model


def _convert(checkpoint: str, out: str, *extra: object) -> str:
    args = [checkpoint, "-o", out, "--bits", "4", "--group-size", "16", "-q", *map(str, extra)]
    r = CliRunner().invoke(convert_main, args)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tiny_models import tiny_wav2vec2, tiny_whisper

    root = tmp_path_factory.mktemp("instrumented")
    out = {"wav2vec2": _convert(tiny_wav2vec2(root / "w2v"), os.fspath(root / "w2v.wq"), "--act-bits", "8")}
    try:
        # rotated (QuaRot-style: x R is quantized) where that errs less: both integer routes in one file
        out["whisper"] = _convert(tiny_whisper(root / "wh"), os.fspath(root / "wh.wq"), "--act-bits", "8", "--rotate")
    except pytest.skip.Exception:
        pass
    return out


def _table(path: str):
    with WqFile(path) as f:
        return dict(f.meta["dims"]), compute.table_from_file(f)


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def _assert_equal(counted: compute.Counts, formula: compute.Counts) -> None:
    assert counted.macs == formula.macs
    assert counted.bitops == formula.bitops


def test_files_carry_activation_specs(files):
    for path in files.values():
        _, table = _table(path)
        assert compute.integer_products(table), path
    if "whisper" in files:
        with WqFile(files["whisper"]) as f:
            assert any(t.rotation and t.activation is not None for t in f.tensors.values())


def test_whisper_counts_equal_formulas(files):
    if "whisper" not in files:
        pytest.skip("Whisper tokenizer not cached")
    model = load(files["whisper"])
    dims, table = _table(files["whisper"])
    mel = model.log_mel(_audio(2.0))
    with compute.count_macs() as enc:
        features = model.encode(mel)
    _assert_equal(enc, compute.whisper_encoder(dims, table))
    with compute.count_macs() as kv:
        model.cross_kv(features)
    _assert_equal(kv, compute.whisper_cross_kv(dims, table))
    with compute.count_macs() as window:
        result = decode(model, mel, DecodingOptions(max_new_tokens=MAX_NEW))
    ended = len(result.tokens) < MAX_NEW  # the end-of-text token was generated (and stripped)
    generated = len(result.tokens) + ended
    assert generated >= 2  # several cached decoder steps were counted
    _assert_equal(window, compute.whisper_greedy_window(dims, table, len(result.prompt), generated))


def test_wav2vec2_counts_equal_formulas(files):
    model = load(files["wav2vec2"])
    dims, table = _table(files["wav2vec2"])
    for seconds in (0.5, 1.3):
        x = _audio(seconds, seed=1)
        with compute.count_macs() as c:
            model.logits(x[None])
        _assert_equal(c, compute.wav2vec2_forward(dims, table, x.shape[0]))


def _whole_model_logits(path: str) -> np.ndarray:
    model = load(path)
    if WqFile(path).meta["architecture"] == "wav2vec2-ctc":
        return model.logits(_audio(1.0, seed=2)[None])
    mel = model.log_mel(_audio(1.0, seed=2))
    cross = model.cross_kv(model.encode(mel))
    state = model.new_state(1, 8)
    return model.decoder_step(np.array([[model.generation.decoder_start_token_id, 1, 2]]), state, cross)


@pytest.mark.parametrize("arch", ["whisper", "wav2vec2"])
def test_integer_path_equals_float_simulation_end_to_end(files, arch, monkeypatch):
    if arch not in files:
        pytest.skip("Whisper tokenizer not cached")
    integer = _whole_model_logits(files[arch])
    monkeypatch.setattr(ops, "int_linear", intlinear.fake_linear)
    simulated = _whole_model_logits(files[arch])
    assert np.isfinite(integer).all()
    np.testing.assert_array_equal(integer.view(np.uint32), simulated.view(np.uint32))


def test_info_compute(files):
    import json

    from wavq.runtime.cli import main as wavq_main

    for path in files.values():
        r = CliRunner().invoke(wavq_main, ["info", "--compute", "--json", path])
        assert r.exit_code == 0, r.output
        report = json.loads(r.output)
        dims, table = _table(path)
        with WqFile(path) as f:
            expected = compute.summary(f.meta, table)
        assert report["per_window"] == expected["per_window"]
        seconds = expected["window_seconds"]
        assert report["per_audio_second"]["macs"] == {k: v / seconds for k, v in expected["per_window"]["macs"].items()}
        assert report["integer_products"] == compute.integer_products(table)
        assert "attention_scores" in report["float_products"]
        text = CliRunner().invoke(wavq_main, ["info", "--compute", path])
        assert text.exit_code == 0 and "bit-ops" in text.output and "integer products" in text.output, text.output


def test_static_activation_scales(tmp_path):
    """--act-static stores one scale per reached weight (observed on the calibration audio); the integer path
    still equals the float simulation bit for bit."""
    sf = pytest.importorskip("soundfile")
    from tiny_models import tiny_wav2vec2

    (tmp_path / "calib").mkdir()
    for i in range(2):
        sf.write(tmp_path / "calib" / f"{i}.wav", _audio(0.8, seed=10 + i), SAMPLE_RATE)
    ckpt = tiny_wav2vec2(tmp_path / "w2v")
    path = _convert(
        ckpt, os.fspath(tmp_path / "s.wq"), "--act-bits", "6", "--act-static", "--calib", tmp_path / "calib"
    )
    with WqFile(path) as f:
        specs = {n: t.activation for n, t in f.tensors.items() if t.activation is not None}
        assert f.meta["quantization"]["act_scale"] == "static"
    static = [s for s in specs.values() if s.scale is not None]
    assert static and all(s.bits == 6 and s.scale > 0 for s in static)
    assert "activation_specs" not in WqFile(path).meta["quantization"]
