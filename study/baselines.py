"""Reference models measured like the cells: transformers in float32 (the reference every recipe is compared with),
PyTorch dynamic int8 (torch.ao.quantization.quantize_dynamic on the Linear layers) and CTranslate2 int8 (the
`ctranslate2` extra; Whisper only). Each is wrapped to look like a runtime model (`.meta`, `.transcribe(audio).text`)
so wavq.evaluation.evaluate scores it the same way.

CTranslate2 is the one baseline with a file of its own: its conversion runs in the cell's conversion stage (timed and
cached like a recipe's) and its evaluation loads the converted directory without torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil

import numpy as np

SAMPLE_RATE = 16_000
INT8_BITS = 8.0
TORCH_BASELINES = ("transformers-f32", "torch-int8")
CTRANSLATE2 = "ctranslate2-int8"
BASELINES = (*TORCH_BASELINES, CTRANSLATE2)
CONVERTED_BASELINES = (CTRANSLATE2,)  # baselines whose conversion is a stage of the cell (and cached)


@dataclasses.dataclass
class _Text:
    text: str


class TorchSpeechModel:
    def __init__(self, source: str, model, processor, architecture: str):
        self.model, self.processor = model, processor
        self.meta = {"architecture": architecture, "source": source}

    def transcribe(self, audio: np.ndarray, max_new_tokens: int | None = None) -> _Text:
        import torch

        feats = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            if self.meta["architecture"] == "whisper":
                ids = self.model.generate(feats.input_features, max_new_tokens=max_new_tokens)
                return _Text(self.processor.batch_decode(ids, skip_special_tokens=True)[0])
            logits = self.model(feats.input_values).logits
            return _Text(self.processor.batch_decode(logits.argmax(-1))[0])


def _size_and_bpw(model, int8: bool) -> dict:
    """Serialized state_dict bytes, and bits per weight over the weights the baseline quantizes."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {"file_bytes": buf.tell(), "bits_per_weight": INT8_BITS if int8 else 32.0}


def load_baseline(source: str, kind: str, threads: int) -> tuple[TorchSpeechModel, dict]:
    import torch
    from transformers import AutoConfig, AutoModelForCTC, AutoProcessor, WhisperForConditionalGeneration

    torch.set_num_threads(threads)
    config = AutoConfig.from_pretrained(source)
    whisper = config.model_type == "whisper"
    cls = WhisperForConditionalGeneration if whisper else AutoModelForCTC
    model = cls.from_pretrained(source).float().eval()
    if kind == "torch-int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif kind != "transformers-f32":
        raise ValueError(f"baseline {kind!r} is not available here (use one of {', '.join(TORCH_BASELINES)})")
    wrapped = TorchSpeechModel(source, model, AutoProcessor.from_pretrained(source), config.model_type)
    return wrapped, _size_and_bpw(model, kind == "torch-int8")


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise RuntimeError("the ctranslate2-int8 baseline needs CTranslate2: pip install 'wavq[ctranslate2]'") from None
    return ctranslate2


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def convert_ctranslate2(source: str, output: str) -> dict:
    """Convert a Whisper checkpoint to a CTranslate2 int8 model directory (written beside, then renamed into place)."""
    ctranslate2 = _ctranslate2()
    from transformers import AutoConfig

    if AutoConfig.from_pretrained(source).model_type != "whisper":
        raise ValueError(f"the {CTRANSLATE2} baseline runs Whisper only; {source} is not a Whisper checkpoint")
    tmp = output + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    ctranslate2.converters.TransformersConverter(source).convert(tmp, quantization="int8", force=True)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
    return {"file_bytes": _dir_bytes(output), "bits_per_weight": INT8_BITS}


class CTranslate2Whisper:
    """A converted CTranslate2 Whisper, greedy, on the log-mel features of transformers' WhisperFeatureExtractor, with
    the prompt transformers' generate() starts from (start of transcript, English and transcribe on multilingual
    checkpoints, no timestamps)."""

    def __init__(self, source: str, model_dir: str, threads: int):
        ctranslate2 = _ctranslate2()
        from transformers import WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(source)
        self.model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="int8", intra_threads=threads)
        tok = self.processor.tokenizer
        language = "english" if self.model.is_multilingual else None
        tok.set_prefix_tokens(language=language, task="transcribe" if language else None, predict_timestamps=False)
        self.prompt = list(tok.prefix_tokens)
        self.meta = {"architecture": "whisper", "source": source}

    def transcribe(self, audio: np.ndarray, max_new_tokens: int | None = None) -> _Text:
        import ctranslate2

        feats = self.processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.input_features, dtype=np.float32))
        limit = {"max_length": len(self.prompt) + max_new_tokens} if max_new_tokens else {}
        result = self.model.generate(features, [self.prompt], beam_size=1, **limit)[0]
        return _Text(self.processor.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True))
