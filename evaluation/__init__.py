"""Word error rate, speed and memory of a .wq model on a folder of transcribed utterances (`wavq eval`).

Measurement on top of the runtime, kept out of runtime/ so that loading and transcribing import only numpy and
msgpack: scoring needs the `eval` extra (jiwer, and whisper-normalizer for Whisper models).
"""

from __future__ import annotations

import dataclasses
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence

from wavq.runtime import compute
from wavq.runtime.audio import SAMPLE_RATE, load_audio

from .datasets import Utterance

_PUNCT = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


def librispeech_normalize(text: str) -> str:
    """LibriSpeech convention for CTC models: upper case, punctuation (but apostrophes) removed."""
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.upper())).strip()


def normalizer_for(architecture: str) -> Callable[[str], str]:
    if architecture == "whisper":
        try:
            from whisper_normalizer.english import EnglishTextNormalizer
        except ImportError:
            raise RuntimeError("evaluating Whisper needs whisper-normalizer: pip install 'wavq[eval]'") from None
        return EnglishTextNormalizer()
    return librispeech_normalize


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: VmHWM from /proc (ru_maxrss survives exec, so a child started by a large parent would report the
    parent's peak). Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclasses.dataclass
class EvalResult:
    wer: float  # fraction, over all words
    n_utterances: int
    n_words: int
    audio_seconds: float
    compute_seconds: float
    peak_rss_mb: float
    hypotheses: list[dict]
    counts: compute.Counts = dataclasses.field(default_factory=compute.Counts)  # every product the runtime ran

    @property
    def macs_per_audio_second(self) -> float:
        """Measured multiply-accumulates per second of audio (compute.count_macs around the transcriptions)."""
        return self.counts.total_macs / self.audio_seconds if self.audio_seconds else float("nan")

    @property
    def bitops_per_audio_second(self) -> float:
        """Measured bit-operations (MACs x weight bits x activation bits) per second of audio."""
        return self.counts.total_bitops / self.audio_seconds if self.audio_seconds else float("nan")

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time / audio time (below 1 is faster than real time)."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def evaluate(
    model,
    utterances: Sequence[Utterance],
    transcribe_options: dict | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Transcribe `utterances` and score them. A `batch_size` > 1 in `transcribe_options` (Whisper) transcribes
    that many at a time (`WhisperModel.transcribe` of a list); the compute time is the total either way."""
    refs, hyps, rows = [], [], []
    audio_s = compute_s = 0.0
    counts = compute.Counts()
    options = dict(transcribe_options or {})
    batch = int(options.get("batch_size", 1))
    for s in range(0, len(utterances), batch):
        chunk = utterances[s : s + batch]
        for utt in chunk:
            if utt.text is None:
                raise ValueError(f"{utt.path}: no reference transcript")
        audio = [load_audio(utt.path) for utt in chunk]
        with compute.count_macs() as c:
            t0 = time.perf_counter()
            texts = (
                [r.text for r in model.transcribe(audio, **options)]
                if batch > 1
                else [model.transcribe(audio[0], **options).text]
            )
            compute_s += time.perf_counter() - t0
        counts += c
        for utt, a, text in zip(chunk, audio, texts):
            audio_s += len(a) / SAMPLE_RATE
            refs.append(utt.text)
            hyps.append(text)
            rows.append({"id": utt.id, "reference": utt.text, "hypothesis": text})
        if on_progress:
            on_progress(len(chunk))
    wer, n_words = score(refs, hyps, model.meta.get("architecture", ""))
    return EvalResult(wer, len(rows), n_words, audio_s, compute_s, peak_rss_mb(), rows, counts)


def score(references: Sequence[str], hypotheses: Sequence[str], architecture: str) -> tuple[float, int]:
    """Corpus word error rate (a fraction) after the architecture's text normalisation, and the reference words.

    An utterance whose reference normalises to nothing adds no words (jiwer rejects empty references).
    """
    try:
        import jiwer
    except ImportError:
        raise RuntimeError("evaluation needs jiwer: pip install 'wavq[eval]'") from None
    norm = normalizer_for(architecture)
    pairs = [(norm(r), norm(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan"), 0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])), sum(len(r.split()) for r, _ in pairs)
