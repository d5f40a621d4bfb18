"""Word error rate of a .wq model on the long recordings of make_longform.py, one JSON record per (model, file).

    python benchmarks/bench_longform.py tiny.en-f32.wq tiny.en-rtn4.wq --label before
    python benchmarks/bench_longform.py --table > benchmarks/results/longform.md

Each record: label, model file, recording, WER against the concatenated LibriSpeech text, WER against
transformers' long-form output (the reference JSON), the runtime's segments (start, end, text) and seconds taken.
Records are appended to benchmarks/results/longform_reference/runs.jsonl (a run that stops part way keeps what it
finished); tables are drawn from that file.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_longform import DATA, LIBRISPEECH, RESULTS, build_audio  # noqa: E402

from wavq.evaluation import normalizer_for  # noqa: E402
from wavq.runtime import load  # noqa: E402

RUNS = RESULTS / "runs.jsonl"
LABELS = {"before": "fixed equal windows, no seeking", "after": "seek loop with timestamps (openai-whisper defaults)"}


def table() -> str:
    """Markdown: WER per recording and model, before and after, from the last record of each (label, model, file)."""
    last: dict[tuple[str, str, str], dict] = {}
    for line in RUNS.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        last[(r["recording"], r["model"], r["label"])] = r
    rows = [
        "| recording | model | label | WER vs LibriSpeech % | WER vs transformers long-form % | "
        "transformers long-form WER % | same, on this file's weights % | segments | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (rec, model, label), r in sorted(last.items(), key=lambda kv: (kv[1]["duration"], kv[0][1], kv[0][2])):
        rows.append(
            f"| {rec} ({r['duration']:.0f} s) | {model} | {label} | {r['wer_librispeech']} | "
            f"{r['wer_vs_transformers']} | {r['reference_wer_librispeech']} | {same_weights_wer(rec, model)} | "
            f"{len(r['segments'])} | {r['seconds']} |"
        )
    legend = "\n".join(f"- {k}: {v}" for k, v in LABELS.items())
    return "\n".join(rows) + "\n\n" + legend + "\n"


def same_weights_wer(recording: str, model_file: str) -> str:
    """WER against LibriSpeech of transformers' long-form output on a .wq file's own weights (make_longform.py
    --weights), or "" when that reference was not made; f32 files are the checkpoint itself."""
    import jiwer

    stem = pathlib.Path(model_file).stem
    paths = list(RESULTS.glob(f"{recording}.*.{stem}.json"))
    if not paths:
        return ""
    ref = json.loads(paths[0].read_text(encoding="utf-8"))
    norm = normalizer_for("whisper")
    return str(round(100 * jiwer.wer(norm(ref["reference"]), norm(ref["text"])), 2))


def references(model_name: str) -> list[pathlib.Path]:
    """Reference JSONs of one checkpoint (e.g. whisper-tiny.en), shortest recording first."""
    paths = [*DATA.glob(f"*.{model_name}.json"), *RESULTS.glob(f"*.{model_name}.json")]
    return sorted(paths, key=lambda p: json.loads(p.read_text(encoding="utf-8"))["duration"])


def main() -> None:
    import jiwer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=".wq files")
    parser.add_argument("--table", action="store_true", help="print the markdown table of runs.jsonl and stop")
    parser.add_argument("--checkpoint", default="whisper-tiny.en", help="which references to use")
    parser.add_argument("--label", help="e.g. before / after")
    parser.add_argument("--librispeech", default=str(LIBRISPEECH))
    parser.add_argument("--only", help="one recording name suffix, e.g. 60s, 3min, 10min")
    args = parser.parse_args()
    if args.table:
        print(table(), end="")
        return
    if not args.models or not args.label:
        parser.error("give .wq files and --label (or --table)")
    norm = normalizer_for("whisper")
    for path in references(args.checkpoint):
        ref = json.loads(path.read_text(encoding="utf-8"))
        if args.only and not ref["name"].endswith(args.only):
            continue
        audio = build_audio(args.librispeech, ref["utterances"])
        for model_path in args.models:
            model = load(model_path)
            t0 = time.perf_counter()
            result = model.transcribe(audio)
            seconds = time.perf_counter() - t0
            record = {
                "label": args.label,
                "model": pathlib.Path(model_path).name,
                "recording": ref["name"],
                "duration": ref["duration"],
                "wer_librispeech": round(100 * jiwer.wer(norm(ref["reference"]), norm(result.text)), 2),
                "wer_vs_transformers": round(100 * jiwer.wer(norm(ref["text"]), norm(result.text)), 2),
                "reference_wer_librispeech": round(100 * jiwer.wer(norm(ref["reference"]), norm(ref["text"])), 2),
                "segments": [[round(s.start, 2), round(s.end, 2), s.text] for s in result.segments],
                "seconds": round(seconds, 1),
            }
            with open(RUNS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(
                f"{record['label']} {record['model']} {record['recording']}: WER {record['wer_librispeech']} % "
                f"(transformers long-form {record['reference_wer_librispeech']} %), {record['seconds']} s"
            )


if __name__ == "__main__":
    main()
