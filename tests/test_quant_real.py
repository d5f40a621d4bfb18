"""Calibrated quantization of the real openai/whisper-tiny.en: GPTQ on LibriSpeech train-clean-100, run by the
numpy runtime on samples/.

Needs the checkpoint in the Hugging Face cache (../shared/models/install-whisper.sh) and
../shared/librispeech/train-clean-100 (skipped otherwise).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
jiwer = pytest.importorskip("jiwer")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wavq.converter.calibrate import select_calibration  # noqa: E402
from wavq.converter.export import convert  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.runtime import load  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "samples")
TINY_EN = "openai/whisper-tiny.en"
CALIB_SAMPLES = 8  # enough for a working 4-bit model; the CLI default is 128
GPTQ_WER_MAX = 0.20  # 4-bit GPTQ (group 128) tiny.en on samples/ (46 words): f32 makes 3 errors
LAYER_ERROR_MAX = 0.05  # mean relative output error per layer at 4 bits


@pytest.fixture(scope="module")
def gptq_file(tmp_path_factory, librispeech):
    train = librispeech("train-clean-100")
    try:
        from transformers import WhisperConfig

        WhisperConfig.from_pretrained(TINY_EN)
    except OSError:
        pytest.skip(f"{TINY_EN} is not in the Hugging Face cache")
    items = select_calibration(train, CALIB_SAMPLES, seed=0)
    path = str(tmp_path_factory.mktemp("gptq") / "tiny.en.gptq4.wq")
    convert(TINY_EN, path, Recipe(method="gptq", bits=4, group_size=128), calib_items=items)
    return path


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z0-9' ]+", " ", text.upper().replace("MR.", "MISTER")).split())


def test_gptq_metadata(gptq_file):
    q = load(gptq_file).meta["quantization"]
    assert q["method"] == "gptq" and q["calibration"]["samples"] == CALIB_SAMPLES
    assert q["calibration"]["decoder_inputs"] == {"transcripts": CALIB_SAMPLES, "greedy": 0}
    errors = np.array(list(q["relative_output_error"].values()))
    assert len(errors) == len(q["tensor_bits"]) and np.isfinite(errors).all()
    assert errors.mean() < LAYER_ERROR_MAX


def test_gptq_transcribes_samples(gptq_file):
    model = load(gptq_file, cache=True)
    with open(os.path.join(SAMPLES, "samples.trans.txt"), encoding="utf-8") as f:
        refs = dict(line.strip().split(" ", 1) for line in f if line.strip())
    pairs = [
        (_norm(text), _norm(model.transcribe(os.path.join(SAMPLES, uid + ".flac")).text))
        for uid, text in sorted(refs.items())
    ]
    assert jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]) <= GPTQ_WER_MAX
