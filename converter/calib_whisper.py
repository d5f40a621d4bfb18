"""Whisper as a sequence of calibration blocks over the torch WhisperForConditionalGeneration.

Blocks, in the order they are quantized. A layer is cut at its residual additions, and each attention before its
output projection, so no stage recomputes an attention (the encoder's 1500 x 1500 attention dominates the cost):
  encoder.conv                       conv1 -> GELU -> conv2 -> GELU -> + positions   (stages: conv1, conv2)
  encoder.layers.N.self_attn.qkv     LayerNorm -> q/k/v -> attention output
  encoder.layers.N.self_attn.out_proj   out_proj, + residual
  encoder.layers.N.mlp               LayerNorm -> fc1 -> GELU -> fc2, + residual      (stages: fc1, fc2)
  decoder.embed                      final encoder LayerNorm; token + position embeddings (nothing quantized)
  decoder.layers.N.self_attn.*       causal self-attention, teacher-forced, cut as in the encoder
  decoder.layers.N.encoder_attn.*    cross-attention on the encoder output, cut as in the encoder
  decoder.layers.N.mlp               as in the encoder
  decoder.head                       final decoder LayerNorm -> logits through the tied token embedding
With AWQ an attention stays one block (stages q/k/v, then out_proj): out_proj's scale is folded into v_proj's rows,
which must happen before v_proj is quantized.
The token embedding is quantized last, as the output projection, on its logits error plus its weight error (its
other use, the decoder's input lookup, sees the weight error directly: GPTQ on the logits error alone pushes error
into directions the logits ignore, which the lookup does not); the decoder layers are calibrated with the float
embeddings at their input.

Decoder inputs: <|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|> followed by the utterance's
transcript (LibriSpeech's upper-case text turned into sentence case, closer to what Whisper writes) and
<|endoftext|>; utterances without a transcript use the float model's greedy transcription instead.

Encoder rows: every utterance is a 30 s window (1500 frames) whatever its length, and the Hessians use
ENCODER_ROWS_PER_SAMPLE frames of each, drawn uniformly (seeded), padding frames included as at inference.

AWQ sites: q/k/v <- the preceding LayerNorm; out_proj <- v_proj's rows; fc1 <- final_layer_norm; cross-attention
q <- encoder_attn_layer_norm. Not foldable, so stored as `<prefix>.input_scale`: fc2 (after GELU) and the
cross-attention k/v (their input, the encoder output, feeds every decoder layer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .calibrate import CalibItem
from .quant.awq import norm_fold, rows_fold
from .quant.sequential import Batch, Block, Calibration, ScaleSite, Target, without_output_projection, working_copy
from .registry import ExportTensor
from .whisper import OUTPUT_PROJECTION, TOKEN_EMBEDDING, WhisperExporter

ENCODER_ROWS_PER_SAMPLE = 256  # of 1500 frames per 30 s window: 128 utterances give 32768 rows per Hessian
ENCODER_BATCH = 4  # utterances per encoder forward (bounds the 1500 x 1500 attention buffers)
MAX_GREEDY_TOKENS = 224  # cap on the float model's transcription of an utterance without a transcript


@dataclasses.dataclass
class EncoderBatch(Batch):
    x: torch.Tensor | None = None  # (B, n_mels, frames) features, then (B, T, d) hidden states
    tokens: list[list[int]] = dataclasses.field(default_factory=list)
    core: torch.Tensor | None = None  # (B, T, d) attention output before out_proj, between split blocks


@dataclasses.dataclass
class DecoderBatch(Batch):
    x: torch.Tensor | None = None  # (B, L, d) hidden states, right-padded
    encoder: torch.Tensor | None = None  # (B, T, d) encoder output
    mask: torch.Tensor | None = None  # (B, 1, L, L) additive causal mask
    core: torch.Tensor | None = None  # (B, L, d) attention output before out_proj, between split blocks


def sentence_case(text: str) -> str:
    """LibriSpeech transcripts are upper case; Whisper writes sentence case."""
    text = " ".join(text.split())
    if text.isupper():
        text = text.lower()
        text = text[:1].upper() + text[1:]
    return text


class WhisperCalibration:
    """Builds the blocks and initial batches for one Whisper model (a working copy the caller may modify)."""

    def __init__(
        self, model, items: list[CalibItem], *, tokenizer=None, feature_extractor=None, generation_config=None
    ):
        self.model = model
        self.items = items
        self.config = model.config
        self.tokenizer = tokenizer
        self.generation_config = generation_config or getattr(model, "generation_config", None)
        self.feature_extractor = feature_extractor
        self.n_frames = 2 * self.config.max_source_positions  # conv2 has stride 2
        self.info: dict[str, Any] = {}

    # -- inputs -----------------------------------------------------------------------------------------------
    def _features(self) -> torch.Tensor:
        fe = self.feature_extractor
        if fe is None:
            from transformers import WhisperFeatureExtractor

            fe = WhisperFeatureExtractor(feature_size=self.config.num_mel_bins)
        feats = []
        for it in self.items:
            f = fe(it.audio, sampling_rate=fe.sampling_rate, return_tensors="np").input_features[0]
            f = f[:, : self.n_frames]
            if f.shape[1] < self.n_frames:  # only for test configs with short windows
                f = np.pad(f, ((0, 0), (0, self.n_frames - f.shape[1])), constant_values=f.min())
            feats.append(f)
        return torch.from_numpy(np.stack(feats).astype(np.float32))  # (N, n_mels, frames)

    def _gen(self, name: str, default=None):
        value = getattr(self.generation_config, name, None) if self.generation_config is not None else None
        return default if value is None else value

    def _special(self, token: str) -> int | None:
        if self.tokenizer is None:
            return None
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return None if tid is None or tid == getattr(self.tokenizer, "unk_token_id", None) else int(tid)

    def _ids(self) -> dict[str, Any]:
        c = self.config
        no_ts = self._gen("no_timestamps_token_id", self._special("<|notimestamps|>"))
        lang_to_id = self._gen("lang_to_id", {}) or {}
        task_to_id = self._gen("task_to_id", {}) or {}
        multilingual = bool(self._gen("is_multilingual", bool(lang_to_id)))
        eot = self._gen("eos_token_id", c.eos_token_id)
        return {
            "sot": int(self._gen("decoder_start_token_id", c.decoder_start_token_id)),
            "eot": int(eot[0] if isinstance(eot, (list, tuple)) else eot),
            "no_ts": None if no_ts is None else int(no_ts),
            "en": lang_to_id.get("<|en|>") if multilingual else None,
            "languages": sorted(int(v) for v in lang_to_id.values()) if multilingual else [],
            "transcribe": task_to_id.get("transcribe") if multilingual else None,
        }

    def _teacher_forced(self, text: str, ids: dict) -> list[int]:
        prefix = [ids["sot"]] + [t for t in (ids["en"], ids["transcribe"], ids["no_ts"]) if t is not None]
        body = self.tokenizer.encode(" " + sentence_case(text), add_special_tokens=False)
        return (prefix + list(body) + [ids["eot"]])[: self.config.max_target_positions]

    @torch.inference_mode()
    def _greedy(self, feats: torch.Tensor, ids: dict) -> list[list[int]]:
        """The float model's greedy transcription (without timestamps) of each window, prefix included."""
        model = self.model
        enc = model.model.encoder(feats).last_hidden_state
        decoder = model.model.decoder
        b = feats.shape[0]
        suppress = set(int(t) for t in self._gen("suppress_tokens", []) or [])
        begin_suppress = set(int(t) for t in self._gen("begin_suppress_tokens", []) or [])
        vocab = model.proj_out.out_features
        first_text_step = True

        def step(inp, cache):
            out = decoder(input_ids=inp, encoder_hidden_states=enc, past_key_values=cache, use_cache=True)
            return model.proj_out(out.last_hidden_state[:, -1]), out.past_key_values

        tokens = [[ids["sot"]] for _ in range(b)]
        if ids["languages"]:  # detect the language, then continue with <|transcribe|> <|notimestamps|>
            logits, cache = step(torch.tensor(tokens), None)
            lang_ids = torch.tensor(ids["languages"])
            lang = lang_ids[logits[:, lang_ids].argmax(-1)].tolist()
            extra = [[lid] + [t for t in (ids["transcribe"], ids["no_ts"]) if t is not None] for lid in lang]
            inp = torch.tensor(extra)
            for t, e in zip(tokens, extra):
                t.extend(e)
        else:
            for t in tokens:
                t.extend([ids["no_ts"]] if ids["no_ts"] is not None else [])
            inp, cache = torch.tensor(tokens), None
        mask = torch.zeros(vocab, dtype=torch.bool)
        if ids["no_ts"] is not None:
            mask[ids["no_ts"] :] = True  # <|notimestamps|> and the timestamp tokens after it
        mask[[t for t in suppress if t < vocab]] = True
        done = torch.zeros(b, dtype=torch.bool)
        limit = min(MAX_GREEDY_TOKENS, self.config.max_target_positions - len(tokens[0]) - 1)
        for _ in range(max(limit, 0)):
            logits, cache = step(inp, cache)
            logits = logits.masked_fill(mask, float("-inf"))
            if first_text_step and begin_suppress:
                logits[:, [t for t in begin_suppress if t < vocab and t != ids["eot"]]] = float("-inf")
            first_text_step = False
            nxt = logits.argmax(-1)
            nxt[done] = ids["eot"]
            for t, n, d in zip(tokens, nxt.tolist(), done.tolist()):
                if not d:
                    t.append(n)
            done |= nxt == ids["eot"]
            if bool(done.all()):
                break
            inp = nxt[:, None]
        for t in tokens:
            if t[-1] != ids["eot"]:
                t.append(ids["eot"])
        return tokens

    def batches(self) -> list[EncoderBatch]:
        feats = self._features()
        ids = self._ids()
        can_force = self.tokenizer is not None
        tokens: list[list[int] | None] = [
            self._teacher_forced(it.text, ids) if (can_force and it.text) else None for it in self.items
        ]
        need = [i for i, t in enumerate(tokens) if t is None]
        for s in range(0, len(need), ENCODER_BATCH):
            chunk = need[s : s + ENCODER_BATCH]
            for i, t in zip(chunk, self._greedy(feats[chunk], ids)):
                tokens[i] = t
        self.info = {"decoder_inputs": {"transcripts": len(self.items) - len(need), "greedy": len(need)}}
        out = []
        for s in range(0, len(self.items), ENCODER_BATCH):
            idx = list(range(s, min(s + ENCODER_BATCH, len(self.items))))
            out.append(EncoderBatch(ids=idx, x=feats[idx], tokens=[tokens[i] for i in idx]))
        return out

    # -- blocks -----------------------------------------------------------------------------------------------
    def blocks(self, tensor_names: set[str], split_attention: bool = True) -> list[Block]:
        m = self.model
        enc, dec = m.model.encoder, m.model.decoder
        gelu = torch.nn.functional.gelu
        rows = {"main": ENCODER_ROWS_PER_SAMPLE}

        def conv_forward(b: EncoderBatch) -> EncoderBatch:
            x = gelu(enc.conv2(gelu(enc.conv1(b.x))))  # (B, d, T)
            x = x.permute(0, 2, 1) + enc.embed_positions.weight[: x.shape[-1]]  # (B, T, d)
            return dataclasses.replace(b, x=x)

        blocks = [
            Block(
                "encoder.conv",
                conv_forward,
                [
                    Target("model.encoder.conv1.weight", enc.conv1, 0),
                    Target("model.encoder.conv2.weight", enc.conv2, 1),
                ],
                max_rows=rows,
            )
        ]
        for i, layer in enumerate(enc.layers):
            blocks += _encoder_layer(layer, f"model.encoder.layers.{i}", rows, split_attention)

        eot = self._ids()["eot"]

        def embed_forward(b: EncoderBatch) -> DecoderBatch:
            e = enc.layer_norm(b.x)
            n = max(len(t) for t in b.tokens)
            ids = torch.tensor([t + [eot] * (n - len(t)) for t in b.tokens])  # right padding: causal attention
            hidden = dec.embed_tokens(ids) + dec.embed_positions.weight[:n]  # keeps real tokens unaffected
            mask = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None].expand(len(b.ids), 1, n, n)
            return DecoderBatch(ids=b.ids, lengths={"main": [len(t) for t in b.tokens]}, x=hidden, encoder=e, mask=mask)

        blocks.append(Block("decoder.embed", embed_forward))
        for i, layer in enumerate(dec.layers):
            blocks += _decoder_layer(
                layer, f"model.decoder.layers.{i}", {"enc": ENCODER_ROWS_PER_SAMPLE}, split_attention
            )

        head = TOKEN_EMBEDDING if OUTPUT_PROJECTION not in tensor_names else OUTPUT_PROJECTION

        def head_forward(b: DecoderBatch) -> torch.Tensor:
            return m.proj_out(dec.layer_norm(b.x))

        head_target = Target(head, m.proj_out, 0, lookup=head == TOKEN_EMBEDDING)  # tied: also the input lookup
        blocks.append(Block("decoder.head", head_forward, [head_target]))
        return blocks


def _w(p: str, name: str) -> str:
    return f"{p}.{name}.weight"


def _mlp(layer, p: str, name: str, rows: dict) -> Block:
    """final_layer_norm -> fc1 -> GELU -> fc2, + residual (stages fc1, fc2)."""

    def forward(b):
        return dataclasses.replace(b, x=b.x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(b.x)))))

    targets = [Target(_w(p, "fc1"), layer.fc1, 0), Target(_w(p, "fc2"), layer.fc2, 1)]
    sites = [
        ScaleSite((_w(p, "fc1"),), norm_fold(layer.final_layer_norm, f"{p}.final_layer_norm")),
        ScaleSite((_w(p, "fc2"),), None),
    ]
    return Block(name, forward, targets, sites, max_rows=rows)


def _attention(
    attn, norm, p: str, a: str, name: str, rows: dict, split: bool, core, *, cross: bool = False
) -> list[Block]:
    """One attention sub-layer (LayerNorm -> attention -> + residual) as blocks.

    core(b) computes the attention output before out_proj. Split: block 1 runs q/k/v and the attention and keeps
    that output; block 2 applies out_proj and the residual, so quantizing out_proj recomputes nothing. Unsplit
    (for AWQ, whose out_proj scale must be folded into v_proj before v_proj is quantized): one block, stages
    q/k/v then out_proj.
    """
    qkv = tuple(_w(p, f"{a}.{n}_proj") for n in "qkv")
    out = _w(p, f"{a}.out_proj")
    kv_domain = "enc" if cross else "main"
    qkv_targets = [
        Target(qkv[0], attn.q_proj, 0),
        Target(qkv[1], attn.k_proj, 0, kv_domain),
        Target(qkv[2], attn.v_proj, 0, kv_domain),
    ]
    if cross:  # q after the LayerNorm; k / v on the encoder output, which feeds every decoder layer
        qkv_sites = [ScaleSite(qkv[:1], norm_fold(norm, f"{p}.{a}_layer_norm")), ScaleSite(qkv[1:], None)]
    else:
        qkv_sites = [ScaleSite(qkv, norm_fold(norm, f"{p}.{a}_layer_norm"))]
    out_site = ScaleSite((out,), rows_fold(attn.v_proj, f"{p}.{a}.v_proj"))

    def whole(b):
        with without_output_projection(attn):
            c = core(b)
        return dataclasses.replace(b, x=b.x + attn.out_proj(c))

    def first(b):
        with without_output_projection(attn):
            return dataclasses.replace(b, core=core(b))

    def second(b):
        return dataclasses.replace(b, x=b.x + attn.out_proj(b.core), core=None)

    if not split:
        return [
            Block(name, whole, qkv_targets + [Target(out, attn.out_proj, 1)], qkv_sites + [out_site], max_rows=rows)
        ]
    return [
        Block(name + ".qkv", first, qkv_targets, qkv_sites, max_rows=rows),
        Block(name + ".out_proj", second, [Target(out, attn.out_proj, 0)], [], max_rows=rows),
    ]


def _encoder_layer(layer, p: str, rows: dict, split: bool) -> list[Block]:
    name = p.removeprefix("model.")
    sa, norm = layer.self_attn, layer.self_attn_layer_norm
    return _attention(sa, norm, p, "self_attn", name + ".self_attn", rows, split, lambda b: sa(norm(b.x))[0]) + [
        _mlp(layer, p, name + ".mlp", rows)
    ]


def _decoder_layer(layer, p: str, rows: dict, split: bool) -> list[Block]:
    name = p.removeprefix("model.")
    sa, ca = layer.self_attn, layer.encoder_attn
    sa_norm, ca_norm = layer.self_attn_layer_norm, layer.encoder_attn_layer_norm
    return (
        _attention(
            sa,
            sa_norm,
            p,
            "self_attn",
            name + ".self_attn",
            {},
            split,
            lambda b: sa(sa_norm(b.x), attention_mask=b.mask)[0],
        )
        + _attention(
            ca,
            ca_norm,
            p,
            "encoder_attn",
            name + ".encoder_attn",
            rows,
            split,
            lambda b: ca(ca_norm(b.x), key_value_states=b.encoder)[0],
            cross=True,
        )
        + [_mlp(layer, p, name + ".mlp", {})]
    )


def calibration(
    exporter: WhisperExporter, items: list[CalibItem], tensors: list[ExportTensor], split_attention: bool = True
) -> Calibration:
    """The working copy of the exporter's model, its blocks and the initial batches (WhisperExporter.calibration)."""
    model, loaded = working_copy(exporter.model, tensors)
    cal = WhisperCalibration(
        model,
        items,
        tokenizer=exporter.tokenizer,
        feature_extractor=exporter.feature_extractor,
        generation_config=exporter.generation_config,
    )
    batches = cal.batches()
    blocks = cal.blocks({t.name for t in tensors}, split_attention)
    return Calibration(model, loaded, blocks, batches, cal.info, losses, outputs)


def losses(model, batches: list[EncoderBatch]):
    """Per-utterance teacher-forced token cross-entropy (summed over the decoder sequence), for the Fisher."""
    for b in batches:
        for j, tokens in enumerate(b.tokens):
            ids = torch.tensor([tokens])

            def loss(x=b.x[j : j + 1], ids=ids):
                logits = model(input_features=x, decoder_input_ids=ids[:, :-1]).logits  # (1, L - 1, V)
                return torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum")

            yield loss


def outputs(model, b: EncoderBatch) -> list[torch.Tensor]:
    """Teacher-forced logits (L - 1, V) of each utterance of an initial batch, for distillation (tune.py)."""
    n = max(len(t) for t in b.tokens)
    ids = torch.tensor([t + [t[-1]] * (n - len(t)) for t in b.tokens])  # right padding: causal, changes nothing
    logits = model(input_features=b.x, decoder_input_ids=ids[:, :-1]).logits  # (B, n - 1, V)
    return [logits[j, : len(t) - 1] for j, t in enumerate(b.tokens)]
