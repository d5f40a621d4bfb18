"""Whisper in numpy: log-mel -> encoder -> decoder with KV cache -> greedy or beam search -> text.

Weights are looked up by their Hugging Face state_dict names through `Weights`, which dequantizes each tensor
when it is used (or keeps it, with `cache=True`). Decoding follows transformers' WhisperForConditionalGeneration
.generate() for short-form audio: the same prompt (start of transcript, language, task, <|notimestamps|>), the
same suppressed tokens, language detection, max length and beam search, so tokens match transformers at f32.
Audio longer than one 30-s window is cut into equal windows of at most 30 s, decoded one after the other
without conditioning on the previous window's text (no timestamp-based seeking).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..formats import MalformedHeaderError
from .audio import load_audio
from .mel import log_mel_spectrogram
from .ops import gelu, layer_norm, linear
from .tokenizer import ByteLevelBPEDecoder
from .types import Segment, Transcription
from .weights import Weights

TOKEN_EMBEDDING = "model.decoder.embed_tokens.weight"
UNTIED_OUTPUT = "proj_out.weight"
ATTENTION_SCORE_BYTES = 16 << 20  # float32 attention scores computed at once (one head, a chunk of queries)
LOGIT_CHUNK_BYTES = 8 << 20  # rows of the output embedding dequantized at once when computing logits
KV_GROWTH = 64  # positions added to the self-attention cache when it fills up
NEG_INF = np.float32(-np.inf)
BEAM_FINISHED = np.float32(-1.0e9)  # transformers' "not a candidate" score offset in beam search
TASKS = ("transcribe", "translate")


@dataclasses.dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_vocab: int
    d_model: int
    n_audio_ctx: int  # encoder positions per window (1500 = 30 s / 20 ms)
    n_text_ctx: int  # decoder positions (448)
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_meta(cls, dims: dict) -> WhisperDims:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in dims and n != "layer_norm_eps"]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**{n: dims[n] for n in names if n in dims})


class DecoderState:
    """Self-attention K/V per layer for B hypotheses, grown in steps of KV_GROWTH positions, and the length."""

    def __init__(self, n_layers: int, batch: int, heads: int, head_dim: int, capacity: int):
        shape = (n_layers, batch, heads, capacity, head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = 0

    def reserve(self, n: int, limit: int) -> None:
        need = self.length + n
        if need <= self.k.shape[3]:
            return
        cap = min(max(need, self.k.shape[3] + KV_GROWTH), max(limit, need))
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.zeros(old.shape[:3] + (cap, old.shape[4]), dtype=np.float32)
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)

    def reorder(self, index: np.ndarray) -> None:
        """Keep hypotheses `index` (beam search): row b becomes old row index[b]."""
        n = self.length
        self.k[:, :, :, :n] = self.k[:, index, :, :n]
        self.v[:, :, :, :n] = self.v[:, index, :, :n]

    def expand(self, batch: int) -> None:
        """Copy hypothesis 0 to `batch` rows (after a shared prompt)."""
        self.k = np.repeat(self.k[:, :1], batch, axis=1)
        self.v = np.repeat(self.v[:, :1], batch, axis=1)


class WhisperModel:
    def __init__(self, weights: Weights):
        self.weights = w = weights
        self.meta = meta = w.meta
        if meta.get("architecture") != "whisper":
            raise MalformedHeaderError(w.path, f"architecture {meta.get('architecture')!r} is not whisper")
        try:
            self.dims = WhisperDims.from_meta(meta["dims"])
            pre, gen, tok = meta["preprocess"], meta["generation"], meta["tokenizer"]
            self.tokenizer = ByteLevelBPEDecoder.from_meta(tok)
            self.sampling_rate = int(pre["sampling_rate"])
            self.n_fft, self.hop_length = int(pre["n_fft"]), int(pre["hop_length"])
            self.n_samples, self.padding_value = int(pre["n_samples"]), float(pre.get("padding_value", 0.0))
            self._mel_name = pre["mel_filters"]
            self.sot = int(gen["decoder_start_token_id"])
            self.eot = int(gen["eos_token_id"])
            self.no_timestamps = int(gen["no_timestamps_token_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedHeaderError(w.path, f"Whisper metadata is incomplete or invalid: {e}") from None
        self.generation = gen
        self.is_multilingual = bool(gen.get("is_multilingual", False))
        self.lang_to_id = {str(k): int(v) for k, v in gen.get("lang_to_id", {}).items()}
        self.task_to_id = {str(k): int(v) for k, v in gen.get("task_to_id", {}).items()}
        self.languages = dict(gen.get("languages", {}))  # code -> name
        self.suppress_tokens = np.asarray(gen.get("suppress_tokens", []), dtype=np.int64)
        self.begin_suppress_tokens = np.asarray(gen.get("begin_suppress_tokens", []), dtype=np.int64)
        self.output_name = UNTIED_OUTPUT if UNTIED_OUTPUT in w else TOKEN_EMBEDDING
        d = self.dims
        self._enc_head_dim = d.d_model // d.encoder_heads
        self._dec_head_dim = d.d_model // d.decoder_heads
        self._dec_prefix = [f"model.decoder.layers.{i}." for i in range(d.decoder_layers)]
        if self.n_samples // self.hop_length != 2 * d.n_audio_ctx:
            raise MalformedHeaderError(
                w.path, f"{self.n_samples} samples per window do not fill {d.n_audio_ctx} encoder positions"
            )

    # -- features and encoder ---------------------------------------------------------------------------------
    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """(n_mels, 3000) features of one 30-s window (audio zero-padded or cut to 30 s)."""
        return log_mel_spectrogram(
            audio,
            self.weights[self._mel_name],
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_samples=self.n_samples,
            padding_value=self.padding_value,
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(n_mels, 3000) log-mel -> (1500, D) encoder output."""
        w, d = self.weights, self.dims
        mel = np.asarray(mel, dtype=np.float32)
        if mel.shape != (d.n_mels, 2 * d.n_audio_ctx):
            raise ValueError(f"expected mel features of shape {(d.n_mels, 2 * d.n_audio_ctx)}, got {mel.shape}")
        x = gelu(_conv3(mel, w["model.encoder.conv1.weight"], w["model.encoder.conv1.bias"], stride=1))
        x = gelu(_conv3(x, w["model.encoder.conv2.weight"], w["model.encoder.conv2.bias"], stride=2))
        x = np.ascontiguousarray(x.T)  # (1500, D)
        x += w["model.encoder.embed_positions.weight"][: x.shape[0]]
        eps = d.layer_norm_eps
        for i in range(d.encoder_layers):
            p = f"model.encoder.layers.{i}."
            h = layer_norm(w, p + "self_attn_layer_norm", x, eps)
            x += self._self_attention_full(p + "self_attn", h)
            h = layer_norm(w, p + "final_layer_norm", x, eps)
            x += linear(w, p + "fc2", gelu(linear(w, p + "fc1", h)))
        return layer_norm(w, "model.encoder.layer_norm", x, eps)

    def _self_attention_full(self, prefix: str, x: np.ndarray) -> np.ndarray:
        """Bidirectional multi-head attention over x (T, D): one head at a time (and query rows in chunks if
        a head's T x T scores would exceed ATTENTION_SCORE_BYTES), so all heads' scores never coexist."""
        w, heads, hd = self.weights, self.dims.encoder_heads, self._enc_head_dim
        t = x.shape[0]
        q = _split_heads(linear(w, prefix + ".q_proj", x) * np.float32(hd**-0.5), heads)  # (H, T, hd)
        k = _split_heads(linear(w, prefix + ".k_proj", x), heads)
        v = _split_heads(linear(w, prefix + ".v_proj", x), heads)
        out = np.empty((heads, t, hd), dtype=np.float32)
        chunk = max(1, ATTENTION_SCORE_BYTES // (4 * t))
        for h in range(heads):
            kt = k[h].T  # (hd, T)
            for s in range(0, t, chunk):
                scores = _softmax_inplace(q[h, s : s + chunk] @ kt)  # (c, T)
                np.matmul(scores, v[h], out=out[h, s : s + chunk])
        return linear(w, prefix + ".out_proj", _merge_heads(out))

    # -- decoder ----------------------------------------------------------------------------------------------
    def cross_kv(self, encoded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per decoder layer: cross-attention keys (H, hd, 1500) (pre-transposed) and values (H, 1500, hd)."""
        w, heads = self.weights, self.dims.decoder_heads
        out = []
        for p in self._dec_prefix:
            k = _split_heads(linear(w, p + "encoder_attn.k_proj", encoded), heads)
            v = _split_heads(linear(w, p + "encoder_attn.v_proj", encoded), heads)
            out.append((np.ascontiguousarray(k.transpose(0, 2, 1)), v))
        return out

    def new_state(self, batch: int = 1, capacity: int = KV_GROWTH) -> DecoderState:
        d = self.dims
        return DecoderState(d.decoder_layers, batch, d.decoder_heads, self._dec_head_dim, capacity)

    def decoder_step(
        self, tokens: np.ndarray, state: DecoderState, cross: list[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Feed tokens (B, n) after the `state.length` cached ones; returns logits (B, V) of the last position."""
        w, d = self.weights, self.dims
        tokens = np.asarray(tokens, dtype=np.int64)
        b, n = tokens.shape
        off = state.length
        if off + n > d.n_text_ctx:
            raise ValueError(f"decoder input of {off + n} tokens exceeds the model's {d.n_text_ctx} positions")
        state.reserve(n, d.n_text_ctx)
        heads, hd, eps = d.decoder_heads, self._dec_head_dim, d.layer_norm_eps
        x = w.take(TOKEN_EMBEDDING, tokens) + w.rows("model.decoder.embed_positions.weight", off, off + n)
        x = x.reshape(b * n, d.d_model).astype(np.float32, copy=False)  # (B*n, D)
        mask = None
        if n > 1:  # causal mask for the new queries against cached + new keys
            mask = np.where(np.arange(off + n)[None, :] > (off + np.arange(n))[:, None], NEG_INF, np.float32(0))
        scale = np.float32(hd**-0.5)
        for li, p in enumerate(self._dec_prefix):
            # self-attention with the K/V cache
            h = layer_norm(w, p + "self_attn_layer_norm", x, eps)
            q = (linear(w, p + "self_attn.q_proj", h) * scale).reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
            state.k[li, :, :, off : off + n] = (
                linear(w, p + "self_attn.k_proj", h).reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
            )
            state.v[li, :, :, off : off + n] = (
                linear(w, p + "self_attn.v_proj", h).reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
            )
            k, v = state.k[li, :, :, : off + n], state.v[li, :, :, : off + n]  # (B, H, L, hd)
            scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, n, L)
            if mask is not None:
                scores += mask
            a = _softmax_inplace(scores) @ v  # (B, H, n, hd)
            x += linear(w, p + "self_attn.out_proj", a.transpose(0, 2, 1, 3).reshape(b * n, d.d_model))
            # cross-attention: every hypothesis shares the audio, so its queries stack into one matmul per head
            h = layer_norm(w, p + "encoder_attn_layer_norm", x, eps)
            q = (linear(w, p + "encoder_attn.q_proj", h) * scale).reshape(b * n, heads, hd).transpose(1, 0, 2)
            ck, cv = cross[li]
            a = _softmax_inplace(q @ ck) @ cv  # (H, B*n, 1500) -> (H, B*n, hd)
            x += linear(w, p + "encoder_attn.out_proj", _merge_heads(a))
            h = layer_norm(w, p + "final_layer_norm", x, eps)
            x += linear(w, p + "fc2", gelu(linear(w, p + "fc1", h)))
        state.length = off + n
        last = x.reshape(b, n, d.d_model)[:, -1]  # (B, D)
        return self.logits(layer_norm(w, "model.decoder.layer_norm", last, eps))

    def logits(self, h: np.ndarray) -> np.ndarray:
        """h (B, D) @ E.T through the output embedding, E dequantized a block of rows at a time."""
        w = self.weights
        rows = w.shape(self.output_name)[0]
        out = np.empty((h.shape[0], rows), dtype=np.float32)
        chunk = max(1, LOGIT_CHUNK_BYTES // (4 * h.shape[1]))
        for s in range(0, rows, chunk):
            e = min(rows, s + chunk)
            out[:, s:e] = h @ w.rows(self.output_name, s, e).T
        return out

    # -- prompt, language ------------------------------------------------------------------------------------
    def language_id(self, language: str) -> int:
        """Token id of a language given as code ('de'), name ('german') or token ('<|de|>')."""
        key = language.strip().lower()
        if key in self.lang_to_id:
            return self.lang_to_id[key]
        if f"<|{key}|>" in self.lang_to_id:
            return self.lang_to_id[f"<|{key}|>"]
        by_name = {name.lower(): code for code, name in self.languages.items()}
        if key in by_name:
            return self.lang_to_id[f"<|{by_name[key]}|>"]
        raise ValueError(
            f"unknown language {language!r}; this model knows {', '.join(sorted(c[2:-2] for c in self.lang_to_id))}"
        )

    def language_code(self, token_id: int) -> str:
        for tok, tid in self.lang_to_id.items():
            if tid == token_id:
                return tok[2:-2]
        return "?"

    def detect_language(self, cross: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, dict[str, float]]:
        """(language token id, probability per language code) from the logits after <|startoftranscript|>."""
        logits = self.decoder_step(np.array([[self.sot]]), self.new_state(1, 1), cross)[0]
        ids = np.array(sorted(self.lang_to_id.values()))
        sub = logits[ids].astype(np.float64)
        p = np.exp(sub - sub.max())
        p /= p.sum()
        best = int(ids[int(np.argmax(sub))])
        return best, {self.language_code(int(i)): float(pi) for i, pi in zip(ids, p)}

    def prompt(self, language: str | None, task: str | None, cross=None) -> list[int]:
        """Initial decoder tokens, as transformers' WhisperGenerationMixin._retrieve_init_tokens builds them."""
        if not self.is_multilingual:
            if language is not None and language.strip().lower() not in ("en", "english", "<|en|>"):
                raise ValueError(f"this is an English-only model; it cannot transcribe language {language!r}")
            if task not in (None, "transcribe"):
                raise ValueError(f"this is an English-only model; task {task!r} needs a multilingual model")
            language = task = None
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        tokens: list[int | None] = [self.sot]
        if task is None and language is None:
            forced = [tuple(f) for f in self.generation.get("forced_decoder_ids") or []]
            for pos, (i, tid) in enumerate(forced, start=1):
                if i != pos:
                    break
                tokens.append(tid)
        lang_undefined = len(tokens) <= 1 or tokens[1] is None
        lang_id = None
        if language is not None:
            lang_id = self.language_id(language)
        elif self.lang_to_id and lang_undefined:
            if cross is None:
                raise ValueError("language detection needs the encoded audio")
            lang_id = self.detect_language(cross)[0]
        if lang_id is not None:
            if len(tokens) > 1:
                tokens[1] = lang_id
            else:
                tokens.append(lang_id)
        if task is not None:
            tokens.append(self.task_to_id[task])
        elif language is not None and self.task_to_id and not any(t in self.task_to_id.values() for t in tokens):
            tokens.append(self.task_to_id["transcribe"])
        if tokens[-1] != self.no_timestamps:
            tokens.append(self.no_timestamps)
        return [int(t) for t in tokens if t is not None]

    # -- search -----------------------------------------------------------------------------------------------
    def _max_new(self, prompt_len: int, max_new_tokens: int | None) -> int:
        ctx = self.dims.n_text_ctx
        if max_new_tokens is None:  # transformers: max_length counts the prompt, capped at the context
            total = min(int(self.generation.get("max_length", ctx)) + prompt_len, ctx)
            return max(0, total - prompt_len)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return min(int(max_new_tokens), ctx - prompt_len)

    def _suppress(self, scores: np.ndarray, first: bool) -> np.ndarray:
        if self.suppress_tokens.size:
            scores[..., self.suppress_tokens] = NEG_INF
        if first and self.begin_suppress_tokens.size:
            scores[..., self.begin_suppress_tokens] = NEG_INF
        return scores

    def greedy(self, prompt: Sequence[int], cross, max_new: int) -> list[int]:
        state = self.new_state(1, len(prompt) + KV_GROWTH)
        logits = self.decoder_step(np.array([prompt]), state, cross)
        out: list[int] = []
        for i in range(max_new):
            tok = int(np.argmax(self._suppress(logits[0], first=i == 0)))
            out.append(tok)
            if tok == self.eot or i + 1 == max_new:
                break
            logits = self.decoder_step(np.array([[tok]]), state, cross)
        return _strip_eot(out, self.eot)

    def beam_search(
        self, prompt: Sequence[int], cross, max_new: int, beam_size: int, length_penalty: float
    ) -> list[int]:
        """transformers' beam search (early_stopping=False): keep 2*beam candidates per step, finished
        hypotheses scored by sum(log p) / generated_length ** length_penalty."""
        k, p_len, eot = beam_size, len(prompt), self.eot
        state = self.new_state(1, p_len + KV_GROWTH)
        logits = self.decoder_step(np.array([prompt]), state, cross)
        state.expand(k)
        logits = np.repeat(logits, k, axis=0)
        n_cand = 2 * k
        seqs = np.zeros((k, max_new), dtype=np.int64)  # generated tokens of the running hypotheses
        run_scores = np.full(k, BEAM_FINISHED, dtype=np.float32)
        run_scores[0] = 0.0  # only the first copy of the prompt may expand on the first step
        fin_seqs = np.zeros((k, max_new), dtype=np.int64)
        fin_len = np.zeros(k, dtype=np.int64)
        fin_scores = np.full(k, BEAM_FINISHED, dtype=np.float32)
        fin_done = np.zeros(k, dtype=bool)
        improvable = True
        for step in range(max_new):
            logp = _log_softmax(logits)
            logp = self._suppress(logp, first=step == 0) + run_scores[:, None]  # (K, V)
            flat = logp.reshape(-1)
            top = np.argpartition(-flat, n_cand - 1)[:n_cand]
            top = top[np.argsort(-flat[top], kind="stable")]  # (2K,) best first
            top_scores = flat[top]
            src, tok = np.divmod(top, logp.shape[1])
            cand = seqs[src].copy()
            cand[:, step] = tok
            hits = (tok == eot) | (step + 1 >= max_new)  # finished by end of text or by length
            # finished candidates among the first K enter the finished pool
            gen_len = step + 1
            scored = top_scores / np.float32(gen_len**length_penalty)
            scored = scored + np.where(hits & (np.arange(n_cand) < k), 0, BEAM_FINISHED).astype(np.float32)
            if not improvable:
                scored = scored + BEAM_FINISHED
            m_scores = np.concatenate([fin_scores, scored])
            keep = np.argsort(-m_scores, kind="stable")[:k]
            m_seqs = np.concatenate([fin_seqs, cand])
            m_len = np.concatenate([fin_len, np.full(n_cand, gen_len)])
            m_done = np.concatenate([fin_done, hits & (np.arange(n_cand) < k)])
            fin_seqs, fin_len, fin_scores, fin_done = m_seqs[keep], m_len[keep], m_scores[keep], m_done[keep]
            # the best K unfinished candidates keep running
            running = top_scores + np.where(hits, BEAM_FINISHED, 0).astype(np.float32)
            nxt = np.argsort(-running, kind="stable")[:k]
            seqs, run_scores = cand[nxt], running[nxt]
            if hits.all():
                break
            worst_fin = fin_scores.min() if fin_done.all() else BEAM_FINISHED
            best_possible = run_scores[0] / np.float32(gen_len**length_penalty)
            improvable = improvable and bool(best_possible > worst_fin)
            if not improvable:
                break
            state.reorder(src[nxt])
            logits = self.decoder_step(tok[nxt][:, None], state, cross)
        best = int(np.argmax(fin_scores))
        return _strip_eot(fin_seqs[best, : fin_len[best]].tolist(), eot)

    # -- public API -------------------------------------------------------------------------------------------
    def decode_tokens(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    def generate(
        self,
        mel: np.ndarray,
        *,
        beam_size: int = 1,
        language: str | None = None,
        task: str | None = None,
        max_new_tokens: int | None = None,
        length_penalty: float | None = None,
    ) -> tuple[list[int], list[int]]:
        """(prompt tokens, generated tokens without end of text) for one window's mel features."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        cross = self.cross_kv(self.encode(mel))
        prompt = self.prompt(language, task, cross)
        max_new = self._max_new(len(prompt), max_new_tokens)
        if max_new <= 0:
            return prompt, []
        if beam_size == 1:
            return prompt, self.greedy(prompt, cross, max_new)
        lp = float(self.generation.get("length_penalty", 1.0) if length_penalty is None else length_penalty)
        return prompt, self.beam_search(prompt, cross, max_new, beam_size, lp)

    def windows(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """[start, end) sample ranges: one window up to 30 s, else equal windows of at most 30 s."""
        n = len(audio)
        if n <= self.n_samples:
            return [(0, n)]
        count = -(-n // self.n_samples)
        size = -(-n // count)
        return [(s, min(n, s + size)) for s in range(0, n, size)]

    def transcribe(
        self,
        audio,
        beam_size: int = 1,
        language: str | None = None,
        task: str = "transcribe",
        max_new_tokens: int | None = None,
        length_penalty: float | None = None,
    ):
        """Text of `audio` (path, array at 16 kHz, or a list of them -> list of results).

        language: code or name for multilingual models (detected from the first window when None).
        length_penalty: None uses the model's generation default (transformers': 1.0, i.e. the sum of
        log-probabilities divided by the generated length).
        """
        if isinstance(audio, (list, tuple)):
            return [self.transcribe(a, beam_size, language, task, max_new_tokens, length_penalty) for a in audio]
        samples = load_audio(audio, self.sampling_rate)
        segments: list[Segment] = []
        detected = language
        for start, end in self.windows(samples):
            mel = self.log_mel(samples[start:end])
            prompt, tokens = self.generate(
                mel,
                beam_size=beam_size,
                language=detected,
                task=task,
                max_new_tokens=max_new_tokens,
                length_penalty=length_penalty,
            )
            if self.is_multilingual and detected is None:  # later windows keep the first window's language
                detected = self.language_code(prompt[1])
            segments.append(
                Segment(start / self.sampling_rate, end / self.sampling_rate, self.decode_tokens(tokens).strip())
            )
        lang = self.language_code(self.language_id(detected)) if self.is_multilingual else "en"
        return Transcription(" ".join(s.text for s in segments if s.text), segments, lang)


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(T, D) -> (H, T, D / H)."""
    t, dm = x.shape
    return x.reshape(t, heads, dm // heads).transpose(1, 0, 2)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """(H, T, hd) -> (T, H * hd)."""
    h, t, hd = x.shape
    return x.transpose(1, 0, 2).reshape(t, h * hd)


def _conv3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """Whisper's kernel-3, padding-1 Conv1d as one matmul: x (C, T) -> (C_out, T // stride)."""
    c, t = x.shape
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (t + 2 - 3) // stride + 1
    cols = np.lib.stride_tricks.as_strided(
        xp, shape=(t_out, c, 3), strides=(xp.strides[1] * stride, xp.strides[0], xp.strides[1]), writeable=False
    ).reshape(t_out, c * 3)  # (T_out, C*3) im2col copy
    out = cols @ weight.reshape(weight.shape[0], -1).T  # (T_out, C_out)
    out += bias
    return np.ascontiguousarray(out.T)


def _softmax_inplace(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, overwriting x (fresh attention scores) to save a temporary."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


def _strip_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] == eot else tokens
