"""Reference models measured like the cells: transformers in float32 (the reference every recipe is compared with)
and PyTorch dynamic int8 (torch.ao.quantization.quantize_dynamic on the Linear layers). Each is wrapped to look
like a runtime model (`.meta`, `.transcribe(audio).text`) so wavq.evaluation.evaluate scores it the same way.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

SAMPLE_RATE = 16_000
INT8_BITS = 8.0


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
        raise ValueError(f"baseline {kind!r} is not available here (use one of transformers-f32, torch-int8)")
    wrapped = TorchSpeechModel(source, model, AutoProcessor.from_pretrained(source), config.model_type)
    return wrapped, _size_and_bpw(model, kind == "torch-int8")
