"""`wavq-convert` on user mistakes: clear one-line errors, and never a partial or clobbered output file."""

import os

import pytest
from click.testing import CliRunner

pytest.importorskip("transformers")

from wavq.converter.cli import main  # noqa: E402


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_unsupported_architecture(tmp_path):
    from transformers import BertConfig

    src = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(src)
    r = _run(src, "-o", tmp_path / "out.wq")
    assert r.exit_code == 1
    assert "'bert' is not supported" in r.output and "WhisperConfig" in r.output
    assert not (tmp_path / "out.wq").exists()
    assert "Traceback" not in r.output


def test_missing_source(tmp_path):
    r = _run(tmp_path / "nowhere", "-o", tmp_path / "out.wq")
    assert r.exit_code == 1 and "cannot load a model config" in r.output
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "out.wq"
    out.write_bytes(b"precious")
    r = _run("openai/whisper-tiny.en", "-o", out)
    assert r.exit_code == 1 and "--force" in r.output
    assert out.read_bytes() == b"precious"


def test_options_need_bits(tmp_path):
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--method", "gptq")
    assert r.exit_code == 2 and "need --bits" in r.output
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--rotate")
    assert r.exit_code == 2 and "need --bits" in r.output
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--bits", "4", "--keep", "conv1")
    assert r.exit_code == 2 and "PATTERN=BITS" in r.output
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--bits", "9")
    assert r.exit_code == 2
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--bits", "3", "--mixed-groups", "64")
    assert r.exit_code == 2 and "--mixed-groups needs --target-bpw" in r.output
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--bits", "3", "--min-bits", "3")
    assert r.exit_code == 2 and "--min-bits needs --target-bpw" in r.output
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--target-bpw", "3.3", "--min-bits", "9")
    assert r.exit_code == 2
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--target-bpw", "3.3", "--mixed-groups", "64;32")
    assert r.exit_code == 2 and "comma-separated group sizes" in r.output
    assert os.listdir(tmp_path) == []


def test_missing_output_directory(tmp_path):
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "no" / "such" / "dir.wq")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_tune_epochs_and_min_bits_reach_the_recipe(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    import wavq.converter.export as export
    from wavq.converter.registry import ConversionError

    seen = {}

    def convert(source, output, recipe, **kw):  # records what the CLI built, writes nothing
        seen["recipe"] = recipe
        raise ConversionError("stopped before loading the model")

    monkeypatch.setattr(export, "convert", convert)
    (tmp_path / "calib").mkdir()
    sf.write(tmp_path / "calib" / "a.wav", np.zeros(1600, np.float32), 16000)
    r = _run(
        "openai/whisper-tiny.en",
        "-o",
        tmp_path / "o.wq",
        "--bits",
        "3",
        "--method",
        "gptq+tune",
        "--calib",
        tmp_path / "calib",
        "--tune-epochs",
        "5",
        "-q",
    )
    assert r.exit_code == 1 and "stopped before loading" in r.output
    assert seen["recipe"].tune_epochs == 5 and seen["recipe"].method == "gptq+tune"
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--target-bpw", "3.3", "--min-bits", "3", "-q")
    assert r.exit_code == 1 and seen["recipe"].mixed_min_bits == 3 and seen["recipe"].target_bpw == 3.3
    r = _run("openai/whisper-tiny.en", "-o", tmp_path / "o.wq", "--bits", "3", "--tune-epochs", "0")
    assert r.exit_code == 2
    r = _run(
        "openai/whisper-tiny.en",
        "-o",
        tmp_path / "o.wq",
        "--bits",
        "3",
        "--method",
        "gptq",
        "--rotate",
        "--calib",
        tmp_path / "calib",
        "-q",
    )
    assert r.exit_code == 1 and seen["recipe"].rotate is True
    r = _run(
        "openai/whisper-tiny.en",
        "-o",
        tmp_path / "o.wq",
        "--bits",
        "3",
        "--method",
        "awq",
        "--rotate",
        "--calib",
        tmp_path / "calib",
        "-q",
    )
    assert r.exit_code == 1 and "rotation and AWQ do not combine" in r.output
