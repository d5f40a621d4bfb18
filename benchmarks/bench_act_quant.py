"""Activation quantization (tiny.en unless --model): weight-only rows next to W8A8, W4A8, W4A6, W4A4 (dynamic
per-token or static activation scales, with and without SmoothQuant migration and rotation; integer products in the
runtime), with WER measured by the numpy runtime itself (`evaluate`, the code behind `wavq eval`) so the integer path is
what is measured, and the runtime's counted MACs and bit-operations per second of audio. Writes
benchmarks/results/<name>.md and .json, one table per subset.

    nice -n 10 python benchmarks/bench_act_quant.py --data ../shared/librispeech --subsets test-clean test-other \\
        --limit 20 --workdir /tmp/wavq-act --calib /tmp/calib-without-8226

Every (subset, row) is stored in <workdir>/results.json as soon as it is measured (an interrupted run resumes;
the converted models in <workdir> are shared by all subsets); --rows selects rows by label. With --simulate N the
WER comes from transformers' Whisper running the file's weights with its activation rounding as input hooks
(batched, fast enough for whole test sets), and the runtime's integer path runs only the first N utterances: the
measured MACs, and on how many of them it gives the simulation's text; rows the hooks cannot simulate (rotated or
input-scaled layers) run the runtime on every utterance instead. Rounding is RTN (group 128). Static scales and
smoothing observe --calib audio, which must not hold the evaluated utterances.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from click.testing import CliRunner  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine, versions  # noqa: E402

from wavq.converter.cli import main as convert_main  # noqa: E402
from wavq.evaluation import evaluate  # noqa: E402
from wavq.evaluation.datasets import find_utterances  # noqa: E402
from wavq.formats import WqFile  # noqa: E402
from wavq.runtime import compute, load  # noqa: E402
from wavq.runtime.info import summarize  # noqa: E402

DEFAULT_MODEL = "openai/whisper-tiny.en"
MAX_NEW_TOKENS = 128
FLOAT_BITOPS_PER_MAC = compute.FLOAT_BITS * compute.FLOAT_BITS
# label -> wavq-convert options (f32: no options)
STATIC, ROTATE = ["--act-static"], ["--rotate"]
SMOOTH_05, SMOOTH_08 = ["--smooth", "0.5"], ["--smooth", "0.8"]
ROWS: dict[str, list[str]] = {
    "f32": [],
    "W8": ["--bits", "8"],
    "W8A8": ["--bits", "8", "--act-bits", "8"],
    "W8A8 static": ["--bits", "8", "--act-bits", "8", *STATIC],
    "W8A8 smooth 0.5": ["--bits", "8", "--act-bits", "8", *SMOOTH_05],
    "W4": ["--bits", "4"],
    "W4A8": ["--bits", "4", "--act-bits", "8"],
    "W4A8 static": ["--bits", "4", "--act-bits", "8", *STATIC],
    "W4A8 smooth 0.5": ["--bits", "4", "--act-bits", "8", *SMOOTH_05],
    "W4A6": ["--bits", "4", "--act-bits", "6"],
    "W4A6 static": ["--bits", "4", "--act-bits", "6", *STATIC],
    "W4A6 smooth 0.5": ["--bits", "4", "--act-bits", "6", *SMOOTH_05],
    "W4A6 rotate": ["--bits", "4", "--act-bits", "6", *ROTATE],
    "W4A4": ["--bits", "4", "--act-bits", "4"],
    "W4A4 rotate": ["--bits", "4", "--act-bits", "4", *ROTATE],
    "W4A4 smooth 0.5": ["--bits", "4", "--act-bits", "4", *SMOOTH_05],
    "W4A4 smooth 0.8": ["--bits", "4", "--act-bits", "4", *SMOOTH_08],
    "W4A4 rotate smooth 0.5": ["--bits", "4", "--act-bits", "4", *ROTATE, *SMOOTH_05],
    "W4A4 rotate smooth 0.8": ["--bits", "4", "--act-bits", "4", *ROTATE, *SMOOTH_08],
    "W4A4 rotate static": ["--bits", "4", "--act-bits", "4", *ROTATE, *STATIC],
}
CALIBRATED = ("--act-static", "--smooth")  # options that observe the --calib audio
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def convert(model: str, label: str, workdir: str, calib: list[str]) -> str:
    path = os.path.join(workdir, label.replace(" ", "_") + ".wq")
    options = ROWS[label] + (calib if any(o in ROWS[label] for o in CALIBRATED) else [])
    if not os.path.exists(path):
        r = CliRunner().invoke(convert_main, [model, "-o", path, "-q", *options])
        if r.exit_code != 0:
            raise SystemExit(f"{label}: conversion failed: {r.output}")
    return path


def measure(label: str, path: str, utts) -> dict:
    with WqFile(path) as f:
        s = summarize(f)
        act = f.meta.get("quantization", {}).get("act_bits")
    r = evaluate(load(path), utts, {"max_new_tokens": MAX_NEW_TOKENS})
    return {
        "label": label,
        "options": ROWS[label],
        "bits_per_weight": s.quantized_bpw if s.n_quantized else 32.0,
        "act_bits": act or 32,
        "wer": r.wer,
        "n_words": r.n_words,
        "n_utterances": len(utts),
        "audio_seconds": r.audio_seconds,
        "rtf": r.rtf,
        "macs_per_audio_second": r.macs_per_audio_second,
        "bitops_per_audio_second": r.bitops_per_audio_second,
        "float_bitops_per_audio_second": r.macs_per_audio_second * FLOAT_BITOPS_PER_MAC,
        "bitops_by_part": r.counts.bitops,
        "macs_by_part": r.counts.macs,
    }


def measure_simulated(label: str, path: str, utts, tw, check: int) -> dict:
    """WER from transformers' Whisper with the file's weights and its activation rounding as hooks (the float
    simulation of the integer path: the same codes; only the float order of the products differs, which can
    flip a near-tie), MACs and bit-operations from the runtime on the first `check` utterances, and on how many of
    those the runtime's integer path gives the simulation's normalized text."""
    from bench_common import file_input_specs, load_wq_weights, quantized_inputs
    from bench_quant_table import MAX_NEW_TOKENS as SIM_MAX_NEW_TOKENS
    from bench_quant_table import wer

    from wavq.evaluation import normalizer_for
    from wavq.runtime.audio import SAMPLE_RATE, load_audio

    load_wq_weights(tw.model, path)
    with quantized_inputs(tw.model, file_input_specs(path)):
        hyps = tw.transcribe([load_audio(u.path, SAMPLE_RATE) for u in utts])
    w, words = wer([u.text for u in utts], hyps)
    r = evaluate(load(path), utts[:check], {"max_new_tokens": SIM_MAX_NEW_TOKENS})
    norm = normalizer_for("whisper")
    same = sum(norm(h["hypothesis"]) == norm(t) for h, t in zip(r.hypotheses, hyps))
    with WqFile(path) as f:
        s = summarize(f)
        act = f.meta.get("quantization", {}).get("act_bits")
    return {
        "label": label,
        "options": ROWS[label],
        "engine": "transformers + activation hooks",
        "bits_per_weight": s.quantized_bpw if s.n_quantized else 32.0,
        "act_bits": act or 32,
        "wer": w / 100,
        "n_words": words,
        "n_utterances": len(utts),
        "runtime_same_text": f"{same}/{len(r.hypotheses)}",
        "macs_per_audio_second": r.macs_per_audio_second,
        "bitops_per_audio_second": r.bitops_per_audio_second,
        "float_bitops_per_audio_second": r.macs_per_audio_second * FLOAT_BITOPS_PER_MAC,
        "bitops_by_part": r.counts.bitops,
        "macs_by_part": r.counts.macs,
    }


def simulable(path: str) -> bool:
    """Whether the hooks can simulate the file: they round a layer's input as stored, so a rotated or input-scaled
    (smoothed where no preceding layer took the scales) layer, whose runtime input is transformed first, is not."""
    from bench_common import file_input_specs

    try:
        file_input_specs(path)
    except ValueError:
        return False
    return True


def table(by_subset: dict[str, list[dict]], header: dict) -> str:
    lines = [
        f"# Activation quantization, {header.get('model', DEFAULT_MODEL)} (WER, counted bit-operations)",
        "",
        f"Machine: {header['machine']}; {header['versions']}; {header['date']}.",
        f"Data: {header['data']}; greedy, max {MAX_NEW_TOKENS} new tokens.",
        f"Command: `{header['command']}`",
    ]
    # rows stored by earlier runs in the same workdir keep the command that measured them
    earlier = sorted({r.get("command") for rows in by_subset.values() for r in rows} - {header["command"], None})
    lines += [f"Rows measured earlier by: `{c}`" for c in earlier]
    lines += [
        "",
        "Bit-operations = counted MACs x weight bits x activation bits (attention scores float x float, 32 x 32).",
    ]
    simulated = [r for rows in by_subset.values() for r in rows if "engine" in r]
    if simulated:
        from bench_quant_table import MAX_NEW_TOKENS as SIM_MAX_NEW_TOKENS  # torch: only where sim rows exist

        lines.append(
            f"WER from: 'runtime' rows ran the numpy runtime (its integer path) on every utterance; 'sim' rows ran "
            f"{simulated[0]['engine']} (the float simulation of the integer path, same codes), with MACs and "
            "bit-operations counted by the runtime on the first utterances of each set, where 'runtime = sim' says "
            f"on how many its integer path gives the same normalized text. 'sim' rows and their runtime check "
            f"decode up to {SIM_MAX_NEW_TOKENS} new tokens."
        )
    for subset, rows in by_subset.items():
        n = rows[0]["n_utterances"] if rows else 0
        lines += ["", f"## {subset} ({n} utterances)", "", *subset_table(rows)]
        lines += targets({r["label"]: r for r in rows})
    return "\n".join(lines) + "\n"


def subset_table(rows: list[dict]) -> list[str]:
    lines = [
        "| recipe | bits/weight | act bits | WER % | WER from | G MACs/s audio | T bit-ops/s audio | vs f32 x f32 "
        "| scores | runtime = sim |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["bitops_per_audio_second"] / r["float_bitops_per_audio_second"]
        scores = r["bitops_by_part"][compute.ATTENTION_SCORES] / max(1, sum(r["bitops_by_part"].values()))
        lines.append(
            f"| {r['label']} | {r['bits_per_weight']:.2f} | {r['act_bits']} | {100 * r['wer']:.2f} | "
            f"{'sim' if 'engine' in r else 'runtime'} | "
            f"{r['macs_per_audio_second'] / 1e9:.3f} | {r['bitops_per_audio_second'] / 1e12:.3f} | 1/{1 / ratio:.1f} | "
            f"{100 * scores:.0f} % | {r.get('runtime_same_text', '')} |"
        )
    return lines


# (quantized row, its weight-only row, largest WER increase in percentage points)
WER_TARGETS = (("W8A8", "W8", 0.2), ("W4A8", "W4", 0.5))
BITOPS_TARGET = ("W4A8", 30)  # at most 1/30 of the f32 x f32 bit-operations per second of audio


def targets(rows: dict[str, dict]) -> list[str]:
    out = ["", "Targets:", ""]
    for label, base, limit in WER_TARGETS:
        if label in rows and base in rows:
            delta = 100 * (rows[label]["wer"] - rows[base]["wer"])
            verdict = "met" if delta <= limit else "NOT met"
            out.append(f"- {label} within +{limit} WER of {base}: {delta:+.2f} points, {verdict}.")
    label, factor = BITOPS_TARGET
    if label in rows:
        r = rows[label]
        ratio = r["float_bitops_per_audio_second"] / r["bitops_per_audio_second"]
        scores = r["bitops_by_part"][compute.ATTENTION_SCORES] / sum(r["bitops_by_part"].values())
        verdict = "met" if ratio >= factor else "NOT met"
        out.append(
            f"- {label} bit-operations at most 1/{factor} of f32 x f32: 1/{ratio:.1f}, {verdict}; the float x float "
            f"attention score products are {100 * scores:.0f} % of its bit-operations."
        )
    return out


def save(store: str, key: str, row: dict) -> None:
    """Add one row to the store, keeping rows other runs sharing the workdir stored meanwhile."""
    done = json.load(open(store)) if os.path.exists(store) else {}
    done[key] = row
    with open(store + ".tmp", "w") as f:
        json.dump(done, f, indent=1)
    os.replace(store + ".tmp", store)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", required=True, help="LibriSpeech-layout directory")
    ap.add_argument("--subsets", nargs="+", default=[""], help="subset folders under --data, e.g. test-clean")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances by id of each subset")
    ap.add_argument("--workdir", required=True, help="converted models and results.json")
    ap.add_argument("--calib", default=None, help="calibration audio for static scales and smoothing")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration utterances")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help="row labels to measure")
    ap.add_argument("--name", default="act_quant", help="output name under benchmarks/results")
    ap.add_argument(
        "--simulate",
        type=int,
        default=None,
        metavar="N",
        help="WER from transformers with the file's activation rounding as hooks (batched: fast enough for whole "
        "test sets); the runtime runs only the first N utterances, for MACs and its agreement with the simulation",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the tables from the rows already stored in <workdir>/results.json; measure nothing",
    )
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    calib = ["--calib", args.calib, "--calib-samples", str(args.calib_samples)] if args.calib else []
    command = "python benchmarks/bench_act_quant.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    store = os.path.join(args.workdir, "results.json")
    done = json.load(open(store)) if os.path.exists(store) else {}
    tw = None
    if args.simulate is not None and not args.report_only:
        from bench_quant_table import TorchWhisper

        tw = TorchWhisper(args.model)
    for subset in args.subsets:
        utts = [u for u in find_utterances(args.data, subset or None) if u.text is not None]
        utts = utts[: args.limit] if args.limit else utts
        for label in args.rows:
            key = f"{subset}/{label}"
            if key not in done and not args.report_only:
                path = convert(args.model, label, args.workdir, calib)
                if tw is None or not simulable(path):
                    done[key] = measure(label, path, utts)
                else:
                    done[key] = measure_simulated(label, path, utts, tw, args.simulate)
                done[key]["command"] = command
                save(store, key, done[key])
                print(f"{key}: WER {100 * done[key]['wer']:.2f} %", file=sys.stderr, flush=True)
    header = {
        "model": args.model,
        "machine": machine(),
        "versions": versions(),
        "date": datetime.date.today().isoformat(),
        "data": ", ".join(os.path.join(os.path.basename(os.path.normpath(args.data)), s) for s in args.subsets),
        "command": command,
    }
    done = json.load(open(store)) if os.path.exists(store) else {}
    by_subset = {s: [done[f"{s}/{label}"] for label in args.rows if f"{s}/{label}" in done] for s in args.subsets}
    with open(os.path.join(RESULTS, args.name + ".json"), "w") as f:
        json.dump({"header": header, "subsets": by_subset}, f, indent=1)
    with open(os.path.join(RESULTS, args.name + ".md"), "w") as f:
        f.write(table(by_subset, header))


if __name__ == "__main__":
    main()
