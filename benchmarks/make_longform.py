"""Reference transcripts of long recordings for the long-form proof.

A long file is the concatenation, in id order, of the test-clean utterances of one chapter (the shared copy holds
a subset of each chapter, so "consecutive" means consecutive among the stored ones); a 10-minute file is longer
than any stored chapter and continues into the next chapters (other speakers) in id order. Only the utterance ids
are stored: the audio is rebuilt from LibriSpeech by `build_audio`, so the tests need no audio files of their own.

The reference is transformers' sequential long-form algorithm (WhisperForConditionalGeneration.generate on the
un-truncated features with the attention mask, return_timestamps=True), openai-whisper's defaults otherwise.
transformers' compression ratio is zlib over the token ids as bytes, not over the text as openai-whisper's, so no
threshold reproduces openai-whisper's 2.4 exactly; the script uses transformers' documented counterpart 1.35 and
records every fallback decision, so a reference in which no window fell back (the only case a different sampler
can reproduce) is recognisable.

    python benchmarks/make_longform.py                 # 60 s (tiny.en, base), 3 min and 10 min (tiny.en)
    python benchmarks/make_longform.py --only 60s      # one length
    python benchmarks/make_longform.py --weights tiny.en-rtn4.wq   # the same algorithm on a file's weights

With --weights, transformers runs on the dequantized weights of a .wq file (the values the runtime computes with),
and the reference is written as <name>.<checkpoint>.<file stem>.json: the long-form output a quantized model gives
under transformers' algorithm, to tell the runtime's seek loop apart from the model's own errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
import zlib

import numpy as np

from wavq.evaluation.datasets import Utterance, find_utterances
from wavq.runtime.audio import load_audio

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRISPEECH = ROOT.parent / "shared" / "librispeech"
SUBSET = "test-clean"
SAMPLE_RATE = 16_000  # Hz, Whisper's input rate
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's fallback schedule
HF_COMPRESSION_RATIO_THRESHOLD = 1.35  # transformers' token-byte counterpart of openai-whisper's 2.4 on text
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
SEED = 0  # torch's sampler seed, only used if a window falls back to a temperature above 0
DATA = ROOT / "tests" / "data" / "longform"
RESULTS = ROOT / "benchmarks" / "results" / "longform_reference"


@dataclasses.dataclass(frozen=True)
class LongFile:
    name: str
    seconds: float  # the file is the shortest run of utterances at least this long
    first_chapter: str  # speaker-chapter the run starts with
    models: tuple[str, ...]
    out_dir: pathlib.Path


FILES = (
    # 8230-279154 is the longest stored test-clean chapter (225 s); 10 minutes need several chapters
    LongFile("chapter-60s", 60.0, "8230-279154", ("openai/whisper-tiny.en", "openai/whisper-base"), DATA),
    LongFile("chapter-3min", 180.0, "8230-279154", ("openai/whisper-tiny.en",), RESULTS),
    LongFile("chapter-10min", 600.0, "7127-75946", ("openai/whisper-tiny.en",), RESULTS),
)


def pick_utterances(utterances: list[Utterance], first_chapter: str, seconds: float) -> list[Utterance]:
    """Utterances in id order from `first_chapter` on, until their total duration reaches `seconds`."""
    start = next(i for i, u in enumerate(utterances) if u.id.startswith(first_chapter + "-"))
    chosen: list[Utterance] = []
    total = 0.0
    for u in utterances[start:]:
        if total >= seconds:
            break
        chosen.append(u)
        total += len(load_audio(u.path, SAMPLE_RATE)) / SAMPLE_RATE
    if total < seconds:
        raise ValueError(f"only {total:.1f} s of audio from {first_chapter} on")
    return chosen


def build_audio(root: str | os.PathLike, ids: list[str]) -> np.ndarray:
    """The long file: the utterances `ids` of LibriSpeech `root` (test-clean) concatenated, float32 at 16 kHz."""
    by_id = {u.id: u for u in find_utterances(root, SUBSET)}
    return np.concatenate([load_audio(by_id[i].path, SAMPLE_RATE) for i in ids]).astype(np.float32)


def openai_compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def transcribe_reference(model_id: str, audio: np.ndarray, weights: str | None = None) -> dict:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_id)
    model = WhisperForConditionalGeneration.from_pretrained(model_id, dtype=torch.float32).eval()
    if weights:
        from bench_common import load_wq_weights

        load_wq_weights(model, weights)
    features = processor(
        audio,
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    decisions: list[dict] = []
    need_fallback = model._need_fallback

    def record(seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature):
        fallback, skip = need_fallback(
            seek_sequence, seek_outputs, index, logits_processor, generation_config, vocab_size, temperature
        )
        decisions.append({"temperature": float(temperature), "fallback": bool(fallback), "skip": bool(skip)})
        return fallback, skip

    model._need_fallback = record  # observe each window's verdict; the algorithm itself is untouched
    kwargs = {
        "return_timestamps": True,
        "condition_on_prev_tokens": True,
        "temperature": TEMPERATURES,
        "compression_ratio_threshold": HF_COMPRESSION_RATIO_THRESHOLD,
        "logprob_threshold": LOGPROB_THRESHOLD,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
    }
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            features.input_features,
            attention_mask=features.attention_mask,
            return_segments=True,
            **kwargs,
        )
    seconds = time.perf_counter() - t0
    segments = []
    for s in out["segments"][0]:
        tokens = [int(t) for t in s["tokens"]]
        segments.append(
            {
                "start": round(float(s["start"]), 6),
                "end": round(float(s["end"]), 6),
                "tokens": tokens,
                "text": processor.tokenizer.decode(tokens, skip_special_tokens=True),
            }
        )
    sequence = [int(t) for t in out["sequences"][0] if int(t) != model.generation_config.pad_token_id]
    text = processor.tokenizer.decode(sequence, skip_special_tokens=True)
    return {
        "model": model_id,
        "generate": {**kwargs, "temperature": list(TEMPERATURES), "seed": SEED},
        "text": text,
        "sequence": sequence,
        "segments": segments,
        "fallback_decisions": decisions,
        "any_fallback": any(d["fallback"] for d in decisions),
        "openai_compression_ratio_max": max((openai_compression_ratio(s["text"]) for s in segments), default=0.0),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--librispeech", default=str(LIBRISPEECH))
    parser.add_argument("--only", help="one file name suffix, e.g. 60s, 3min, 10min")
    parser.add_argument("--weights", help="a .wq file of --model: run transformers on its weights")
    parser.add_argument("--model", default="openai/whisper-tiny.en", help="the checkpoint of --weights")
    args = parser.parse_args()
    from importlib import metadata

    utterances = find_utterances(args.librispeech, SUBSET)
    for spec in FILES:
        if args.only and not spec.name.endswith(args.only):
            continue
        chosen = pick_utterances(utterances, spec.first_chapter, spec.seconds)
        ids = [u.id for u in chosen]
        audio = build_audio(args.librispeech, ids)
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        for model_id in (args.model,) if args.weights else spec.models:
            record = {
                "name": spec.name,
                "subset": SUBSET,
                "utterances": ids,
                "duration": round(len(audio) / SAMPLE_RATE, 4),
                "reference": " ".join(u.text or "" for u in chosen),
                "transformers": metadata.version("transformers"),
                **transcribe_reference(model_id, audio, args.weights),
            }
            path = spec.out_dir / f"{spec.name}.{model_id.split('/')[-1]}.json"
            if args.weights:
                record["weights"] = pathlib.Path(args.weights).name
                path = RESULTS / f"{spec.name}.{model_id.split('/')[-1]}.{pathlib.Path(args.weights).stem}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp.replace(path)
            print(
                f"{path}: {len(record['segments'])} segments, {record['seconds']} s, fallback {record['any_fallback']}"
            )


if __name__ == "__main__":
    main()
