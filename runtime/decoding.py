"""Decoding for Whisper: prompts, language detection, logit filters, greedy, sampling and beam search, transcription.

`decode` follows transformers' WhisperForConditionalGeneration.generate() for short-form audio: the same prompt
(start of transcript, language, task, <|notimestamps|>), the same suppressed tokens, language detection, max length
and beam search, so tokens match transformers at f32. With `without_timestamps=False` it adds what the long-form
seek loop needs: timestamp tokens (TimestampRules), sampling at a temperature, the earlier text as a prompt, the
chosen tokens' log-probability and P(<|nospeech|>).

`transcribe` runs openai-whisper's seek loop (runtime/transcribe.py) over audio of any length by default, with
optional word timestamps (cross-attention DTW, runtime/timing.py) and VAD (runtime/vad.py); `without_timestamps=True`
keeps the earlier equal-window short-form decoding.

The model is used only through its narrow interface (`WhisperModel.cross_kv`, `new_state`, `decoder_step`, and the
validated `generation` config), so the same decoders serve any model that offers it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .audio import load_audio
from .bpe import BPEError, ByteLevelBPEEncoder
from .config import TASKS, WhisperGeneration
from .mel import log_mel_spectrogram
from .ops import log_softmax
from .timestamps import TimestampRules
from .timing import assign_words, find_alignment
from .transcribe import (
    COMPRESSION_RATIO_THRESHOLD,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    TEMPERATURES,
    TranscribeOptions,
    WindowDecoding,
    transcribe_windows,
)
from .types import Segment, Transcription
from .vad import SpeechTimeline, speech_regions

if TYPE_CHECKING:
    from .whisper import CrossKV, DecoderState, WhisperModel

NEG_INF = np.float32(-np.inf)
BEAM_FINISHED = np.float32(-1.0e9)  # transformers' "not a candidate" score offset in beam search
PROMPT_ROOM = 64  # decoder cache positions reserved beyond the prompt before it grows


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    task: str | None = None  # "transcribe" | "translate"; None: the model's forced prompt, if any
    language: str | None = None  # code, name or token; None: detected (multilingual models)
    beam_size: int = 1  # 1: greedy
    length_penalty: float | None = None  # beam scores: sum(log p) / length ** penalty; None: the model's default
    max_new_tokens: int | None = None  # None: transformers' max_length (which counts the prompt)
    # False: the decoder writes <|t0|> text <|t1|> segments (no <|notimestamps|> in the prompt, TimestampRules)
    without_timestamps: bool = True
    temperature: float = 0.0  # above 0: tokens are sampled from softmax(logits / temperature), beam_size ignored
    previous: tuple[int, ...] = ()  # earlier text tokens: <|startofprev|> + the last n_text_ctx // 2 - 1 of them


@dataclasses.dataclass(frozen=True)
class DecodingResult:
    prompt: list[int]
    tokens: list[int]  # generated, without end of text
    sum_logprob: float = 0.0  # log-probabilities of the chosen tokens (end of text included) under the filters
    no_speech_prob: float | None = None  # P(<|nospeech|>) at <|startoftranscript|>, when the prompt was split there
    temperature: float = 0.0

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


# ---------------------------------------------------------------------------------------------------- filters


class Filter(Protocol):
    def apply(self, scores: np.ndarray, tokens: np.ndarray) -> None: ...


class LogitFilter:
    """Changes the scores (B, V) of the next token in place, given each hypothesis' tokens (B, L), prompt included,
    as openai/whisper's filters see them (a timestamp-rules filter needs them)."""

    def apply(self, scores: np.ndarray, tokens: np.ndarray) -> None:
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    """Never emit these tokens (generation config `suppress_tokens`)."""

    def __init__(self, tokens: Sequence[int]):
        self.tokens = np.asarray(tokens, dtype=np.int64)

    def apply(self, scores: np.ndarray, tokens: np.ndarray) -> None:
        scores[..., self.tokens] = NEG_INF


class SuppressAtBegin(LogitFilter):
    """Do not start with these tokens (`begin_suppress_tokens`: the blank and end of text)."""

    def __init__(self, tokens: Sequence[int], sample_begin: int):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.sample_begin = sample_begin  # prompt length: the first generated position

    def apply(self, scores: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[-1] == self.sample_begin:
            scores[..., self.tokens] = NEG_INF


def logit_filters(gen: WhisperGeneration, sample_begin: int) -> list[Filter]:
    filters: list[Filter] = []
    if gen.suppress_tokens:
        filters.append(SuppressTokens(gen.suppress_tokens))
    if gen.begin_suppress_tokens:
        filters.append(SuppressAtBegin(gen.begin_suppress_tokens, sample_begin))
    return filters


def _filtered(scores: np.ndarray, filters: Sequence[Filter], tokens: np.ndarray) -> np.ndarray:
    for f in filters:
        f.apply(scores, tokens)
    return scores


# ---------------------------------------------------------------------------------------------------- decoders


class GreedyDecoder:
    """The likeliest token each step; at a temperature above 0, a token sampled from softmax(logits / temperature)
    (Gumbel-max with `rng`, so a seeded generator reproduces it)."""

    def __init__(
        self,
        eot: int,
        filters: Sequence[Filter],
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
    ):
        self.eot, self.filters = eot, filters
        self.temperature, self.rng = float(temperature), rng or np.random.default_rng(0)
        self.sum_logprob = 0.0  # of the last run's tokens, end of text included

    def run(
        self, model: WhisperModel, prompt: Sequence[int], cross: CrossKV, max_new: int, start: Start | None = None
    ) -> list[int]:
        state, logits = start or _feed(model, prompt, cross)
        out: list[int] = []
        self.sum_logprob = 0.0
        for step in range(max_new):
            scores = _filtered(logits, self.filters, np.array([[*prompt, *out]], dtype=np.int64))[0]
            tok = self._choose(scores)
            self.sum_logprob += float(log_softmax(scores[None])[0, tok])
            out.append(tok)
            if tok == self.eot or step + 1 == max_new:
                break
            logits = model.decoder_step(np.array([[tok]]), state, cross)
        return _strip_eot(out, self.eot)

    def _choose(self, scores: np.ndarray) -> int:
        if self.temperature <= 0:
            return int(np.argmax(scores))
        return int(np.argmax(scores / np.float32(self.temperature) + self.rng.gumbel(size=scores.shape)))


Start = tuple["DecoderState", np.ndarray]  # decoder state after the prompt, and the logits of its last position


def _feed(model: WhisperModel, prompt: Sequence[int], cross: CrossKV) -> Start:
    state = model.new_state(1, len(prompt) + PROMPT_ROOM)
    return state, model.decoder_step(np.array([prompt]), state, cross)


@dataclasses.dataclass
class Beams:
    """K hypotheses: generated tokens, their count, score, and whether they ended (for the finished pool)."""

    tokens: np.ndarray  # (K, max_new) int64
    lengths: np.ndarray  # (K,) int64
    scores: np.ndarray  # (K,) float32
    done: np.ndarray  # (K,) bool

    @classmethod
    def empty(cls, k: int, max_new: int) -> Beams:
        return cls(
            np.zeros((k, max_new), np.int64),
            np.zeros(k, np.int64),
            np.full(k, BEAM_FINISHED, np.float32),
            np.zeros(k, bool),
        )

    def take(self, index: np.ndarray) -> Beams:
        return Beams(self.tokens[index], self.lengths[index], self.scores[index], self.done[index])

    def concat(self, other: Beams) -> Beams:
        return Beams(*(np.concatenate([a, b]) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


class BeamSearchDecoder:
    """transformers' beam search (early_stopping=False): keep 2*beam candidates per step, finished hypotheses
    scored by sum(log p) / generated_length ** length_penalty."""

    def __init__(self, beam_size: int, length_penalty: float, eot: int, filters: Sequence[Filter]):
        self.k, self.length_penalty, self.eot, self.filters = beam_size, length_penalty, eot, filters
        self.sum_logprob = 0.0  # of the last run's best hypothesis, end of text included

    def run(
        self, model: WhisperModel, prompt: Sequence[int], cross: CrossKV, max_new: int, start: Start | None = None
    ) -> list[int]:
        k, n_cand, eot = self.k, 2 * self.k, self.eot
        state, first = start or _feed(model, prompt, cross)
        logits = np.repeat(first, k, axis=0)
        state.expand(k)
        running = Beams.empty(k, max_new)
        running.scores[0] = 0.0  # only the first copy of the prompt may expand on the first step
        finished = Beams.empty(k, max_new)
        first_k = np.arange(n_cand) < k
        for step in range(max_new):
            history = np.concatenate(
                [np.broadcast_to(np.asarray(prompt, np.int64), (k, len(prompt))), running.tokens[:, :step]], 1
            )
            logp = _filtered(log_softmax(logits), self.filters, history) + running.scores[:, None]  # (K, V)
            flat = logp.reshape(-1)
            top = np.argpartition(-flat, n_cand - 1)[:n_cand]
            top = top[np.argsort(-flat[top], kind="stable")]  # (2K,) best first
            src, tok = np.divmod(top, logp.shape[1])
            gen_len = step + 1
            cand = running.take(src)
            cand.tokens[:, step] = tok
            cand.lengths[:] = gen_len
            cand.scores = flat[top]
            hits = (tok == eot) | (gen_len >= max_new)  # finished by end of text or by length
            # finished candidates among the first K enter the finished pool
            ended = hits & first_k
            merged = finished.concat(
                Beams(cand.tokens, cand.lengths, self._pool_scores(cand.scores, ended, gen_len), ended)
            )
            finished = merged.take(np.argsort(-merged.scores, kind="stable")[:k])
            # the best K unfinished candidates keep running
            cand.scores = cand.scores + np.where(hits, BEAM_FINISHED, 0).astype(np.float32)
            nxt = np.argsort(-cand.scores, kind="stable")[:k]
            running = cand.take(nxt)
            if hits.all():
                break
            worst_finished = finished.scores.min() if finished.done.all() else BEAM_FINISHED
            best_possible = running.scores[0] / np.float32(gen_len**self.length_penalty)
            if not best_possible > worst_finished:  # no running hypothesis can beat the finished ones
                break
            state.reorder(src[nxt])
            logits = model.decoder_step(tok[nxt][:, None], state, cross)
        best = int(np.argmax(finished.scores))
        self.sum_logprob = float(finished.scores[best]) * float(finished.lengths[best]) ** self.length_penalty
        return _strip_eot(finished.tokens[best, : finished.lengths[best]].tolist(), eot)

    def _pool_scores(self, scores: np.ndarray, ended: np.ndarray, gen_len: int) -> np.ndarray:
        """Length-penalised scores of the candidates that ended; the others are not candidates for the pool."""
        scored = scores / np.float32(gen_len**self.length_penalty)
        return scored + np.where(ended, 0, BEAM_FINISHED).astype(np.float32)


def _strip_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] == eot else tokens


# ---------------------------------------------------------------------------------------------------- languages


def language_id(gen: WhisperGeneration, language: str) -> int:
    """Token id of a language given as code ('de'), name ('german') or token ('<|de|>')."""
    key = language.strip().lower()
    if key in gen.lang_to_id:
        return gen.lang_to_id[key]
    if f"<|{key}|>" in gen.lang_to_id:
        return gen.lang_to_id[f"<|{key}|>"]
    by_name = {name.lower(): code for code, name in gen.languages.items()}
    if key in by_name and f"<|{by_name[key]}|>" in gen.lang_to_id:
        return gen.lang_to_id[f"<|{by_name[key]}|>"]
    raise ValueError(
        f"unknown language {language!r}; this model knows {', '.join(sorted(c[2:-2] for c in gen.lang_to_id))}"
    )


def language_code(gen: WhisperGeneration, token_id: int) -> str:
    for tok, tid in gen.lang_to_id.items():
        if tid == token_id:
            return tok[2:-2]
    return "?"


def detect_language(model: WhisperModel, cross: CrossKV) -> tuple[int, dict[str, float]]:
    """(language token id, probability per language code) from the logits after <|startoftranscript|>."""
    gen = model.generation
    logits = model.decoder_step(np.array([[gen.decoder_start_token_id]]), model.new_state(1, 1), cross)[0]
    ids = np.array(sorted(gen.lang_to_id.values()))
    sub = logits[ids].astype(np.float64)
    p = np.exp(sub - sub.max())
    p /= p.sum()
    best = int(ids[int(np.argmax(sub))])
    return best, {language_code(gen, int(i)): float(pi) for i, pi in zip(ids, p)}


# ---------------------------------------------------------------------------------------------------- prompt


def build_prompt(model: WhisperModel, options: DecodingOptions, cross: CrossKV | None = None) -> list[int]:
    """Initial decoder tokens, as transformers' WhisperGenerationMixin._retrieve_init_tokens builds them."""
    gen, language, task = model.generation, options.language, options.task
    if not gen.is_multilingual:
        if language is not None and language.strip().lower() not in ("en", "english", "<|en|>"):
            raise ValueError(f"this is an English-only model; it cannot transcribe language {language!r}")
        if task not in (None, "transcribe"):
            raise ValueError(f"this is an English-only model; task {task!r} needs a multilingual model")
        language = task = None
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    tokens: list[int | None] = [gen.decoder_start_token_id]
    if task is None and language is None:
        for pos, (i, tid) in enumerate(gen.forced_decoder_ids, start=1):
            if i != pos:
                break
            tokens.append(tid)
    lang_undefined = len(tokens) <= 1 or tokens[1] is None
    lang_id = None
    if language is not None:
        lang_id = language_id(gen, language)
    elif gen.lang_to_id and lang_undefined:
        if cross is None:
            raise ValueError("language detection needs the encoded audio")
        lang_id = detect_language(model, cross)[0]
    if lang_id is not None:
        if len(tokens) > 1:
            tokens[1] = lang_id
        else:
            tokens.append(lang_id)
    if task is not None:
        tokens.append(gen.task_to_id[task])
    elif language is not None and gen.task_to_id and not any(t in gen.task_to_id.values() for t in tokens):
        tokens.append(gen.task_to_id["transcribe"])
    if not options.without_timestamps:
        tokens = [t for t in tokens if t != gen.no_timestamps_token_id]
    elif tokens[-1] != gen.no_timestamps_token_id:
        tokens.append(gen.no_timestamps_token_id)
    return previous_prompt(model, options.previous) + [int(t) for t in tokens if t is not None]


def previous_prompt(model: WhisperModel, previous: Sequence[int]) -> list[int]:
    """<|startofprev|> and the last n_text_ctx // 2 - 1 earlier text tokens (openai-whisper's cut); [] for none."""
    if not previous:
        return []
    prev_sot = model.generation.prev_sot_token_id
    if prev_sot is None:
        raise ValueError("this model file names no <|startofprev|> token, so it cannot be prompted with earlier text")
    keep = model.dims.n_text_ctx // 2 - 1
    return [prev_sot, *[int(t) for t in previous][-keep:]]


def max_new_tokens(gen: WhisperGeneration, n_text_ctx: int, prompt_len: int, requested: int | None) -> int:
    """Tokens to generate after a prompt of `prompt_len`."""
    if requested is None:  # transformers: max_length counts the prompt, capped at the context
        total = min(gen.max_length + prompt_len, n_text_ctx)
        return max(0, total - prompt_len)
    if requested < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {requested}")
    return min(int(requested), n_text_ctx - prompt_len)


# ---------------------------------------------------------------------------------------------------- entry points


def decode(
    model: WhisperModel, mel: np.ndarray, options: DecodingOptions, rng: np.random.Generator | None = None
) -> DecodingResult:
    """Prompt and generated tokens for one window's mel features."""
    return decode_audio_features(model, model.cross_kv(model.encode(mel)), options, rng)


def decode_audio_features(
    model: WhisperModel, cross: CrossKV, options: DecodingOptions, rng: np.random.Generator | None = None
) -> DecodingResult:
    """`decode` after the encoder: the window's cross-attention keys and values."""
    if options.beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {options.beam_size}")
    gen = model.generation
    prompt = build_prompt(model, options, cross)
    max_new = max_new_tokens(gen, model.dims.n_text_ctx, len(prompt), options.max_new_tokens)
    if max_new <= 0:
        return DecodingResult(prompt, [], temperature=options.temperature)
    filters = logit_filters(gen, len(prompt))
    start, no_speech = None, None
    if not options.without_timestamps:
        filters.append(timestamp_rules(model, len(prompt)))
        start, no_speech = _feed_at_sot(model, prompt, cross)
    decoder: GreedyDecoder | BeamSearchDecoder
    if options.beam_size == 1 or options.temperature > 0:
        decoder = GreedyDecoder(gen.eos_token_id, filters, options.temperature, rng)
    else:
        lp = gen.length_penalty if options.length_penalty is None else float(options.length_penalty)
        decoder = BeamSearchDecoder(options.beam_size, lp, gen.eos_token_id, filters)
    tokens = decoder.run(model, prompt, cross, max_new, start)
    return DecodingResult(prompt, tokens, decoder.sum_logprob, no_speech, options.temperature)


def timestamp_rules(model: WhisperModel, sample_begin: int) -> TimestampRules:
    gen = model.generation
    return TimestampRules(
        timestamp_begin=gen.no_timestamps_token_id + 1,
        eot=gen.eos_token_id,
        no_timestamps=gen.no_timestamps_token_id,
        sample_begin=sample_begin,
        max_initial_timestamp_index=gen.max_initial_timestamp_index,
    )


def _feed_at_sot(model: WhisperModel, prompt: Sequence[int], cross: CrossKV) -> tuple[Start, float | None]:
    """Feed the prompt in two parts, through <|startoftranscript|> and after it, for P(<|nospeech|>) there."""
    sot = prompt.index(model.sot)
    state = model.new_state(1, len(prompt) + PROMPT_ROOM)
    logits = model.decoder_step(np.array([prompt[: sot + 1]]), state, cross)
    no_speech_id = model.config.special.get("no_speech")
    no_speech = None
    if no_speech_id is not None:
        x = logits[0].astype(np.float64)
        no_speech = float(np.exp(x[no_speech_id] - x.max()) / np.exp(x - x.max()).sum())
    if sot + 1 < len(prompt):
        logits = model.decoder_step(np.array([prompt[sot + 1 :]]), state, cross)
    return (state, logits), no_speech


def windows(n: int, window: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges of `n` samples: one window up to `window`, else equal windows of at most it."""
    if n <= window:
        return [(0, n)]
    count = -(-n // window)
    size = -(-n // count)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


@dataclasses.dataclass(frozen=True)
class TranscriptionOptions:
    """`WhisperModel.transcribe`'s keywords (openai-whisper's defaults), `sample_rate` apart."""

    language: str | None = None  # None: detected from the first window (multilingual models)
    task: str | None = "transcribe"
    beam_size: int = 1  # at temperature 0; hotter decodings sample
    length_penalty: float | None = None
    temperature: float | tuple[float, ...] = TEMPERATURES  # fallback schedule, coldest first
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD
    logprob_threshold: float | None = LOGPROB_THRESHOLD
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False  # skip what runtime/vad.py finds to be non-speech; times stay those of the input
    # False: openai-whisper's seek loop with timestamps, for any length (so one window gets the fallback and the
    # silence rules too); True: transformers' short-form generate on equal windows of at most one window
    without_timestamps: bool = False
    max_new_tokens: int | None = None  # per window; None: up to the decoder's context after the prompt
    seed: int = 0  # of the sampler at temperatures above 0

    def decoding(self) -> DecodingOptions:
        return DecodingOptions(self.task, self.language, self.beam_size, self.length_penalty, self.max_new_tokens)

    def seek_loop(self) -> TranscribeOptions:
        temps = self.temperature if isinstance(self.temperature, (tuple, list)) else (self.temperature,)
        return TranscribeOptions(
            tuple(float(t) for t in temps),
            self.compression_ratio_threshold,
            self.logprob_threshold,
            self.no_speech_threshold,
            self.condition_on_previous_text,
        )


def transcribe(
    model: WhisperModel, audio, options: TranscriptionOptions, sample_rate: int | None = None
) -> Transcription | list[Transcription]:
    """Text of `audio` (path, array, or a list of them -> list of results); an array is at `sample_rate` Hz
    (None: the model's 16 kHz) and is resampled to the model's rate."""
    if isinstance(audio, (list, tuple)):
        return [_transcribe_one(model, a, options, sample_rate) for a in audio]
    return _transcribe_one(model, audio, options, sample_rate)


def _transcribe_one(
    model: WhisperModel, audio, options: TranscriptionOptions, sample_rate: int | None
) -> Transcription:
    rate = model.sampling_rate
    samples = load_audio(audio, rate, source_rate=sample_rate)
    timeline = None
    if options.vad:
        timeline = SpeechTimeline(tuple(speech_regions(samples, rate)), rate)
        samples = timeline.gather(samples)
    if options.without_timestamps and (options.word_timestamps or options.initial_prompt is not None):
        raise ValueError("word_timestamps and initial_prompt need timestamps: without_timestamps must be false")
    if len(samples) == 0:
        result = Transcription("", [], _language_or_none(model, options))
    elif options.without_timestamps:
        result = _fixed_windows(model, samples, options.decoding())
    else:
        result = LongForm(model, options).run(samples)
    if timeline is not None:
        _map_times(result, timeline)
    return result


def _language_or_none(model: WhisperModel, options: TranscriptionOptions) -> str | None:
    if not model.is_multilingual:
        return "en"
    return (
        None
        if options.language is None
        else language_code(model.generation, language_id(model.generation, options.language))
    )


def _map_times(result: Transcription, timeline: SpeechTimeline) -> None:
    """Times in the speech-only signal -> times in the input."""
    for s in result.segments:
        s.start, s.end = timeline.original_time(s.start), timeline.original_time(s.end)
        for w in s.words or ():
            w.start, w.end = timeline.original_time(w.start), timeline.original_time(w.end)


def _fixed_windows(model: WhisperModel, samples: np.ndarray, options: DecodingOptions) -> Transcription:
    """transformers' short-form decoding of each of equal windows of at most one window, without timestamps.

    A multilingual model detects the language from the first window (when options.language is None) and keeps it.
    """
    rate = model.sampling_rate
    segments: list[Segment] = []
    for start, end in windows(len(samples), model.n_samples):
        result = decode(model, model.log_mel(samples[start:end]), options)
        if model.is_multilingual and options.language is None:  # later windows keep the first window's language
            options = dataclasses.replace(options, language=language_code(model.generation, result.prompt[1]))
        segments.append(Segment(start / rate, end / rate, model.decode_tokens(result.tokens).strip()))
    lang = "en"
    if model.is_multilingual and options.language is not None:  # set from the first window when not given
        lang = language_code(model.generation, language_id(model.generation, options.language))
    return Transcription(" ".join(s.text for s in segments if s.text), segments, lang)


class LongForm:
    """openai-whisper's seek loop (runtime/transcribe.py) driven by this runtime's decoder: each window decoded
    with timestamps, conditioned on the earlier text, with temperature fallback and the silence rule."""

    def __init__(self, model: WhisperModel, options: TranscriptionOptions):
        self.model, self.options = model, options
        self.decoding = dataclasses.replace(options.decoding(), without_timestamps=False)
        self.rng = np.random.default_rng(options.seed)
        self.language_probability: float | None = None if model.is_multilingual and options.language is None else 1.0
        self._mel: np.ndarray | None = None  # the window whose cross-attention keys and values are cached
        self._cross: CrossKV | None = None

    def run(self, samples: np.ndarray) -> Transcription:
        model, p = self.model, self.model.preprocess
        padded = samples if len(samples) >= p.n_samples else np.pad(samples, (0, p.n_samples - len(samples)))
        mel = log_mel_spectrogram(
            padded, model.weights[p.mel_filters], n_fft=p.n_fft, hop_length=p.hop_length, n_samples=None
        )
        prompt = self._initial_prompt()
        result = transcribe_windows(
            mel,
            len(samples) // p.hop_length,
            self.decode_window,
            model.decode_tokens,
            timestamp_begin=model.no_timestamps + 1,
            eot=model.eot,
            options=self.options.seek_loop(),
            initial_prompt_tokens=prompt,
            align_words=self.align_words if self.options.word_timestamps else None,
        )
        result.text = result.text.strip()
        result.language = _language_or_none(model, dataclasses.replace(self.options, language=self.decoding.language))
        result.language_probability = self.language_probability
        return result

    def _initial_prompt(self) -> list[int]:
        if self.options.initial_prompt is None:
            return []
        cfg = self.model.config
        if cfg.merges is None:
            raise BPEError("the model file stores no BPE merges, so initial_prompt cannot be encoded (re-convert it)")
        encoder = ByteLevelBPEEncoder(cfg.tokens, cfg.merges, cfg.first_special_id)
        return encoder.encode(" " + self.options.initial_prompt.strip())

    def cross(self, mel_segment: np.ndarray) -> CrossKV:
        """The window's cross-attention keys and values, computed once for all its temperatures."""
        if self._mel is not mel_segment or self._cross is None:
            self._mel, self._cross = mel_segment, self.model.cross_kv(self.model.encode(mel_segment))
        return self._cross

    def decode_window(self, mel_segment: np.ndarray, prompt: list[int], temperature: float) -> WindowDecoding:
        model = self.model
        cross = self.cross(mel_segment)
        if model.is_multilingual and self.decoding.language is None:  # from the first window, then kept
            lang, probs = detect_language(model, cross)
            code = language_code(model.generation, lang)
            self.decoding = dataclasses.replace(self.decoding, language=code)
            self.language_probability = probs[code]
        options = dataclasses.replace(self.decoding, temperature=temperature, previous=tuple(prompt))
        result = decode_audio_features(model, cross, options, self.rng)
        no_speech = 0.0 if result.no_speech_prob is None else result.no_speech_prob
        return WindowDecoding(result.tokens, result.avg_logprob, no_speech, temperature)

    def align_words(
        self, segments: list[Segment], mel_segment: np.ndarray, num_frames: int, time_offset: float, last_speech: float
    ) -> None:
        """openai-whisper's add_word_timestamps for one window: the window's text teacher-forced once more after
        <|notimestamps|>, DTW over the alignment heads' cross-attention, words put into the segments."""
        from .whisper import CrossScores  # whisper.py imports this module

        model, eot = self.model, self.model.eot
        text_tokens = [t for s in segments for t in s.tokens or () if t < eot]
        plain = dataclasses.replace(self.decoding, without_timestamps=True, previous=(), temperature=0.0)
        sot_sequence = build_prompt(model, plain)[:-1]  # without <|notimestamps|>
        sequence = [*sot_sequence, model.no_timestamps, *text_tokens, eot]
        scores = CrossScores(model.generation.alignment_heads)
        model.decoder_step(np.array([sequence]), model.new_state(1, len(sequence)), self.cross(mel_segment), scores)
        assert scores.hidden is not None
        text_logits = model.logits(scores.hidden[len(sot_sequence) : len(sot_sequence) + len(text_tokens)])[:, :eot]
        probs = np.exp(log_softmax(text_logits.astype(np.float32)))
        token_probs = probs[np.arange(len(text_tokens)), text_tokens]
        alignment = find_alignment(
            scores.stacked(),
            len(sot_sequence),
            text_tokens,
            token_probs,
            num_frames,
            model.tokenizer.token_bytes,
            eot,
            language=self.decoding.language,
        )
        assign_words(segments, alignment, time_offset, last_speech, eot)


# ---------------------------------------------------------------------------------------------------- batches


class BatchedGreedyDecoder:
    """Greedy decoding of several utterances at once, with GreedyDecoder's filters: each step is one decoder
    pass over the B rows still running (each weight read once for all of them, matrix-vector products become
    matrix-matrix ones), and an utterance leaves the batch when it emits end of text. `cross` holds one row per
    utterance (`whisper.stack_cross`) and every prompt has the same length, so rows stay in step."""

    def __init__(self, eot: int, filters: Sequence[Filter]):
        self.eot, self.filters = eot, filters

    def run(self, model: WhisperModel, prompts: np.ndarray, cross: CrossKV, max_new: int) -> list[list[int]]:
        from .whisper import select_cross

        b, plen = prompts.shape
        state = model.new_state(b, plen + PROMPT_ROOM)
        logits = model.decoder_step(prompts, state, cross)
        history = np.zeros((b, plen + max_new), np.int64)
        history[:, :plen] = prompts
        generated = np.zeros(b, np.int64)
        active = np.arange(b)
        for step in range(max_new):
            tok = np.argmax(_filtered(logits, self.filters, history[active, : plen + step]), axis=-1)
            history[active, plen + step] = tok
            generated[active] = step + 1
            running = tok != self.eot
            if step + 1 == max_new or not running.any():
                break
            if not running.all():
                keep = np.flatnonzero(running)
                state.select(keep)
                cross = select_cross(cross, keep)
                active, tok = active[keep], tok[keep]
            logits = model.decoder_step(tok[:, None], state, cross)
        return [_strip_eot(history[i, plen : plen + generated[i]].tolist(), self.eot) for i in range(b)]


def transcribe_batch(
    model: WhisperModel, audio: Sequence, options: TranscriptionOptions, batch_size: int, sample_rate: int | None = None
) -> list[Transcription]:
    """`transcribe` of a list with short-form utterances (one window, `without_timestamps=True`, greedy, no VAD)
    decoded `batch_size` at a time (`BatchedGreedyDecoder`); each result is the one `transcribe` gives it alone.
    Everything else (the timestamp seek loop, long audio, beam search) goes one utterance at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batchable = options.without_timestamps and options.beam_size == 1 and not options.vad
    results: list[Transcription | None] = [None] * len(audio)
    short: list[tuple[int, np.ndarray]] = []
    for i, a in enumerate(audio):
        samples = load_audio(a, model.sampling_rate, source_rate=sample_rate)
        if batchable and 0 < len(samples) <= model.n_samples:
            short.append((i, samples))
        else:
            results[i] = _transcribe_one(model, samples, options, None)
    decoding = options.decoding()
    for s in range(0, len(short), batch_size):
        chunk = short[s : s + batch_size]
        crosses = [model.cross_kv(model.encode(model.log_mel(samples))) for _, samples in chunk]
        prompts = [build_prompt(model, decoding, c) for c in crosses]
        for plen in sorted({len(p) for p in prompts}):  # rows decode in step: one group per prompt length
            rows = [j for j, p in enumerate(prompts) if len(p) == plen]
            tokens = _decode_rows(model, np.array([prompts[j] for j in rows]), [crosses[j] for j in rows], decoding)
            for j, toks in zip(rows, tokens):
                index, samples = chunk[j]
                results[index] = _short_result(model, prompts[j], toks, len(samples))
    return [r for r in results if r is not None]


def _decode_rows(model: WhisperModel, prompts: np.ndarray, crosses: list, options: DecodingOptions) -> list:
    from .whisper import stack_cross

    gen = model.generation
    max_new = max_new_tokens(gen, model.dims.n_text_ctx, prompts.shape[1], options.max_new_tokens)
    if max_new <= 0:
        return [[] for _ in crosses]
    decoder = BatchedGreedyDecoder(gen.eos_token_id, logit_filters(gen, prompts.shape[1]))
    return decoder.run(model, prompts, stack_cross(crosses), max_new)


def _short_result(model: WhisperModel, prompt: list[int], tokens: list[int], n_samples: int) -> Transcription:
    """The Transcription `_fixed_windows` makes of one window."""
    text = model.decode_tokens(tokens).strip()
    lang = language_code(model.generation, prompt[1]) if model.is_multilingual else "en"
    return Transcription(text, [Segment(0.0, n_samples / model.sampling_rate, text)], lang)
