"""Wav2Vec2-style CTC models (Wav2Vec2ForCTC, HubertForCTC, Data2VecAudioForCTC) as calibration blocks.

Blocks, in the order they are quantized (one utterance per batch: the models run unpadded audio):
  feature_extractor.conv_layers.N   one convolution (+ norm + activation) of the feature encoder
  feature_projection               LayerNorm -> projection, + positional convolution(s), [encoder LayerNorm]
                                   (stages: projection, then each positional convolution)
  encoder.layers.N.attention.qkv       [LayerNorm] -> q/k/v -> attention output before out_proj
  encoder.layers.N.attention.out_proj  out_proj, residual [, LayerNorm]
  encoder.layers.N.feed_forward    feed-forward and its residual / LayerNorm (stages: intermediate, output)
(With AWQ the attention is one block with stages q/k/v then out_proj, as out_proj's scale is folded into
v_proj's rows before v_proj is quantized.)
  head                             [encoder LayerNorm] -> lm_head
Rows entering the statistics: up to ROWS_PER_SAMPLE positions per utterance and weight, seeded.
The positional convolutions are grouped: they get per-group diagonal statistics, so clip search and sensitivities
use activations but GPTQ falls back to round-to-nearest there.

AWQ sites. Stable (pre-LayerNorm) layers: q/k/v <- layer_norm, out <- v_proj rows, intermediate <- final_layer_norm,
lm_head <- encoder.layer_norm. Post-LayerNorm layers (base models): a LayerNorm output is also the residual there,
so q/k/v and intermediate_dense get `<prefix>.input_scale` instead; out <- v_proj rows as above. output_dense (after
the activation) and a post-LayerNorm lm_head always use input_scale; the feature projection folds into its
LayerNorm when it has one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..runtime.audio import SAMPLE_RATE
from .calibrate import CalibItem
from .quant.awq import norm_fold, rows_fold
from .quant.sequential import Batch, Block, Calibration, ScaleSite, Target, without_output_projection, working_copy
from .registry import ExportTensor
from .wav2vec2 import Wav2Vec2CTCExporter

ROWS_PER_SAMPLE = 256  # positions per utterance entering each weight's statistics (20 ms frames, 5 s of speech)


@dataclasses.dataclass
class AudioBatch(Batch):
    x: torch.Tensor | None = None  # (1, 1, samples), then (1, C, T) conv features, then (1, T, d) hidden states
    core: torch.Tensor | None = None  # (1, T, d) attention output before out_proj, between split blocks


def prepare(model) -> None:
    """Replace each weight-normed positional convolution of the working copy by a plain Conv1d holding the folded
    kernel, so its name and value match the exported tensor and it can take its quantized value.

    (torch's remove_parametrizations would edit the parametrized class, which a deep copy shares with the
    exporter's model, and break that model.)
    """
    pos = model.base_model.encoder.pos_conv_embed
    for name, module in list(pos.named_modules()):
        if not isinstance(module, torch.nn.Conv1d) or not (
            hasattr(module, "parametrizations") or hasattr(module, "weight_g")
        ):
            continue
        plain = torch.nn.Conv1d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
        with torch.no_grad():
            plain.weight.copy_(module.weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        plain.requires_grad_(False)
        parent_name, _, attr = name.rpartition(".")
        setattr(pos.get_submodule(parent_name) if parent_name else pos, attr, plain)


def _inputs(items: list[CalibItem], feature_extractor) -> list[np.ndarray]:
    return [
        np.asarray(
            feature_extractor(it.audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0],
            dtype=np.float32,
        )
        for it in items
    ]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def calibration(
    exporter: Wav2Vec2CTCExporter, items: list[CalibItem], tensors: list[ExportTensor], split_attention: bool = True
) -> Calibration:
    """The working copy of the exporter's model, its blocks and the initial batches
    (Wav2Vec2CTCExporter.calibration)."""
    model, loaded = working_copy(exporter.model, tensors, prepare)
    batches = [
        AudioBatch(ids=[i], x=torch.from_numpy(x)[None, None])
        for i, x in enumerate(_inputs(items, exporter.feature_extractor))
    ]
    blocks = _blocks(model, split_attention)
    return Calibration(model, loaded, blocks, batches, {}, losses, outputs)


def _blocks(model: torch.nn.Module, split_attention: bool) -> list[Block]:
    base = model.base_model
    p = model.base_model_prefix
    enc = base.encoder
    stable = bool(getattr(model.config, "do_stable_layer_norm", False))
    rows = {"main": ROWS_PER_SAMPLE}

    blocks = []
    for i, conv_layer in enumerate(base.feature_extractor.conv_layers):

        def conv_forward(b, conv_layer=conv_layer):
            return dataclasses.replace(b, x=conv_layer(b.x))

        blocks.append(
            Block(
                f"feature_extractor.conv_layers.{i}",
                conv_forward,
                [Target(f"{p}.feature_extractor.conv_layers.{i}.conv.weight", conv_layer.conv, 0)],
                max_rows=rows,
            )
        )

    fp = base.feature_projection
    fp_norm = getattr(fp, "layer_norm", None) if getattr(fp, "feat_proj_layer_norm", True) else None
    proj = f"{p}.feature_projection.projection.weight"
    targets = [Target(proj, fp.projection, 0)]
    pos_convs = [(n, m) for n, m in enc.pos_conv_embed.named_modules() if isinstance(m, torch.nn.Conv1d)]
    for k, (n, m) in enumerate(pos_convs):
        targets.append(Target(f"{p}.encoder.pos_conv_embed.{n}.weight", m, 1 + k))
    sites = [
        ScaleSite((proj,), norm_fold(fp_norm, f"{p}.feature_projection.layer_norm") if fp_norm is not None else None)
    ]

    def projection_forward(b):
        h = _first(fp(b.x.transpose(1, 2)))  # (1, T, d)
        h = h + enc.pos_conv_embed(h)
        if not stable:
            h = enc.layer_norm(h)
        return dataclasses.replace(b, x=h)

    blocks.append(Block("feature_projection", projection_forward, targets, sites, max_rows=rows))

    for i, layer in enumerate(enc.layers):
        blocks += _layer(layer, f"{p}.encoder.layers.{i}", f"encoder.layers.{i}", stable, rows, split_attention)

    def head_forward(b):
        h = enc.layer_norm(b.x) if stable else b.x
        return model.lm_head(h)

    head_site = ScaleSite(("lm_head.weight",), norm_fold(enc.layer_norm, f"{p}.encoder.layer_norm") if stable else None)
    blocks.append(Block("head", head_forward, [Target("lm_head.weight", model.lm_head, 0)], [head_site], max_rows=rows))
    return blocks


def _layer(layer, lp: str, name: str, stable: bool, rows: dict, split: bool) -> list[Block]:
    """One encoder layer as blocks cut at the residual additions, and (split) the attention before out_proj."""
    a, ff = layer.attention, layer.feed_forward
    w = lambda n: f"{lp}.{n}.weight"  # noqa: E731
    qkv = (w("attention.q_proj"), w("attention.k_proj"), w("attention.v_proj"))
    out, inter, dense = w("attention.out_proj"), w("feed_forward.intermediate_dense"), w("feed_forward.output_dense")

    def core(b):
        with without_output_projection(a):
            return _first(a(layer.layer_norm(b.x) if stable else b.x))

    def residual(b, c):
        return b.x + a.out_proj(c) if stable else layer.layer_norm(b.x + a.out_proj(c))

    def feed_forward(b):
        x = b.x + ff(layer.final_layer_norm(b.x)) if stable else layer.final_layer_norm(b.x + ff(b.x))
        return dataclasses.replace(b, x=x)

    qkv_targets = [Target(qkv[0], a.q_proj, 0), Target(qkv[1], a.k_proj, 0), Target(qkv[2], a.v_proj, 0)]
    qkv_site = ScaleSite(qkv, norm_fold(layer.layer_norm, f"{lp}.layer_norm") if stable else None)
    out_site = ScaleSite((out,), rows_fold(a.v_proj, f"{lp}.attention.v_proj"))
    ff_targets = [Target(inter, ff.intermediate_dense, 0), Target(dense, ff.output_dense, 1)]
    ff_sites = [
        ScaleSite((inter,), norm_fold(layer.final_layer_norm, f"{lp}.final_layer_norm") if stable else None),
        ScaleSite((dense,), None),
    ]
    ff_block = Block(name + ".feed_forward", feed_forward, ff_targets, ff_sites, max_rows=rows)
    if not split:
        whole = lambda b: dataclasses.replace(b, x=residual(b, core(b)))  # noqa: E731
        return [
            Block(
                name + ".attention",
                whole,
                qkv_targets + [Target(out, a.out_proj, 1)],
                [qkv_site, out_site],
                max_rows=rows,
            ),
            ff_block,
        ]
    first = lambda b: dataclasses.replace(b, core=core(b))  # noqa: E731
    second = lambda b: dataclasses.replace(b, x=residual(b, b.core), core=None)  # noqa: E731
    return [
        Block(name + ".attention.qkv", first, qkv_targets, [qkv_site], max_rows=rows),
        Block(name + ".attention.out_proj", second, [Target(out, a.out_proj, 0)], [], max_rows=rows),
        ff_block,
    ]


def losses(model, batches: list[AudioBatch]):
    """Per-utterance frame cross-entropy against the float model's own best path (CTC models have no
    reference alignment; the labels are computed before any weight changes), for the Fisher."""
    with torch.no_grad():
        labels = [model(b.x[0]).logits.argmax(-1)[0] for b in batches]
    for b, target in zip(batches, labels):

        def loss(x=b.x[0], target=target):
            return torch.nn.functional.cross_entropy(model(x).logits[0], target, reduction="sum")

        yield loss


def outputs(model, b: AudioBatch) -> list[torch.Tensor]:
    """Frame logits (T, V) of the batch's utterance, for distillation (tune.py)."""
    return [model(b.x[0]).logits[0]]
