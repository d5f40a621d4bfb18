"""Vector quantization against scalar codes on held-out audio: which vq design (vector dimension, scale groups,
rotation) the converter defaults to, measured on validation utterances only (never the test sets).

    python benchmarks/bench_vq.py --model openai/whisper-tiny.en \\
        --calib ../shared/librispeech/train-clean-100 --calib-samples 32 --valid 40

Calibration utterances are drawn from train-clean-100 without speaker HELD_OUT_SPEAKER; the validation set is
`--valid` utterances of that speaker, spread over its chapters. Each recipe is quantized in-process with
quantize_tensors, or with `--fresh` converted to a .wq file by a fresh process (conversion wall time and peak
resident memory of that process alone, as wavq-convert would cost); its dequantized weights are loaded into
transformers' Whisper and decoded greedily in batches (bench_quant_table.TorchWhisper). A row may also set
fields of vq.VQSpec the recipe does not carry (its "vq" entry: design choices measured before one became the
default). Every finished row is appended to benchmarks/results/vq_validation.json at once (a rerun skips rows
already there unless --force); the Markdown table is drawn from that file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import load_wq_weights, machine, versions  # noqa: E402
from bench_quant_table import TorchWhisper, wer  # noqa: E402

from wavq.converter.calibrate import select_calibration  # noqa: E402
from wavq.converter.export import convert, load_exporter  # noqa: E402
from wavq.converter.quant import vq, weight  # noqa: E402
from wavq.converter.quant.pipeline import quantize_tensors  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.quant.weight import stored_values  # noqa: E402
from wavq.evaluation.datasets import find_utterances, spread  # noqa: E402
from wavq.formats import QuantizedTensor  # noqa: E402
from wavq.formats.codecs import CodebookTensor  # noqa: E402
from wavq.formats.reader import open_wq  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE, load_audio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vq_validation"
HELD_OUT_SPEAKER = "8226"  # train-clean-100 speaker never drawn for calibration: the validation set
MEASURED_CODE = ("converter", "formats", "runtime")  # a row's "code" is marked modified when these differ

# label -> recipe options (None: float), plus "vq": VQSpec fields. Order = measuring order (what decides first).
# Bits per weight at g128 on tiny.en: d2 with 6/5/4 index bits 3.13/2.63/2.13; d4 with 11/9/8 index bits
# 3.10/2.44/2.16 (its per-tensor codebooks cost more: 2**bits * 4 float16 values per tensor).
ROWS: dict[str, dict | None] = {
    "f32": None,
    "rtn 3": {"method": "rtn", "bits": 3},
    "gptq 3": {"method": "gptq", "bits": 3},
    "vq d2 3.0 g128": {"method": "vq", "bits": 3, "vq_dim": 2, "vq": {"codebook_rounds": 0}},
    "vq d2 3.0 g128 codebook 1": {"method": "vq", "bits": 3, "vq_dim": 2, "vq": {"codebook_rounds": 1}},
    "vq d2 3.0 g128 codebook 3": {"method": "vq", "bits": 3, "vq_dim": 2, "vq": {"codebook_rounds": 3}},
    "vq d2 3.0 g128 codebook 6": {"method": "vq", "bits": 3, "vq_dim": 2, "vq": {"codebook_rounds": 6}},
    "vq d2 3.0 g128 codebook 3 rotate": {
        "method": "vq",
        "bits": 3,
        "vq_dim": 2,
        "rotate": True,
        "vq": {"codebook_rounds": 3},
    },
    "vq d4 2.75 g128 codebook 3": {"method": "vq", "bits": 2.75, "vq_dim": 4, "vq": {"codebook_rounds": 3}},
    "vq d4 2.75 g128 codebook 3 rotate": {
        "method": "vq",
        "bits": 2.75,
        "vq_dim": 4,
        "rotate": True,
        "vq": {"codebook_rounds": 3},
    },
    "gptq mixed 3.13 rotate": {"method": "gptq", "bits": None, "target_bpw": 3.13, "rotate": True},
    "gptq+tune mixed 3.13 rotate act-order": {
        "method": "gptq+tune",
        "bits": None,
        "target_bpw": 3.13,
        "rotate": True,
        "act_order": True,
    },
    "vq d2 3.0 g128 codebook 6 rotate": {
        "method": "vq",
        "bits": 3,
        "vq_dim": 2,
        "rotate": True,
        "vq": {"codebook_rounds": 6},
    },
    "vq d2 3.0 row codebook 3 rotate": {
        "method": "vq",
        "bits": 3,
        "vq_dim": 2,
        "group_size": 0,
        "rotate": True,
        "vq": {"codebook_rounds": 3},
    },
    "vq d2 2.5 g128 codebook 3 rotate": {
        "method": "vq",
        "bits": 2.5,
        "vq_dim": 2,
        "rotate": True,
        "vq": {"codebook_rounds": 3},
    },
    "vq d2 2.0 g128 codebook 3 rotate": {
        "method": "vq",
        "bits": 2,
        "vq_dim": 2,
        "rotate": True,
        "vq": {"codebook_rounds": 3},
    },
    "gptq mixed 2.63 rotate": {"method": "gptq", "bits": None, "target_bpw": 2.63, "rotate": True},
    "vq d2 2.5 g128 codebook 3": {"method": "vq", "bits": 2.5, "vq_dim": 2, "vq": {"codebook_rounds": 3}},
    "vq d2 2.0 g128 codebook 3": {"method": "vq", "bits": 2, "vq_dim": 2, "vq": {"codebook_rounds": 3}},
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


@contextlib.contextmanager
def vq_settings(fields: dict):
    """VQSpec built with `fields` (e.g. codebook_rounds) wherever the pipeline builds one, for the duration."""
    original = weight.VQSpec
    weight.VQSpec = functools.partial(vq.VQSpec, **fields) if fields else original
    try:
        yield
    finally:
        weight.VQSpec = original


def calibration_items(calib: str, n: int, seed: int) -> list:
    """n utterances drawn by seed from `calib`, the held-out speaker's left out (drawn from a larger draw)."""
    pool = select_calibration(calib, 2 * n, seed)
    items = [it for it in pool if not it.id.startswith(HELD_OUT_SPEAKER + "-")][:n]
    if len(items) < n:
        raise RuntimeError(f"only {len(items)} calibration utterances outside speaker {HELD_OUT_SPEAKER}")
    return items


def load_values(tw: TorchWhisper, out: dict) -> None:
    """Dequantized weights (and float tensors) of quantize_tensors' output into the torch model."""
    params = dict(tw.model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, value in out.items():
            if name not in params:
                raise RuntimeError(f"unexpected tensor {name}")
            stored = isinstance(value, (QuantizedTensor, CodebookTensor))
            arr = stored_values(value) if stored else np.asarray(value, dtype=np.float32)
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)).reshape(params[name].shape))


def recipe_of(opts: dict, args) -> Recipe:
    kwargs = {k: v for k, v in opts.items() if k != "vq"}
    return Recipe.from_options(calib_samples=args.calib_samples, seed=args.seed, **kwargs)


def _convert_child(model: str, path: str, opts: dict, args, calib_items) -> None:
    torch.set_num_threads(1)
    with vq_settings(opts.get("vq", {})):
        convert(model, path, recipe_of(opts, args), force=True, calib_items=calib_items)


def convert_fresh(opts: dict, args, calib_items, path: str) -> tuple[float, float]:
    """Convert in a fresh process: (wall seconds, peak resident MiB of that process)."""
    proc = multiprocessing.get_context("spawn").Process(
        target=_convert_child, args=(args.model, path, opts, args, calib_items)
    )
    started = time.perf_counter()
    proc.start()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"conversion failed (status {status})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # KiB on Linux


def quantize_in_process(opts: dict, args, tw: TorchWhisper, calib_items) -> tuple[float, dict]:
    exporter = load_exporter(args.model, None)
    started = time.perf_counter()
    with vq_settings(opts.get("vq", {})):
        out, info = quantize_tensors(exporter, list(exporter.tensors()), recipe_of(opts, args), calib_items)
    seconds = time.perf_counter() - started
    load_values(tw, out)
    return seconds, info


def code_version() -> str:
    """The commit the measured code is at (+ "modified" when the package's code differs from it)."""
    here = Path(__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", *MEASURED_CODE],
        cwd=here.parent,
        capture_output=True,
    )
    return head.stdout.strip() + (" modified" if dirty.stdout.strip() else "")


def measure(label: str, opts: dict | None, args, tw: TorchWhisper, float_state: dict, valid, calib_items) -> dict:
    tw.model.load_state_dict(float_state)
    bpw, seconds, peak, info = 32.0, 0.0, None, {}
    if opts is not None and args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.wq")
            seconds, peak = convert_fresh(opts, args, calib_items, path)
            load_wq_weights(tw.model, path)
            with open_wq(path) as f:
                info = f.meta["quantization"]
    elif opts is not None:
        seconds, info = quantize_in_process(opts, args, tw, calib_items)
    if opts is not None:
        bpw = info["bits_per_weight"]
    audios = [load_audio(u.path, SAMPLE_RATE) for u in valid]
    hyps = tw.transcribe(audios)
    w, words = wer([u.text for u in valid], hyps)
    command = "float"
    if opts is not None:
        command = "Recipe(" + ", ".join(f"{k}={v!r}" for k, v in opts.items() if k != "vq") + ")"
        command += "".join(f", VQSpec {k}={v!r}" for k, v in opts.get("vq", {}).items())
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
        "convert_peak_mib": None if peak is None else round(peak),
        "date": datetime.date.today().isoformat(),
        "code": code_version(),
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
        "Conversion seconds were measured on a machine shared with other jobs: compare them only roughly; a peak",
        "(MiB) is given where the conversion ran in a fresh process (`--fresh`), otherwise it ran in-process.",
        "Code: the commit each row was measured at (before a row's code became a commit: `modified`).",
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
            "| row | command | WER % | bits/weight | mean rel. output error | convert s | peak MiB | date | code |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in sel:
            err = "" if r["relative_output_error_mean"] is None else f"{r['relative_output_error_mean']:.4f}"
            peak = "" if r.get("convert_peak_mib") is None else str(r["convert_peak_mib"])
            lines.append(
                f"| {r['label']} | `{r['command']}` | {r['wer']:.2f} | {r['bits_per_weight']:.3f} | {err} "
                f"| {r['convert_seconds']:.0f} | {peak} | {r['date']} | {r.get('code', '')} |"
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
    ap.add_argument("--force", action="store_true", help="re-measure rows already stored (replacing them)")
    ap.add_argument("--fresh", action="store_true", help="convert each row to a .wq file in a fresh process")
    args = ap.parse_args()
    valid = spread([u for u in find_utterances(os.path.join(args.calib, HELD_OUT_SPEAKER)) if u.text], args.valid)
    calib_items = calibration_items(args.calib, args.calib_samples, args.seed)
    tw = TorchWhisper(args.model)
    float_state = {k: v.clone() for k, v in tw.model.state_dict().items()}
    for label in args.rows or list(ROWS):
        rows = load_rows()  # re-read: rows another run stored meanwhile are kept
        if any((r["model"], r["label"]) == (args.model, label) for r in rows) and not args.force:
            continue
        row = measure(label, ROWS[label], args, tw, float_state, valid, calib_items)
        rows = [r for r in load_rows() if (r["model"], r["label"]) != (args.model, label)] + [row]
        save_rows(rows)
        print(f"{label}: WER {row['wer']:.2f} at {row['bits_per_weight']:.3f} bits/weight, {row['convert_seconds']}s")


if __name__ == "__main__":
    main()
