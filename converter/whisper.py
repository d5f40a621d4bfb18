"""Whisper (WhisperForConditionalGeneration) export: every size, .en and multilingual, 80/128 mels, distil.

Tensors keep their Hugging Face state_dict names. Exceptions to "every state_dict entry, verbatim":
- `proj_out.weight` is tied to `model.decoder.embed_tokens.weight` in every released checkpoint; it is stored
  once (as the embedding) and the runtime computes logits through it. An untied checkpoint keeps its own
  `proj_out.weight`.
Extra (non-weight) tensor: `preprocess.mel_filters` (n_fft // 2 + 1, n_mels), the feature extractor's slaney
filterbank, so the runtime's log-mel features equal WhisperFeatureExtractor's without re-deriving it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.whisper import OUTPUT_PROJECTION, TOKEN_EMBEDDING, WhisperDims
from .registry import (
    DAMAGED_PICKLE_ERRORS,
    ConversionError,
    Exporter,
    ExportTensor,
    UnsupportedModelError,
    first_line,
    register,
)

if TYPE_CHECKING:
    from .calibrate import CalibItem
    from .quant.sequential import Calibration

MEL_FILTERS_NAME = "preprocess.mel_filters"
SUPPORTED_ARCHITECTURE = "WhisperForConditionalGeneration"
SUPPORTED_ACTIVATIONS = ("gelu",)  # exact erf GELU, the only activation any Whisper checkpoint uses
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, what every Whisper layer norm uses
CONV_KERNEL = 3  # both encoder convolutions; the runtime hard-codes the strides (1, 2) and padding 1

# Special tokens the runtime needs by role, looked up by their text in the tokenizer (first spelling found).
SPECIAL_TOKENS = {
    "eot": ("<|endoftext|>",),
    "sot": ("<|startoftranscript|>",),
    "translate": ("<|translate|>",),
    "transcribe": ("<|transcribe|>",),
    "sot_lm": ("<|startoflm|>",),
    "sot_prev": ("<|startofprev|>",),
    "no_speech": ("<|nospeech|>", "<|nocaptions|>"),
    "no_timestamps": ("<|notimestamps|>",),
}


class WhisperExporter(Exporter):
    architecture = "whisper"

    def __init__(self, model, source: str, feature_extractor, tokenizer, generation_config):
        super().__init__(model, source)
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.config = model.config
        self._state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        self.tied = OUTPUT_PROJECTION in self._state and np.array_equal(
            self._state[OUTPUT_PROJECTION], self._state[TOKEN_EMBEDDING]
        )
        self._check()

    # -- validation -------------------------------------------------------------------------------------------
    def _check(self) -> None:
        c, fe = self.config, self.feature_extractor
        if c.activation_function not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(
                f"Whisper with activation_function={c.activation_function!r} is not supported (only gelu)"
            )
        if c.d_model % c.encoder_attention_heads or c.d_model % c.decoder_attention_heads:
            raise UnsupportedModelError(f"d_model {c.d_model} is not divisible by the number of attention heads")
        if fe.feature_size != c.num_mel_bins:
            raise ConversionError(
                f"the feature extractor makes {fe.feature_size} mel bins but the model expects {c.num_mel_bins}"
            )
        if getattr(fe, "dither", 0.0):
            raise UnsupportedModelError(f"feature extractor dither={fe.dither} is not supported (only 0.0)")
        if getattr(fe, "do_normalize", False):
            raise UnsupportedModelError("feature extractor do_normalize=True is not supported")
        expected_frames = c.max_source_positions * 2  # conv2 has stride 2
        if fe.nb_max_frames != expected_frames:
            raise UnsupportedModelError(
                f"the feature extractor makes {fe.nb_max_frames} frames per window but the encoder takes "
                f"{expected_frames} (max_source_positions={c.max_source_positions})"
            )
        conv1 = self._state["model.encoder.conv1.weight"]
        if conv1.shape[-1] != CONV_KERNEL:
            raise UnsupportedModelError(f"encoder conv kernel size {conv1.shape[-1]} is not supported (only 3)")
        known = {n for n, _ in self._named()} | {OUTPUT_PROJECTION}
        extra = sorted(set(self._state) - known)
        if extra:
            raise UnsupportedModelError(f"unexpected Whisper tensors: {', '.join(extra[:5])}")

    # -- metadata ---------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        c, fe = self.config, self.feature_extractor
        dims = WhisperDims(
            n_mels=int(c.num_mel_bins),
            n_vocab=int(c.vocab_size),
            d_model=int(c.d_model),
            n_audio_ctx=int(c.max_source_positions),
            n_text_ctx=int(c.max_target_positions),
            encoder_layers=int(c.encoder_layers),
            encoder_heads=int(c.encoder_attention_heads),
            decoder_layers=int(c.decoder_layers),
            decoder_heads=int(c.decoder_attention_heads),
            layer_norm_eps=LAYER_NORM_EPS,
        )
        # the runtime reads WhisperDims; the rest describes the checkpoint for `wavq info` and future readers
        described = {
            "encoder_ffn_dim": int(c.encoder_ffn_dim),
            "decoder_ffn_dim": int(c.decoder_ffn_dim),
            "activation": str(c.activation_function),
            "tied_output": bool(self.tied),
        }
        preprocess = {
            "sampling_rate": int(fe.sampling_rate),
            "n_fft": int(fe.n_fft),
            "hop_length": int(fe.hop_length),
            "chunk_length": int(fe.chunk_length),  # seconds per window
            "n_samples": int(fe.n_samples),
            "n_frames": int(fe.nb_max_frames),
            "padding_value": float(fe.padding_value),
            "mel_filters": MEL_FILTERS_NAME,
        }
        return {
            "architecture": self.architecture,
            "dims": {**dataclasses.asdict(dims), **described},
            "preprocess": preprocess,
            "tokenizer": tokenizer_meta(self.tokenizer),
            "generation": self._generation_meta(),
        }

    def _generation_meta(self) -> dict:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        g, c = self.generation_config, self.config
        special = special_token_ids(self.tokenizer)

        def get(name, default=None):
            value = getattr(g, name, None) if g is not None else None
            return default if value is None else value

        lang_to_id = get("lang_to_id")
        if lang_to_id is None:
            lang_to_id = {}
            for code in LANGUAGES:
                tid = token_id(self.tokenizer, f"<|{code}|>")
                if tid is not None:
                    lang_to_id[f"<|{code}|>"] = tid
        task_to_id = get("task_to_id") or {t: special[t] for t in ("transcribe", "translate") if t in special}
        is_multilingual = get("is_multilingual")
        if is_multilingual is None:
            is_multilingual = bool(lang_to_id) and c.vocab_size >= 51865  # English-only vocabularies are 51864
        languages = {tok[2:-2]: LANGUAGES.get(tok[2:-2], tok[2:-2]) for tok in lang_to_id}
        forced = get("forced_decoder_ids") or getattr(c, "forced_decoder_ids", None) or []
        no_ts = get("no_timestamps_token_id", special.get("no_timestamps"))
        if no_ts is None:
            raise UnsupportedModelError("neither the generation config nor the tokenizer defines <|notimestamps|>")
        suppress = get("suppress_tokens", getattr(c, "suppress_tokens", None)) or []
        begin_suppress = get("begin_suppress_tokens", getattr(c, "begin_suppress_tokens", None)) or []
        return {
            "decoder_start_token_id": int(get("decoder_start_token_id", c.decoder_start_token_id)),
            "eos_token_id": int(_first(get("eos_token_id", c.eos_token_id))),
            "pad_token_id": int(_first(get("pad_token_id", c.pad_token_id))),
            "no_timestamps_token_id": int(no_ts),
            "prev_sot_token_id": int(get("prev_sot_token_id", special.get("sot_prev", -1))),
            "is_multilingual": bool(is_multilingual),
            "lang_to_id": {str(k): int(v) for k, v in lang_to_id.items()} if is_multilingual else {},
            "task_to_id": {str(k): int(v) for k, v in task_to_id.items()} if is_multilingual else {},
            "languages": languages if is_multilingual else {},  # code -> English name, for language="english"
            "forced_decoder_ids": [[int(i), None if t is None else int(t)] for i, t in forced],
            "suppress_tokens": [int(t) for t in suppress],
            "begin_suppress_tokens": [int(t) for t in begin_suppress],
            "max_length": int(get("max_length", c.max_target_positions)),
            # (decoder layer, head) pairs whose cross-attention follows the audio in time: word timestamps (DTW);
            # [] when the checkpoint names none (the runtime then uses every head of the upper half of the layers)
            "alignment_heads": self._alignment_heads(get("alignment_heads") or []),
            "max_initial_timestamp_index": int(get("max_initial_timestamp_index", 50)),
            "num_beams": int(get("num_beams", 1)),
            "length_penalty": float(get("length_penalty", 1.0)),
        }

    def _alignment_heads(self, heads) -> list[list[int]]:
        """The configured heads, or [] when any lies outside this model (a generation config of another size)."""
        c = self.config
        pairs = [[int(layer), int(head)] for layer, head in heads]
        inside = all(0 <= la < c.decoder_layers and 0 <= h < c.decoder_attention_heads for la, h in pairs)
        return pairs if inside else []

    # -- tensors ----------------------------------------------------------------------------------------------
    def _named(self) -> Iterator[tuple[str, str]]:
        """(state_dict name, kind) in forward order."""
        c = self.config
        yield "model.encoder.conv1.weight", "conv"
        yield "model.encoder.conv1.bias", "bias"
        yield "model.encoder.conv2.weight", "conv"
        yield "model.encoder.conv2.bias", "bias"
        yield "model.encoder.embed_positions.weight", "other"
        for i in range(c.encoder_layers):
            p = f"model.encoder.layers.{i}."
            yield from _layer_norm(p + "self_attn_layer_norm")
            yield from _attention(p + "self_attn")
            yield from _layer_norm(p + "final_layer_norm")
            yield from _linear(p + "fc1")
            yield from _linear(p + "fc2")
        yield from _layer_norm("model.encoder.layer_norm")
        yield TOKEN_EMBEDDING, "embedding"
        yield "model.decoder.embed_positions.weight", "other"
        for i in range(c.decoder_layers):
            p = f"model.decoder.layers.{i}."
            yield from _layer_norm(p + "self_attn_layer_norm")
            yield from _attention(p + "self_attn")
            yield from _layer_norm(p + "encoder_attn_layer_norm")
            yield from _attention(p + "encoder_attn")
            yield from _layer_norm(p + "final_layer_norm")
            yield from _linear(p + "fc1")
            yield from _linear(p + "fc2")
        yield from _layer_norm("model.decoder.layer_norm")

    def tensors(self) -> Iterator[ExportTensor]:
        missing = [n for n, _ in self._named() if n not in self._state]
        if missing:
            raise ConversionError(f"checkpoint lacks Whisper tensors: {', '.join(missing[:5])}")
        for name, kind in self._named():
            yield ExportTensor(name, np.ascontiguousarray(self._state[name], dtype=np.float32), kind)
        if not self.tied:
            yield ExportTensor(OUTPUT_PROJECTION, np.ascontiguousarray(self._state[OUTPUT_PROJECTION]), "linear")

    def calibration(
        self, items: list[CalibItem], tensors: list[ExportTensor], split_attention: bool = True
    ) -> Calibration:
        from .calib_whisper import calibration

        return calibration(self, items, tensors, split_attention)

    def extra_tensors(self) -> Iterator[ExportTensor]:
        filters = np.asarray(self.feature_extractor.mel_filters, dtype=np.float32)  # (n_fft // 2 + 1, n_mels)
        yield ExportTensor(MEL_FILTERS_NAME, filters, "other")


def token_id(tokenizer, text: str) -> int | None:
    """Id of a token given by its text, None when the tokenizer does not have it."""
    tid = tokenizer.convert_tokens_to_ids(text)
    unk = getattr(tokenizer, "unk_token_id", None)
    if tid is None or (tid == unk and text != tokenizer.unk_token):
        return None
    return int(tid)


def special_token_ids(tokenizer) -> dict[str, int]:
    special = {}
    for role, spellings in SPECIAL_TOKENS.items():
        special[role] = next((t for t in (token_id(tokenizer, s) for s in spellings) if t is not None), None)
    if special["eot"] is None or special["sot"] is None:
        raise UnsupportedModelError("the tokenizer lacks <|endoftext|> or <|startoftranscript|>")
    return {k: v for k, v in special.items() if v is not None}


def tokenizer_meta(tokenizer) -> dict:
    """The vocabulary the runtime decodes with: token strings by id (added tokens included) and special ids."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = special_token_ids(tokenizer)
    return {
        "type": "byte-level-bpe",
        "tokens": ["" if t is None else str(t) for t in tokens],  # GPT-2 byte-to-unicode alphabet; added verbatim
        "special": special,
        # every id from eot up (special tokens, language tokens, timestamps) is not text
        "first_special_id": int(special["eot"]),
        "merges": tokenizer_merges(tokenizer),  # encoding (initial prompts) needs them; decoding does not
    }


def tokenizer_merges(tokenizer) -> list[str]:
    """BPE merge rules "left right" in rank order (merges.txt without its header): byte-level tokens hold no
    spaces (GPT-2's alphabet maps the space byte to 'Ġ'), so one space separates the two parts unambiguously."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedModelError("the tokenizer has no tokenizers backend to read the BPE merges from")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"tokenizer model {model.get('type')!r} is not BPE")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) else v


def _layer_norm(prefix: str):
    yield prefix + ".weight", "norm"
    yield prefix + ".bias", "norm"


def _linear(prefix: str, bias: bool = True):
    yield prefix + ".weight", "linear"
    if bias:
        yield prefix + ".bias", "bias"


def _attention(prefix: str):
    yield from _linear(prefix + ".q_proj")
    yield from _linear(prefix + ".k_proj", bias=False)  # Whisper's key projections have no bias
    yield from _linear(prefix + ".v_proj")
    yield from _linear(prefix + ".out_proj")


def _load_whisper(source: str, config=None, revision: str | None = None, **_) -> WhisperExporter:
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    if config is None:
        config = AutoConfig.from_pretrained(source, revision=revision)
    archs = list(getattr(config, "architectures", None) or [SUPPORTED_ARCHITECTURE])
    if SUPPORTED_ARCHITECTURE not in archs:
        raise UnsupportedModelError(
            f"{source}: Whisper head {', '.join(archs)} is not supported; wavq converts "
            f"{SUPPORTED_ARCHITECTURE} (speech recognition) checkpoints"
        )
    try:
        model = WhisperForConditionalGeneration.from_pretrained(source, revision=revision, dtype=torch.float32)
    except (OSError, ValueError, *DAMAGED_PICKLE_ERRORS) as e:
        raise ConversionError(f"cannot load Whisper weights from {source!r}: {first_line(e)}") from None
    model.eval()
    try:
        feature_extractor = WhisperFeatureExtractor.from_pretrained(source, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"{source!r} has no usable Whisper processor (feature extractor + tokenizer): {str(e).splitlines()[0]}"
        ) from None
    try:
        generation_config = GenerationConfig.from_pretrained(source, revision=revision)
    except OSError:  # no generation_config.json: fall back to what the model derived from its config
        generation_config = getattr(model, "generation_config", None)
    return WhisperExporter(model, source, feature_extractor, tokenizer, generation_config)


try:  # the Whisper config class is the registry key; a transformers without Whisper registers nothing
    from transformers import WhisperConfig
except ImportError:  # pragma: no cover
    WhisperConfig = None

if WhisperConfig is not None:
    register(WhisperConfig)(_load_whisper)
