"""Decoding for Whisper: prompts, language detection, logit filters, greedy and beam search, short-form transcription.

Follows transformers' WhisperForConditionalGeneration.generate() for short-form audio: the same prompt (start of
transcript, language, task, <|notimestamps|>), the same suppressed tokens, language detection, max length and beam
search, so tokens match transformers at f32. Audio longer than one window is cut into equal windows of at most one
window, decoded one after the other without conditioning on the previous window's text (no timestamp seeking).

The model is used only through its narrow interface (`WhisperModel.cross_kv`, `new_state`, `decoder_step`, and the
validated `generation` config), so the same decoders serve any model that offers it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .audio import load_audio
from .config import TASKS, WhisperGeneration
from .ops import log_softmax
from .types import Segment, Transcription

if TYPE_CHECKING:
    from .whisper import CrossKV, WhisperModel

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


@dataclasses.dataclass(frozen=True)
class DecodingResult:
    prompt: list[int]
    tokens: list[int]  # generated, without end of text


# ---------------------------------------------------------------------------------------------------- filters


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


def logit_filters(gen: WhisperGeneration, sample_begin: int) -> list[LogitFilter]:
    filters: list[LogitFilter] = []
    if gen.suppress_tokens:
        filters.append(SuppressTokens(gen.suppress_tokens))
    if gen.begin_suppress_tokens:
        filters.append(SuppressAtBegin(gen.begin_suppress_tokens, sample_begin))
    return filters


def _filtered(scores: np.ndarray, filters: Sequence[LogitFilter], tokens: np.ndarray) -> np.ndarray:
    for f in filters:
        f.apply(scores, tokens)
    return scores


# ---------------------------------------------------------------------------------------------------- decoders


class GreedyDecoder:
    def __init__(self, eot: int, filters: Sequence[LogitFilter]):
        self.eot, self.filters = eot, filters

    def run(self, model: WhisperModel, prompt: Sequence[int], cross: CrossKV, max_new: int) -> list[int]:
        state = model.new_state(1, len(prompt) + PROMPT_ROOM)
        logits = model.decoder_step(np.array([prompt]), state, cross)
        out: list[int] = []
        for step in range(max_new):
            tok = int(np.argmax(_filtered(logits, self.filters, np.array([[*prompt, *out]], dtype=np.int64))[0]))
            out.append(tok)
            if tok == self.eot or step + 1 == max_new:
                break
            logits = model.decoder_step(np.array([[tok]]), state, cross)
        return _strip_eot(out, self.eot)


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

    def __init__(self, beam_size: int, length_penalty: float, eot: int, filters: Sequence[LogitFilter]):
        self.k, self.length_penalty, self.eot, self.filters = beam_size, length_penalty, eot, filters

    def run(self, model: WhisperModel, prompt: Sequence[int], cross: CrossKV, max_new: int) -> list[int]:
        k, n_cand, eot = self.k, 2 * self.k, self.eot
        state = model.new_state(1, len(prompt) + PROMPT_ROOM)
        logits = np.repeat(model.decoder_step(np.array([prompt]), state, cross), k, axis=0)
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
    if tokens[-1] != gen.no_timestamps_token_id:
        tokens.append(gen.no_timestamps_token_id)
    return [int(t) for t in tokens if t is not None]


def max_new_tokens(gen: WhisperGeneration, n_text_ctx: int, prompt_len: int, requested: int | None) -> int:
    """Tokens to generate after a prompt of `prompt_len`."""
    if requested is None:  # transformers: max_length counts the prompt, capped at the context
        total = min(gen.max_length + prompt_len, n_text_ctx)
        return max(0, total - prompt_len)
    if requested < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {requested}")
    return min(int(requested), n_text_ctx - prompt_len)


# ---------------------------------------------------------------------------------------------------- entry points


def decode(model: WhisperModel, mel: np.ndarray, options: DecodingOptions) -> DecodingResult:
    """Prompt and generated tokens for one window's mel features."""
    if options.beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {options.beam_size}")
    gen = model.generation
    cross = model.cross_kv(model.encode(mel))
    prompt = build_prompt(model, options, cross)
    max_new = max_new_tokens(gen, model.dims.n_text_ctx, len(prompt), options.max_new_tokens)
    if max_new <= 0:
        return DecodingResult(prompt, [])
    filters = logit_filters(gen, len(prompt))
    decoder: GreedyDecoder | BeamSearchDecoder
    if options.beam_size == 1:
        decoder = GreedyDecoder(gen.eos_token_id, filters)
    else:
        lp = gen.length_penalty if options.length_penalty is None else float(options.length_penalty)
        decoder = BeamSearchDecoder(options.beam_size, lp, gen.eos_token_id, filters)
    return DecodingResult(prompt, decoder.run(model, prompt, cross, max_new))


def windows(n: int, window: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges of `n` samples: one window up to `window`, else equal windows of at most it."""
    if n <= window:
        return [(0, n)]
    count = -(-n // window)
    size = -(-n // count)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def transcribe(model: WhisperModel, audio, options: DecodingOptions) -> Transcription | list[Transcription]:
    """Text of `audio` (path, array at the model's rate, or a list of them -> list of results).

    A multilingual model detects the language from the first window (when options.language is None) and keeps it.
    """
    if isinstance(audio, (list, tuple)):
        return [_transcribe_one(model, a, options) for a in audio]
    return _transcribe_one(model, audio, options)


def _transcribe_one(model: WhisperModel, audio, options: DecodingOptions) -> Transcription:
    rate = model.sampling_rate
    samples = load_audio(audio, rate)
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


# ---------------------------------------------------------------------------------------------------- batches


class BatchedGreedyDecoder:
    """Greedy decoding of several utterances at once, with GreedyDecoder's filters: each step is one decoder
    pass over the B rows still running (each weight read once for all of them, matrix-vector products become
    matrix-matrix ones), and an utterance leaves the batch when it emits end of text. `cross` holds one row per
    utterance (`whisper.stack_cross`) and every prompt has the same length, so rows stay in step."""

    def __init__(self, eot: int, filters: Sequence[LogitFilter]):
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
    model: WhisperModel, audio: Sequence, options: DecodingOptions, batch_size: int
) -> list[Transcription]:
    """`transcribe` of a list, short-form utterances (one window) greedily decoded `batch_size` at a time
    (`BatchedGreedyDecoder`); each result is the one `transcribe` gives it alone. Long-form audio, and beam
    search, go one utterance at a time through `transcribe`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[Transcription | None] = [None] * len(audio)
    short: list[tuple[int, np.ndarray]] = []
    for i, a in enumerate(audio):
        samples = load_audio(a, model.sampling_rate)
        if len(samples) > model.n_samples or options.beam_size != 1:
            results[i] = _transcribe_one(model, samples, options)
        else:
            short.append((i, samples))
    for s in range(0, len(short), batch_size):
        chunk = short[s : s + batch_size]
        crosses = [model.cross_kv(model.encode(model.log_mel(samples))) for _, samples in chunk]
        prompts = [build_prompt(model, options, c) for c in crosses]
        for plen in sorted({len(p) for p in prompts}):  # rows decode in step: one group per prompt length
            rows = [j for j, p in enumerate(prompts) if len(p) == plen]
            tokens = _decode_rows(model, np.array([prompts[j] for j in rows]), [crosses[j] for j in rows], options)
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
    """The Transcription `_transcribe_one` makes of one window."""
    text = model.decode_tokens(tokens).strip()
    lang = language_code(model.generation, prompt[1]) if model.is_multilingual else "en"
    return Transcription(text, [Segment(0.0, n_samples / model.sampling_rate, text)], lang)
