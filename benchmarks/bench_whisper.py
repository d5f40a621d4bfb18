"""Whisper accuracy, speed and memory: the numpy runtime (float32, 4-bit RTN) vs transformers, same machine, same run.

For each model (default openai/whisper-tiny.en and openai/whisper-base) on LibriSpeech test-clean:
- WER of transformers f32 greedy generate() and of wavq f32 / 4-bit RTN (group 128) greedy decoding, with
  whisper-normalizer's EnglishTextNormalizer on references and hypotheses (wavq.evaluation.score, as `wavq eval`);
- the share of utterances whose wavq f32 transcript is identical (raw text) to transformers';
- real-time factor (compute seconds / audio seconds; feature extraction and decoding included, file reading
  excluded), model load time, and peak RSS (VmHWM of the worker process).

Every engine runs in its own subprocesses, so peak RSS is that engine's alone. The machine may be shared, so the
utterances are split into chunks and the engines take turns chunk by chunk: a burst of load from elsewhere hits
all engines alike. Each worker loads its model, warms up on the first 2 s of its first utterance (untimed), then
transcribes its chunk one utterance at a time (batch size 1, greedy, no timestamps).

    python benchmarks/bench_whisper.py                      # all 400 test-clean utterances, both models
    python benchmarks/bench_whisper.py --limit 100 --models openai/whisper-tiny.en
--limit N takes N utterances evenly spaced over the sorted ids (so every speaker is represented;
wavq.evaluation.datasets.spread).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from bench_common import machine, versions

from wavq.evaluation import peak_rss_mb
from wavq.runtime.audio import SAMPLE_RATE

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBRISPEECH = os.path.join(ROOT, "..", "shared", "librispeech")
WARMUP_SAMPLES = 2 * SAMPLE_RATE  # 2 s of the first utterance, untimed
DEFAULT_MODELS = ("openai/whisper-tiny.en", "openai/whisper-base")
# engine -> (kind, .wq variant, Weights cache flag)
ENGINES = {
    "transformers-f32": ("transformers", None, None),
    "wavq-f32": ("wavq", "f32", False),  # default mode: float32 weights used straight from the memory map
    "wavq-rtn4": ("wavq", "rtn4", True),  # fast mode: dequantized once, kept
    "wavq-rtn4-lowmem": ("wavq", "rtn4", False),  # default mode: dequantized layer by layer on every use
    # the same 4-bit RTN with --rotate: the tensors whose weight error a block Hadamard rotation lowers are stored
    # rotated (SPEC.md 5.4), which costs the runtime a rotation of each decoding step's inputs
    "wavq-rtn4-rotated": ("wavq", "rtn4rot", True),
    "wavq-rtn4-rotated-lowmem": ("wavq", "rtn4rot", False),
}
VARIANTS = {
    "f32": None,
    "rtn4": dict(method="rtn", bits=4, group_size=128),
    "rtn4rot": dict(method="rtn", bits=4, group_size=128, rotate=True),
}


# ------------------------------------------------------------------------------------------------- worker


def _cpu_seconds() -> float:
    """User + system CPU time of every thread of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker(args) -> None:
    import soundfile

    with open(args.job) as f:
        job = json.load(f)
    kind, _, cache = ENGINES[job["engine"]]
    started = time.perf_counter()
    if kind == "transformers":
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(job["model"], dtype=torch.float32).eval()
        processor = WhisperProcessor.from_pretrained(job["model"])

        def transcribe(audio):
            feats = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            with torch.no_grad():
                tokens = model.generate(feats)
            return processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
    else:
        from wavq.runtime import load

        model = load(job["path"], cache=cache)

        def transcribe(audio):
            return model.transcribe(audio, without_timestamps=True).text

    load_s = time.perf_counter() - started

    items = [(u["id"], soundfile.read(u["path"], dtype="float32")[0]) for u in job["utterances"]]
    t = time.perf_counter()
    transcribe(items[0][1][:WARMUP_SAMPLES])
    warmup_s = time.perf_counter() - t
    hyps, compute_s, audio_s = {}, 0.0, 0.0
    cpu0 = _cpu_seconds()
    for uid, audio in items:
        t = time.perf_counter()
        hyps[uid] = transcribe(audio)
        compute_s += time.perf_counter() - t
        audio_s += len(audio) / SAMPLE_RATE
    cpu_s = _cpu_seconds() - cpu0
    with open(args.result, "w") as f:
        json.dump(
            {
                "load_s": load_s,
                "warmup_s": warmup_s,
                "compute_s": compute_s,
                "cpu_s": cpu_s,
                "audio_s": audio_s,
                "peak_rss_mib": peak_rss_mb(),
                "hyps": hyps,
            },
            f,
        )


# ------------------------------------------------------------------------------------------------- parent


def convert_models(model: str, workdir: str, needed: set[str]) -> dict[str, str]:
    from wavq.converter.export import convert
    from wavq.converter.quant.recipe import Recipe

    paths = {}
    for variant in sorted(needed):
        path = os.path.join(workdir, f"{model.replace('/', '--')}.{variant}.wq")
        if not os.path.exists(path):
            recipe = None if VARIANTS[variant] is None else Recipe(**VARIANTS[variant])
            convert(model, path, recipe)
        paths[variant] = path
    return paths


def run_worker(engine: str, model: str, path: str | None, utts: list, workdir: str) -> dict:
    job = os.path.join(workdir, "job.json")
    result = os.path.join(workdir, "result.json")
    with open(job, "w") as f:
        json.dump(
            {
                "engine": engine,
                "model": model,
                "path": path,
                "utterances": [{"id": u.id, "path": u.path} for u in utts],
            },
            f,
        )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", "--job", job, "--result", result], check=True, env=env
    )
    with open(result) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated hub ids or local dirs")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    p.add_argument("--subset", default="test-clean", help="LibriSpeech subset under --data")
    p.add_argument("--data", default=LIBRISPEECH, help="LibriSpeech root")
    p.add_argument("--limit", type=int, default=None, help="evenly spaced utterances to use (default: all)")
    p.add_argument(
        "--lowmem-limit",
        type=int,
        default=20,
        help="utterances for the -lowmem engines (dequantize every step: slow); 0 skips them",
    )
    p.add_argument("--chunk", type=int, default=10, help="utterances per worker turn")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "wavq-bench-whisper"),
        help="where converted models and worker files go",
    )
    p.add_argument("--output", default=os.path.join(HERE, "results", "whisper.md"), help="markdown table to write")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wavq.evaluation import score
    from wavq.evaluation.datasets import find_utterances, spread

    os.makedirs(args.workdir, exist_ok=True)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        p.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
    if args.lowmem_limit == 0:
        engines = [e for e in engines if not e.endswith("-lowmem")]
    all_utts = find_utterances(args.data, args.subset)
    utts = spread(all_utts, args.limit)
    norm_name = "corpus WER (jiwer) after whisper-normalizer's EnglishTextNormalizer (wavq.evaluation.score)"
    load_start = os.getloadavg()
    started = datetime.datetime.now()
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        paths = convert_models(model, args.workdir, {ENGINES[e][1] for e in engines if ENGINES[e][1]})
        results = {
            e: {
                "load_s": [],
                "warmup_s": [],
                "compute_s": 0.0,
                "cpu_s": 0.0,
                "audio_s": 0.0,
                "peak_rss_mib": 0.0,
                "hyps": {},
            }
            for e in engines
        }
        lowmem_ids = {u.id for u in spread(utts, args.lowmem_limit)}
        for c in range(0, len(utts), args.chunk):
            chunk = utts[c : c + args.chunk]
            for e in engines:
                part = [u for u in chunk if u.id in lowmem_ids] if e.endswith("-lowmem") else chunk
                if not part:
                    continue
                r = run_worker(e, model, paths.get(ENGINES[e][1]), part, args.workdir)
                acc = results[e]
                acc["load_s"].append(r["load_s"])
                acc["warmup_s"].append(r["warmup_s"])
                acc["compute_s"] += r["compute_s"]
                acc["cpu_s"] += r["cpu_s"]
                acc["audio_s"] += r["audio_s"]
                acc["peak_rss_mib"] = max(acc["peak_rss_mib"], r["peak_rss_mib"])
                acc["hyps"].update(r["hyps"])
                print(
                    f"{model} {e}: {len(acc['hyps'])} utterances, RTF {acc['compute_s'] / acc['audio_s']:.3f}",
                    file=sys.stderr,
                )
        text = {u.id: u.text for u in utts}
        hf = results.get("transformers-f32", {}).get("hyps", {})
        for e in engines:
            acc = results[e]
            ids = sorted(acc["hyps"])
            same = (sum(acc["hyps"][i] == hf[i] for i in ids if i in hf) / len(ids)) if hf and ids else None
            rows.append(
                {
                    "model": model,
                    "engine": e,
                    "n": len(ids),
                    "audio_s": acc["audio_s"],
                    "wer": 100 * score([text[i] for i in ids], [acc["hyps"][i] for i in ids], "whisper")[0],
                    "same": same,
                    "rtf": acc["compute_s"] / acc["audio_s"],
                    "cpu_rtf": acc["cpu_s"] / acc["audio_s"],
                    "load_s": sorted(acc["load_s"])[len(acc["load_s"]) // 2],
                    "peak_rss_mib": acc["peak_rss_mib"],
                    "size_mib": os.path.getsize(paths[ENGINES[e][1]]) / 2**20 if ENGINES[e][1] else None,
                }
            )
        with open(os.path.join(args.workdir, f"{model.replace('/', '--')}.hyps.json"), "w") as f:
            json.dump({e: results[e]["hyps"] for e in engines}, f, indent=1)
        # rewritten after every model, so a long run interrupted later still leaves the finished models' rows
        write_table(
            args,
            rows,
            norm_name,
            started,
            datetime.datetime.now(),
            load_start,
            os.getloadavg(),
            len(all_utts),
            len(utts),
        )


def write_table(args, rows, norm_name, started, finished, load_start, load_end, n_all, n_used) -> None:
    lines = [
        "# Whisper: wavq numpy runtime vs transformers",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} to {finished:%H:%M}",
        f"- Machine: {machine()}; {versions()}",
        f"- Load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in load_start)}, at end "
        f"{'/'.join(f'{x:.1f}' for x in load_end)} (the machine is shared; engines alternate in chunks of "
        f"{args.chunk} utterances so load from elsewhere hits all of them alike)",
        f"- Data: LibriSpeech {args.subset}, {n_used} of {n_all} utterances"
        + (f" (--limit {args.limit}, evenly spaced over the sorted ids)" if n_used < n_all else "")
        + f"; the -lowmem engines on {min(args.lowmem_limit, n_used)} of them",
        f"- WER normalisation: {norm_name}. Greedy decoding, no timestamps, batch size 1, float32 compute.",
        "- RTF = compute seconds / audio seconds (features + encoder + decoding; file reading excluded), "
        "after an untimed 2-s warm-up; CPU s / audio s = user + system CPU time of all the worker's threads over "
        "the same span (less sensitive to other load than wall time; spin-waiting threads count). "
        "Load = median model load time per worker. Peak RSS = VmHWM "
        "of the worker process (own subprocess per engine; includes the Python interpreter and, for "
        "transformers, torch).",
        "- wavq-f32 and the -lowmem engines use the default Weights mode (weights memory-mapped, dequantized as "
        "used); wavq-rtn4 and wavq-rtn4-rotated use Weights(cache=True). -rotated: converted with --rotate "
        "(weights stored under a block Hadamard rotation where that lowers their error; the low-memory mode "
        "rotates each decoding step's inputs instead).",
        "- Command: `python benchmarks/bench_whisper.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| model | engine | utts | audio s | WER % | same text as transformers | RTF | CPU s / audio s | load s "
        "| peak RSS MiB | file MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        same = "—" if r["same"] is None or r["engine"] == "transformers-f32" else f"{100 * r['same']:.1f} %"
        size = "—" if r["size_mib"] is None else f"{r['size_mib']:.1f}"
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['n']} | {r['audio_s']:.0f} | {r['wer']:.2f} | {same} "
            f"| {r['rtf']:.3f} | {r['cpu_rtf']:.3f} | {r['load_s']:.2f} | {r['peak_rss_mib']:.0f} | {size} |"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
