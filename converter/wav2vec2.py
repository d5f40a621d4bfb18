"""Wav2Vec2ForCTC, HubertForCTC and Data2VecAudioForCTC -> .wq.

Covers every variant these transformers classes build: feature-encoder norm "group" (base) or "layer" (large-lv60,
Data2VecAudio), post-norm or stable (pre-norm) encoder layers, conv bias on or off, any conv dims / kernels /
strides, the grouped positional convolution (weight norm folded at export), HuBERT's optional feature-projection
LayerNorm and BatchNorm positional conv, and Data2VecAudio's stack of positional convolutions.

Names are the checkpoint's state_dict keys, with one exception:
- `<prefix>.encoder.pos_conv_embed.conv.weight` holds the weight-normed kernel folded to g * v / ||v||
  (torch's `parametrizations.weight.original0/1`, or `weight_g` / `weight_v` in old-style modules), so the runtime
  sees a plain convolution. The pieces themselves are not stored.
Not stored at all: `masked_spec_embed` (training-time SpecAugment) and BatchNorm's `num_batches_tracked`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..runtime.wav2vec2 import ACTIVATIONS, ARCHITECTURE, TORCH_NORM_EPS, Wav2Vec2Dims
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

try:  # the converter needs transformers; the registry import only needs the config classes
    from transformers import Data2VecAudioConfig, HubertConfig, Wav2Vec2Config
except ImportError as e:  # pragma: no cover - converter extras missing
    raise ImportError("the wav2vec2 converter needs transformers (pip install 'wavq[convert]')") from e

# State-dict entries that carry no inference weight.
_IGNORED_SUFFIXES = ("masked_spec_embed", "num_batches_tracked")
# Weight-norm pieces (both torch naming schemes), folded into `conv.weight`.
_WEIGHT_NORM_PIECES = ("parametrizations.weight.original0", "parametrizations.weight.original1", "weight_g", "weight_v")


def _model_class(config):
    from transformers import Data2VecAudioForCTC, HubertForCTC, Wav2Vec2ForCTC

    return {Wav2Vec2Config: Wav2Vec2ForCTC, HubertConfig: HubertForCTC, Data2VecAudioConfig: Data2VecAudioForCTC}[
        type(config)
    ]


def check_config(config, source: str) -> None:
    """Raise UnsupportedModelError for anything the runtime cannot reproduce exactly."""
    cls_name = _model_class(config).__name__
    what = f"{source!r} ({config.model_type})"
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForCTC") for a in archs):
        raise UnsupportedModelError(
            f"{what} is a {', '.join(archs)} checkpoint without a CTC head; wavq converts fine-tuned "
            f"{cls_name} checkpoints (pretraining-only models must be fine-tuned for CTC first)"
        )
    if getattr(config, "vocab_size", None) is None:
        raise UnsupportedModelError(f"{what} has no vocab_size, so it has no CTC head to convert")
    if getattr(config, "add_adapter", False):
        raise UnsupportedModelError(
            f"{what} uses a convolutional adapter after the encoder (add_adapter=True), which wavq does not run"
        )
    if getattr(config, "adapter_attn_dim", None) is not None:
        raise UnsupportedModelError(
            f"{what} has per-language attention adapters (adapter_attn_dim={config.adapter_attn_dim}, MMS-style), "
            "which wavq does not run"
        )
    norm = getattr(config, "feat_extract_norm", "layer")
    if norm not in ("group", "layer"):
        raise UnsupportedModelError(f"{what}: feat_extract_norm={norm!r} is not 'group' or 'layer'")
    for field in ("feat_extract_activation", "hidden_act"):
        act = getattr(config, field)
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise UnsupportedModelError(
                f"{what}: {field}={act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
    if not (len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride)):
        raise UnsupportedModelError(f"{what}: conv_dim, conv_kernel and conv_stride differ in length")
    if config.hidden_size % config.num_attention_heads:
        raise UnsupportedModelError(f"{what}: hidden_size is not a multiple of num_attention_heads")


def dims_from_config(config, model) -> dict:
    """The flat dims dict the runtime's Wav2Vec2Dims reads."""
    is_d2v = isinstance(config, Data2VecAudioConfig)
    pos = model.base_model.encoder.pos_conv_embed
    batch_norm = getattr(pos, "batch_norm", None)
    dims = {
        "prefix": model.base_model_prefix,
        "conv_dim": [int(x) for x in config.conv_dim],
        "conv_kernel": [int(x) for x in config.conv_kernel],
        "conv_stride": [int(x) for x in config.conv_stride],
        "conv_bias": bool(config.conv_bias),
        "feat_extract_norm": "layer" if is_d2v else config.feat_extract_norm,
        "feat_extract_activation": config.feat_extract_activation,
        "feat_proj_layer_norm": bool(getattr(config, "feat_proj_layer_norm", True)),
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": int(config.num_attention_heads),
        "intermediate_size": int(config.intermediate_size),
        "hidden_act": config.hidden_act,
        "layer_norm_eps": float(config.layer_norm_eps),
        "do_stable_layer_norm": False if is_d2v else bool(config.do_stable_layer_norm),
        "pos_conv_kernel": int(config.conv_pos_kernel_size if is_d2v else config.num_conv_pos_embeddings),
        "pos_conv_groups": int(config.num_conv_pos_embedding_groups),
        "pos_conv_stack": is_d2v,
        "pos_conv_layers": int(config.num_conv_pos_embeddings) if is_d2v else 1,
        "pos_conv_batch_norm": batch_norm is not None,
        "batch_norm_eps": float(batch_norm.eps) if batch_norm is not None else TORCH_NORM_EPS,
        "vocab_size": int(model.lm_head.out_features),
    }
    Wav2Vec2Dims.from_meta(dims)  # the runtime must be able to read what we write
    return dims


def fold_weight_norm(conv) -> np.ndarray:
    """The effective kernel of a weight-normed Conv1d (dim=2, as Wav2Vec2PositionalConvEmbedding builds it),
    from either torch naming: parametrizations.weight.original0/1 (g, v) or weight_g / weight_v."""
    import torch

    parametrizations = getattr(conv, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        g, v = parametrizations.weight.original0, parametrizations.weight.original1
    elif hasattr(conv, "weight_g") and hasattr(conv, "weight_v"):
        g, v = conv.weight_g, conv.weight_v
    else:
        return conv.weight.detach().float().numpy()
    with torch.no_grad():
        return torch._weight_norm(v.float(), g.float(), 2).numpy()


class Wav2Vec2CTCExporter(Exporter):
    architecture = ARCHITECTURE

    def __init__(self, model, source: str, tokenizer, feature_extractor):
        super().__init__(model, source)
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.config = model.config
        self.dims = dims_from_config(self.config, model)
        self._state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def meta(self) -> dict:
        tok, fe = self.tokenizer, self.feature_extractor
        vocab = [str(tok.convert_ids_to_tokens(i)) for i in range(self.dims["vocab_size"])]
        word_delimiter = getattr(tok, "word_delimiter_token", None)
        return {
            "architecture": ARCHITECTURE,
            "model_type": self.config.model_type,
            "dims": self.dims,
            "tokenizer": {
                "vocab": vocab,  # token string by id, one per lm_head row (ids the tokenizer lacks -> unk)
                "pad_token": str(tok.pad_token),  # CTC blank, removed after collapsing repeats
                "blank_id": int(self.config.pad_token_id) if self.config.pad_token_id is not None else None,
                "unk_token": str(tok.unk_token),
                "word_delimiter_token": None if word_delimiter is None else str(word_delimiter),
                "replace_word_delimiter_char": str(getattr(tok, "replace_word_delimiter_char", " ")),
                "do_lower_case": bool(getattr(tok, "do_lower_case", False)),
                "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)),
                "special_tokens": [str(t) for t in tok.all_special_tokens],
            },
            "preprocess": {
                "sampling_rate": int(fe.sampling_rate),
                "do_normalize": bool(fe.do_normalize),
                "return_attention_mask": bool(fe.return_attention_mask),
                "padding_value": float(fe.padding_value),
            },
        }

    def calibration(
        self, items: list[CalibItem], tensors: list[ExportTensor], split_attention: bool = True
    ) -> Calibration:
        from .calib_wav2vec2 import calibration

        return calibration(self, items, tensors, split_attention)

    def tensors(self) -> Iterator[ExportTensor]:
        d = self.dims
        p = d["prefix"]
        used: set[str] = set()

        def t(name: str, kind: str, array: np.ndarray | None = None) -> ExportTensor:
            if array is None:
                if name not in self._state:
                    raise ConversionError(f"{self.source}: checkpoint lacks tensor {name!r}")
                array = self._state[name]
            used.add(name)
            return ExportTensor(name, np.ascontiguousarray(array, dtype=np.float32), kind)

        def opt(name: str, kind: str) -> Iterator[ExportTensor]:
            if name in self._state:
                yield t(name, kind)

        fe = f"{p}.feature_extractor.conv_layers"
        for i in range(len(d["conv_dim"])):
            yield t(f"{fe}.{i}.conv.weight", "conv")
            yield from opt(f"{fe}.{i}.conv.bias", "bias")
            if d["feat_extract_norm"] == "layer" or i == 0:
                yield t(f"{fe}.{i}.layer_norm.weight", "norm")
                yield t(f"{fe}.{i}.layer_norm.bias", "norm")
        fp = f"{p}.feature_projection"
        if d["feat_proj_layer_norm"]:
            yield t(f"{fp}.layer_norm.weight", "norm")
            yield t(f"{fp}.layer_norm.bias", "norm")
        yield t(f"{fp}.projection.weight", "linear")
        yield t(f"{fp}.projection.bias", "bias")

        pc = f"{p}.encoder.pos_conv_embed"
        if d["pos_conv_stack"]:
            for i in range(d["pos_conv_layers"]):
                yield t(f"{pc}.layers.{i}.conv.weight", "conv")
                yield from opt(f"{pc}.layers.{i}.conv.bias", "bias")
        else:
            if d["pos_conv_batch_norm"]:
                for n in ("weight", "bias", "running_mean", "running_var"):
                    yield t(f"{pc}.batch_norm.{n}", "norm")
            folded = fold_weight_norm(self.model.base_model.encoder.pos_conv_embed.conv)
            used.update(f"{pc}.conv.{piece}" for piece in _WEIGHT_NORM_PIECES)
            yield t(f"{pc}.conv.weight", "conv", folded)  # listed exception: folded weight norm
            yield from opt(f"{pc}.conv.bias", "bias")

        enc = f"{p}.encoder"
        if not d["do_stable_layer_norm"]:
            yield t(f"{enc}.layer_norm.weight", "norm")
            yield t(f"{enc}.layer_norm.bias", "norm")
        for i in range(d["num_hidden_layers"]):
            lp = f"{enc}.layers.{i}"
            attn = [
                t(f"{lp}.attention.{n}_proj.{w}", "linear" if w == "weight" else "bias")
                for n in ("q", "k", "v", "out")
                for w in ("weight", "bias")
            ]
            ln1 = [t(f"{lp}.layer_norm.{w}", "norm") for w in ("weight", "bias")]
            ffn = [
                t(f"{lp}.feed_forward.{n}.{w}", "linear" if w == "weight" else "bias")
                for n in ("intermediate_dense", "output_dense")
                for w in ("weight", "bias")
            ]
            ln2 = [t(f"{lp}.final_layer_norm.{w}", "norm") for w in ("weight", "bias")]
            yield from (ln1 + attn + ln2 + ffn) if d["do_stable_layer_norm"] else (attn + ln1 + ffn + ln2)
        if d["do_stable_layer_norm"]:
            yield t(f"{enc}.layer_norm.weight", "norm")
            yield t(f"{enc}.layer_norm.bias", "norm")
        yield t("lm_head.weight", "linear")
        yield t("lm_head.bias", "bias")

        leftover = sorted(k for k in self._state if k not in used and not k.endswith(_IGNORED_SUFFIXES))
        if leftover:
            raise UnsupportedModelError(
                f"{self.source}: checkpoint has tensors wavq does not know how to run: {', '.join(leftover[:8])}"
                + (f" and {len(leftover) - 8} more" if len(leftover) > 8 else "")
            )


@register(Wav2Vec2Config, HubertConfig, Data2VecAudioConfig)
def load(source: str, config=None, revision: str | None = None, **kwargs) -> Wav2Vec2CTCExporter:
    """Load a *ForCTC checkpoint with its tokenizer and feature extractor from a hub id or local directory."""
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer, Wav2Vec2CTCTokenizer

    if config is None:
        config = AutoConfig.from_pretrained(source, revision=revision)
    if type(config) not in (Wav2Vec2Config, HubertConfig, Data2VecAudioConfig):
        raise UnsupportedModelError(f"{source!r}: {type(config).__name__} is not a Wav2Vec2-style CTC config")
    check_config(config, source)
    model_cls = _model_class(config)
    try:
        model, info = model_cls.from_pretrained(
            source, config=config, revision=revision, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, *DAMAGED_PICKLE_ERRORS) as e:
        raise ConversionError(f"cannot load {model_cls.__name__} weights from {source!r}: {first_line(e)}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(_IGNORED_SUFFIXES)]
    if any(k.startswith("lm_head.") for k in missing):
        raise UnsupportedModelError(
            f"{source!r} has no trained CTC head (lm_head missing from its weights): it is a pretraining-only "
            f"checkpoint; fine-tune it as {model_cls.__name__} first"
        )
    if missing:
        raise ConversionError(f"{source!r}: weights missing from the checkpoint: {', '.join(sorted(missing)[:8])}")
    model.eval()

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(
            f"{source!r}: cannot load its CTC tokenizer (vocab.json): {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(tokenizer, Wav2Vec2CTCTokenizer):
        raise UnsupportedModelError(
            f"{source!r}: tokenizer {type(tokenizer).__name__} is not a character CTC tokenizer "
            "(Wav2Vec2CTCTokenizer); phoneme and other tokenizers are not supported"
        )
    if getattr(tokenizer, "target_lang", None) is not None:
        raise UnsupportedModelError(f"{source!r}: multi-language tokenizers (target_lang) are not supported")
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"{source!r}: cannot load its feature extractor (preprocessor_config.json): {str(e).splitlines()[0]}"
        ) from None
    if getattr(feature_extractor, "feature_size", 1) != 1 or not hasattr(feature_extractor, "do_normalize"):
        raise UnsupportedModelError(
            f"{source!r}: feature extractor {type(feature_extractor).__name__} does not take raw mono audio"
        )
    if getattr(feature_extractor, "padding_side", "right") != "right":
        raise UnsupportedModelError(f"{source!r}: the feature extractor pads on the left, which wavq does not do")
    return Wav2Vec2CTCExporter(model, source, tokenizer, feature_extractor)
