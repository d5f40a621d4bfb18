"""Which layers an integer-only device must keep in higher precision: activation quantization one part at a time.

    nice -n 10 python benchmarks/bench_act_ablation.py --model openai/whisper-base --bits 8 4 --valid 40

The weights stay float; only the inputs of the chosen linear layers are rounded to signed `bits`-bit codes with a
per-token (dynamic) scale, exactly as the runtime's integer path rounds them (converter.quant.act.fake_quantize =
intlinear.quantize_activations): one transformer block at a time (encoder.layers.i, decoder.layers.i, the output
projection), then one kind of layer across all blocks (q/k/v, out_proj, fc1, fc2, cross-attention k/v), every
encoder linear, and every layer at once; where every layer at once costs more than KEEP_ASKED_ABOVE points, every
layer but the worst block, and the encoder at the ablated width with the decoder at DECODER_BITS. Measured on
validation audio (train-clean-100 speaker HELD_OUT_SPEAKER, never a test set), greedy, transformers' Whisper with
forward pre-hooks. Each row is stored as soon as it is measured
(results/act_ablation_<model>.json; a rerun skips rows already there); the Markdown table is drawn from that file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine, quantized_inputs, versions  # noqa: E402
from bench_quant_table import TorchWhisper, wer  # noqa: E402

from wavq.evaluation.datasets import find_utterances, spread  # noqa: E402
from wavq.formats.activation import ActivationSpec  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE, load_audio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT_SPEAKER = "8226"  # the validation speaker of every train-clean-100 benchmark (never calibrated on)
# layer kinds by the last parts of a Linear's name in transformers' Whisper
KINDS = {
    "self-attention q/k/v": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self-attention out_proj": ("self_attn.out_proj",),
    "cross-attention q": ("encoder_attn.q_proj",),
    "cross-attention k/v": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "cross-attention out_proj": ("encoder_attn.out_proj",),
    "fc1": ("fc1",),
    "fc2": ("fc2",),
}
OUTPUT = "proj_out"
NONE, EVERY, ENCODER = "none", "every linear", "every encoder linear"
DECODER_BITS = 8  # the decoder's input width in the mixed rows (encoder at fewer bits)
KEEP_ASKED_ABOVE = 0.5  # WER points


def parts(model: torch.nn.Module) -> dict[str, list[str]]:
    """Part label -> names of the Linear modules whose inputs it quantizes (blocks, output projection, kinds, all)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    out: dict[str, list[str]] = {}
    for side in ("encoder", "decoder"):
        n_layers = len(getattr(model.model, side).layers)
        for i in range(n_layers):
            out[f"{side}.layers.{i}"] = [n for n in linears if f".{side}.layers.{i}." in n]
    out["output projection"] = [n for n in linears if n == OUTPUT]
    for kind, suffixes in KINDS.items():
        out[kind] = [n for n in linears if n.endswith(suffixes)]
    out[ENCODER] = [n for n in linears if ".encoder." in n]
    out[EVERY] = linears
    return out


class Probe:
    """The float model's greedy transcripts of the validation audio, and its next-token log-probabilities along
    them: the reference every quantized part is compared with by teacher forcing (one forward pass per part,
    cheap enough for every part; WER needs a generation per part)."""

    def __init__(self, tw: TorchWhisper, audios: list, batch: int = 8):
        self.tw, self.batches, self.n_utterances = tw, [], len(audios)
        eot = tw.model.generation_config.eos_token_id
        with torch.inference_mode():
            for i in range(0, len(audios), batch):
                feats = tw.processor.feature_extractor(
                    audios[i : i + batch], sampling_rate=SAMPLE_RATE, return_tensors="pt"
                ).input_features
                seqs = tw.model.generate(feats, **tw.generate_kwargs())
                targets = seqs[:, 1:]
                first_eot = (targets == eot).int().argmax(dim=1)
                positions = torch.arange(targets.shape[1])[None, :]
                valid = (targets < eot) | (positions == first_eot[:, None])  # text tokens and the closing eot
                encoded = tw.model.model.encoder(feats)
                ref = self._log_probs(feats, encoded, seqs[:, :-1], valid)
                self.batches.append((feats, encoded, seqs[:, :-1], valid, ref))

    def _log_probs(self, feats: torch.Tensor, encoded, inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.tw.model(input_features=feats, encoder_outputs=encoded, decoder_input_ids=inputs).logits
        return torch.log_softmax(logits[valid].double(), dim=-1)

    def compare(self, encoder_changed: bool) -> tuple[float, float]:
        """(mean KL(float || current) in nats per token, % of tokens where the two argmax agree). The float
        encoder outputs are reused unless the part quantizes encoder inputs (half the parts: half the time)."""
        kl, agree, n = 0.0, 0, 0
        with torch.inference_mode():
            for feats, encoded, inputs, valid, ref in self.batches:
                enc = self.tw.model.model.encoder(feats) if encoder_changed else encoded
                cur = self._log_probs(feats, enc, inputs, valid)
                kl += float((ref.exp() * (ref - cur)).sum())
                agree += int((ref.argmax(-1) == cur.argmax(-1)).sum())
                n += ref.shape[0]
        return kl / n, 100 * agree / n


def quantizing(tw: TorchWhisper, names: list[str] | None, bits: int | None) -> contextlib.AbstractContextManager:
    if names is None or bits is None:
        return contextlib.nullcontext()
    return quantized_inputs(tw.model, {n: ActivationSpec(bits) for n in names})


def table(rows: list[dict], model: str) -> str:
    header = rows[0]
    kl_n = next((r["kl_utterances"] for r in rows if "kl_utterances" in r), "?")
    lines = [
        f"# Activation quantization one part at a time: {model} (validation, not test)",
        "",
        f"- machine: {header['machine']}; {header['versions']}",
        f"- date: {header['date']}",
        f"- data: {header['set']}; greedy, transformers' Whisper with the inputs of the listed linear layers rounded "
        "to signed codes with one scale per token (the runtime's dynamic rounding); weights float",
        f"- KL (on {kl_n} of those utterances): mean KL divergence (nats per token) of the next-token distribution "
        "from the float model's, "
        "teacher-forced "
        "along the float model's own greedy transcripts; agree: % of those tokens where both pick the same one. "
        "WER only where measured (a generation per row).",
        f"- command: `{header['command']}`",
        "",
        "| part quantized | linear layers | act bits | KL nats/token | agree % | WER % | WER vs float |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = next(r["wer"] for r in rows if r["part"] == NONE)
    for r in sorted(rows, key=lambda r: (r["part"] != NONE, -(r["bits"] or 0))):  # stable: measuring order
        bits = "" if r["bits"] is None else r["bits"]
        kl = "" if r.get("kl") is None else f"{r['kl']:.4f}"
        agree = "" if r.get("agree") is None else f"{r['agree']:.2f}"
        wer_ = "" if r.get("wer") is None else f"{r['wer']:.2f}"
        delta = "" if r.get("wer") is None or r["part"] == NONE else f"{r['wer'] - base:+.2f}"
        lines.append(f"| {r['part']} | {r['n_linear']} | {bits} | {kl} | {agree} | {wer_} | {delta} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="openai/whisper-base")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "librispeech"))
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--valid", type=int, default=40, help="validation utterances of the held-out speaker")
    ap.add_argument("--kl-valid", type=int, default=16, help="of those, the utterances the KL is measured on")
    ap.add_argument("--wer-every-part", action="store_true", help="WER for every part, not only the summary rows")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"act_ablation_{args.model.split('/')[-1]}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    utts = [u for u in find_utterances(args.data, "train-clean-100") if u.id.startswith(HELD_OUT_SPEAKER + "-")]
    valid = spread(utts, args.valid)
    audios = [load_audio(u.path, SAMPLE_RATE) for u in valid]
    refs = [u.text for u in valid]
    tw = TorchWhisper(args.model)
    probe = Probe(tw, [audios[i] for i in range(0, len(audios), max(1, len(audios) // args.kl_valid))])
    command = "python benchmarks/bench_act_ablation.py " + " ".join(sys.argv[1:])
    where = f"train-clean-100 speaker {HELD_OUT_SPEAKER}, {len(valid)} utterances"

    def row(part: str, names: list[str] | None, bits: int | None, with_wer: bool, specs: dict | None = None) -> dict:
        """The stored row of (part, bits), measuring what it lacks."""
        r = next((r for r in rows if (r["part"], r["bits"]) == (part, bits)), None)
        if r is None:
            r = {"part": part, "bits": bits, "n_linear": len(names or [])}
            rows.append(r)
        with quantized_inputs(tw.model, specs) if specs else quantizing(tw, names, bits):
            if r.get("kl") is None:
                encoder_changed = any(".encoder." in n for n in names or [])
                r["kl"], r["agree"] = (round(v, 6) for v in probe.compare(encoder_changed))
                r["kl_utterances"] = probe.n_utterances
            if with_wer and r.get("wer") is None:
                w, words = wer(refs, tw.transcribe(audios))
                r["wer"], r["set"] = round(w, 2), f"{where} ({words} words)"
        r.update(command=command, date=datetime.date.today().isoformat(), machine=machine(), versions=versions())
        rows[0].setdefault("set", r.get("set", where))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        shutil.move(tmp, path)
        path.with_suffix(".md").write_text(table(rows, args.model))
        print(f"{part} A{bits}: KL {r['kl']:.4f} agree {r['agree']:.2f} WER {r.get('wer')}", flush=True)
        return r

    rows_by_part = {NONE: row(NONE, None, None, True)}
    all_parts = parts(tw.model)
    every = all_parts.pop(EVERY)
    for bits in args.bits:
        every_row = row(EVERY, every, bits, True)
        measured = {
            p: row(p, names, bits, args.wer_every_part or p == ENCODER) for p, names in all_parts.items() if names
        }
        # what an integer-only device would keep in float, asked only where quantizing everything costs more
        # than KEEP_ASKED_ABOVE points: every linear but the worst block
        if every_row["wer"] - rows_by_part[NONE]["wer"] <= KEEP_ASKED_ABOVE:
            continue
        blocks = sorted((p for p in measured if p not in KINDS), key=lambda p: -measured[p]["kl"])
        row(f"{EVERY} but {blocks[0]}", [n for n in every if n not in all_parts[blocks[0]]], bits, True)
        # the split an integer-only device can use when the decoder is the sensitive side
        if bits < DECODER_BITS:
            decoder = {n: ActivationSpec(DECODER_BITS) for n in every if n not in all_parts[ENCODER]}
            specs = {**decoder, **{n: ActivationSpec(bits) for n in all_parts[ENCODER]}}
            row(f"encoder at A{bits}, decoder and output at A{DECODER_BITS}", every, bits, True, specs)


if __name__ == "__main__":
    main()
