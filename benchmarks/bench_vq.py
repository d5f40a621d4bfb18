"""Vector quantization against scalar codes on held-out audio: which vq design (vector dimension, scale groups,
rotation) the converter defaults to, measured on validation utterances only (never the test sets).

    python benchmarks/bench_vq.py --model openai/whisper-tiny.en \\
        --calib ../shared/librispeech/train-clean-100 --calib-samples 32 --valid 40

Calibration utterances are drawn from train-clean-100 without speaker HELD_OUT_SPEAKER; the validation set is
`--valid` utterances of that speaker, spread over its chapters. Each recipe is quantized in-process with
quantize_tensors (the file writer does not store codebook tensors yet), its dequantized weights are loaded into
transformers' Whisper and decoded greedily in batches (bench_quant_table.TorchWhisper). Every finished row is
appended to benchmarks/results/vq_validation.json at once (a rerun skips rows already there); the Markdown table
is drawn from that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine, versions  # noqa: E402
from bench_quant_table import TorchWhisper, wer  # noqa: E402

from wavq.converter.calibrate import select_calibration  # noqa: E402
from wavq.converter.export import load_exporter  # noqa: E402
from wavq.converter.quant.pipeline import quantize_tensors  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.quant.weight import stored_values  # noqa: E402
from wavq.evaluation.datasets import find_utterances, spread  # noqa: E402
from wavq.formats import QuantizedTensor  # noqa: E402
from wavq.formats.codecs import CodebookTensor  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE, load_audio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vq_validation"
HELD_OUT_SPEAKER = "8226"  # train-clean-100 speaker never drawn for calibration: the validation set

# label -> recipe options (None: float). Order = measuring order (the comparisons that decide the design first).
ROWS: dict[str, dict | None] = {
    "f32": None,
    "rtn 3": {"method": "rtn", "bits": 3},
    "gptq 3": {"method": "gptq", "bits": 3},
    "vq d2 3.0 g128": {"method": "vq", "bits": 3, "vq_dim": 2},
    "rtn 2": {"method": "rtn", "bits": 2},
    "gptq 2": {"method": "gptq", "bits": 2},
    "vq d2 2.0 g128": {"method": "vq", "bits": 2, "vq_dim": 2},
    "vq d4 2.0 g128": {"method": "vq", "bits": 2, "vq_dim": 4},
    "vq d2 2.5 g128": {"method": "vq", "bits": 2.5, "vq_dim": 2},
    "vq d4 2.5 g128": {"method": "vq", "bits": 2.5, "vq_dim": 4},
    "vq d2 3.0 row": {"method": "vq", "bits": 3, "vq_dim": 2, "group_size": 0},
    "vq d2 3.0 g128 rotate": {"method": "vq", "bits": 3, "vq_dim": 2, "rotate": True},
    "gptq 3 rotate": {"method": "gptq", "bits": 3, "rotate": True},
    "vq d2 2.5 g128 rotate": {"method": "vq", "bits": 2.5, "vq_dim": 2, "rotate": True},
}


def calibration_items(calib: str, n: int, seed: int) -> list:
    """n utterances drawn by seed from `calib`, the held-out speaker's left out (drawn from a larger draw)."""
    pool = select_calibration(calib, 2 * n, seed)
    items = [it for it in pool if not it.id.startswith(HELD_OUT_SPEAKER + "-")][:n]
    if len(items) < n:
        raise RuntimeError(f"only {len(items)} calibration utterances outside speaker {HELD_OUT_SPEAKER}")
    return items


def load_values(tw: TorchWhisper, out: dict) -> None:
    """Dequantized weights (and float tensors) of quantize_tensors' output into the torch model."""
    with torch.no_grad():
        for name, value in out.items():
            if name not in tw.params:
                raise RuntimeError(f"unexpected tensor {name}")
            stored = isinstance(value, (QuantizedTensor, CodebookTensor))
            arr = stored_values(value) if stored else np.asarray(value, dtype=np.float32)
            tw.params[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)).reshape(tw.params[name].shape))


def measure(label: str, opts: dict | None, args, tw: TorchWhisper, float_state: dict, valid, calib_items) -> dict:
    tw.model.load_state_dict(float_state)
    bpw, seconds, info = 32.0, 0.0, {}
    if opts is not None:
        recipe = Recipe.from_options(calib_samples=args.calib_samples, seed=args.seed, **opts)
        exporter = load_exporter(args.model, None)
        started = time.perf_counter()
        out, info = quantize_tensors(exporter, list(exporter.tensors()), recipe, calib_items)
        seconds = time.perf_counter() - started
        load_values(tw, out)
        bpw = info["bits_per_weight"]
    audios = [load_audio(u.path, SAMPLE_RATE) for u in valid]
    hyps = tw.transcribe(audios)
    w, words = wer([u.text for u in valid], hyps)
    command = "float" if opts is None else "Recipe(" + ", ".join(f"{k}={v!r}" for k, v in opts.items()) + ")"
    return {
        "label": label,
        "model": args.model,
        "recipe": opts,
        "command": command,
        "set": f"train-clean-100 speaker {HELD_OUT_SPEAKER}, {len(valid)} utterances ({words} words)",
        "calibration": f"{len(calib_items)} train-clean-100 utterances (seed {args.seed}, speaker {HELD_OUT_SPEAKER} "
        "excluded)",
        "wer": round(w, 2),
        "bits_per_weight": round(float(bpw), 4),
        "convert_seconds": round(seconds, 1),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "relative_output_error_mean": (
            round(float(np.mean(list(info["relative_output_error"].values()))), 5)
            if info.get("relative_output_error")
            else None
        ),
    }


def load_rows() -> list[dict]:
    path = RESULTS.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else []


def save_rows(rows: list[dict]) -> None:
    path = RESULTS.with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    shutil.move(tmp, path)
    RESULTS.with_suffix(".md").write_text(table(rows))


def table(rows: list[dict]) -> str:
    lines = [
        "# Vector quantization on held-out audio (validation, not test)",
        "",
        "Written by `benchmarks/bench_vq.py` from `vq_validation.json`. Fake quantization: each recipe's dequantized",
        "weights loaded into transformers' Whisper, greedy decoding. Bits per weight count scales and codebooks.",
        "Conversion seconds were measured on a machine shared with other jobs: compare them only roughly.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        lines += [
            f"## {model}",
            "",
            f"Set: {sel[0]['set']}. Calibration: {sel[0]['calibration']}.",
            f"Machine: {sel[0]['machine']}; {sel[0]['versions']}.",
            "",
            "| row | command | WER % | bits/weight | mean rel. output error | convert s | date |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in sel:
            err = "" if r["relative_output_error_mean"] is None else f"{r['relative_output_error_mean']:.4f}"
            lines.append(
                f"| {r['label']} | `{r['command']}` | {r['wer']:.2f} | {r['bits_per_weight']:.3f} | {err} "
                f"| {r['convert_seconds']:.0f} | {r['date']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="openai/whisper-tiny.en")
    ap.add_argument("--calib", required=True, help="train-clean-100 (LibriSpeech layout)")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--valid", type=int, default=40, help="validation utterances of the held-out speaker")
    ap.add_argument("--rows", nargs="*", default=None, help="labels to measure (default: all, in order)")
    args = ap.parse_args()
    valid = spread([u for u in find_utterances(os.path.join(args.calib, HELD_OUT_SPEAKER)) if u.text], args.valid)
    calib_items = calibration_items(args.calib, args.calib_samples, args.seed)
    tw = TorchWhisper(args.model)
    float_state = {k: v.clone() for k, v in tw.model.state_dict().items()}
    rows = load_rows()
    done = {(r["model"], r["label"]) for r in rows}
    for label in args.rows or list(ROWS):
        if (args.model, label) in done:
            continue
        row = measure(label, ROWS[label], args, tw, float_state, valid, calib_items)
        rows.append(row)
        save_rows(rows)
        print(f"{label}: WER {row['wer']:.2f} at {row['bits_per_weight']:.3f} bits/weight, {row['convert_seconds']}s")


if __name__ == "__main__":
    main()
