"""Quantization methods side by side: convert one Whisper checkpoint with each method at the same bits, measure
the per-layer relative output error on the calibration inputs and the word error rate of the .wq file in the
numpy runtime. Writes benchmarks/results/quant_methods.md.

    python benchmarks/bench_quant_methods.py --model openai/whisper-tiny.en --bits 3 --group-size 128 \\
        --calib ../shared/librispeech/train-clean-100 --calib-samples 32 \\
        --eval ../shared/librispeech/test-clean --eval-samples 50

Per-layer error: mean over quantized weights of |dW x|^2 / |W x|^2 on each layer's own calibration inputs
(produced by the already-quantized layers before it). RTN's is measured by running the same block-sequential
engine with round-to-nearest.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wavq.converter.calibrate import select_calibration  # noqa: E402
from wavq.converter.export import convert, load_exporter  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.recipe import Plan, Recipe  # noqa: E402
from wavq.converter.quant.rtn import QuantSpec  # noqa: E402
from wavq.converter.quant.sequential import SequentialQuantizer  # noqa: E402
from wavq.evaluation import evaluate  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.datasets import find_utterances  # noqa: E402

MAX_NEW_TOKENS = 200
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quant_methods.md")


def rtn_layer_errors(source: str, items, bits: int, group_size: int) -> dict[str, float]:
    exporter = load_exporter(source)
    tensors = list(exporter.tensors())
    module = importlib.import_module(pipeline.CALIBRATION_MODULES[exporter.architecture], pipeline.__package__)
    cal = pipeline._Calibration(exporter, tensors, items, module)
    q = SequentialQuantizer(
        Plan(awq=False, clip=False, rounder="rtn"),
        {n: QuantSpec(bits, group_size) for n in cal.targets},
        damp=0.01,
        act_order=False,
        true_sequential=True,
        seed=0,
    )
    q.run(cal.blocks, cal.batches)
    return q.errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="openai/whisper-tiny.en")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--methods", default="rtn,gptq,awq,awq+gptq,clip+gptq")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--eval-samples", type=int, default=50)
    ap.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="PATTERN=BITS",
        help="pin tensors for every method, e.g. '*embed_tokens*=8'",
    )
    ap.add_argument("--output", default=RESULTS)
    args = ap.parse_args()

    keep = tuple((p, int(b)) for p, _, b in (k.rpartition("=") for k in args.keep))
    # a broken model repeats itself up to the context limit; 200 tokens cover any 35 s LibriSpeech utterance
    options = {"max_new_tokens": MAX_NEW_TOKENS}
    items = select_calibration(args.calib, args.calib_samples, 0)
    utts = find_utterances(args.eval)
    step = max(1, len(utts) // args.eval_samples)
    utts = utts[::step][: args.eval_samples]  # spread over all speakers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "float.wq")
        convert(args.model, path, None)
        base = evaluate(load(path, cache=True), utts, options)
        rows.append(("float", "-", "-", base.wer, 32.0, 0.0))
        for method in args.methods.split(","):
            recipe = Recipe(method=method, bits=args.bits, group_size=args.group_size, keep=keep)
            path = os.path.join(tmp, f"{method}.wq")
            t0 = time.perf_counter()
            report = convert(args.model, path, recipe, calib_items=items if recipe.uses_calibration else None)
            seconds = time.perf_counter() - t0
            errors = report.quantization.get("relative_output_error")
            if errors is None:
                errors = rtn_layer_errors(args.model, items, args.bits, args.group_size)
            vals = np.array(list(errors.values()))
            res = evaluate(load(path, cache=True), utts, options)
            rows.append(
                (
                    method,
                    f"{vals.mean():.4f}",
                    f"{np.median(vals):.4f}",
                    res.wer,
                    report.quantization["bits_per_weight"],
                    seconds,
                )
            )
            print(f"{method}: WER {res.wer:.4f}, layer error mean {vals.mean():.4f}", file=sys.stderr)

    pinned = f", pinned {', '.join(args.keep)}" if args.keep else ""
    lines = [
        f"# Quantization methods: {args.model}, {args.bits}-bit, group {args.group_size}{pinned}",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{datetime.date.today().isoformat()}. Calibration: {len(items)} utterances of {args.calib} (seed 0). "
        f"WER: {len(utts)} utterances of {args.eval}, greedy (at most {MAX_NEW_TOKENS} tokens), numpy runtime, "
        "Whisper English normalizer.",
        "",
        "| method | layer error mean | layer error median | WER | bits/weight | convert s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {a} | {b} | {w * 100:.2f}% | {bpw:.3f} | {s:.0f} |" for m, a, b, w, bpw, s in rows]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
