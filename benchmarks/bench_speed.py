"""Speed of wavq against transformers f32 and CTranslate2 int8 on the same utterances, greedy decoding.

Every system runs in its own subprocess, one at a time (so peak RSS is that system's alone), with the same number
of threads; the reference (transformers f32 generate) is timed in the same run. wavq runs float32, 4-bit RTN
(group 128) and ~3.3-bit RTN (3 bits, group 64: 3 + 19 / 64 bits per weight with the float16 scale and 3-bit zero
point) in each memory setting (every weight kept = `cache=True`; a budget, default 150 MB; nothing kept =
low-memory), with and without the compiled kernel, one utterance at a time and in batches of 8.

    python benchmarks/bench_speed.py --model openai/whisper-base --n 100 --long 4

Needs the `bench` extra (ctranslate2) for the CTranslate2 row; it converts the model from the Hugging Face cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import machine, versions

from wavq.evaluation import peak_rss_mb
from wavq.runtime.audio import SAMPLE_RATE

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRISPEECH = os.path.join(HERE, "..", "..", "shared", "librispeech")
WARMUP_SAMPLES = 2 * SAMPLE_RATE  # 2 s of the first utterance, untimed
LONG_SECONDS = (20.0, 30.0)  # the "long" utterances: near a whole window, still short-form
BUDGET_MB = 150
LOADED = 3.0  # load average above which the table says the machine was busy
MEMORY = {"cache": {"cache": True}, f"{BUDGET_MB}MB": {"max_memory": BUDGET_MB * 10**6}, "lowmem": {}}
# .wq variants: RTN converts in seconds without calibration; (bits, group size)
QUANTIZED = {"rtn4": (4, 128), "rtn3": (3, 64)}


def systems(quick: bool) -> list[dict]:
    """Every configuration measured: kind, .wq variant, memory setting, kernel on, batch size."""
    out = [{"name": "transformers-f32", "kind": "transformers"}, {"name": "ct2-int8", "kind": "ct2"}]
    out.append({"name": "wavq-f32", "kind": "wavq", "variant": "f32", "memory": "lowmem", "kernel": False, "batch": 1})
    for variant in QUANTIZED:
        for memory in MEMORY:
            for kern in (False, True):
                for batch in (1, 8):
                    if quick and batch == 8 and memory == "cache":
                        continue
                    name = f"wavq-{variant}-{memory}-{'kernel' if kern else 'numpy'}-b{batch}"
                    out.append(
                        {"name": name, "kind": "wavq", "variant": variant, "memory": memory, "kernel": kern,
                         "batch": batch}
                    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------- worker


def worker(job_path: str, result_path: str) -> None:
    import numpy as np
    import soundfile

    with open(job_path) as f:
        job = json.load(f)
    system, threads = job["system"], job["threads"]
    items = [(u["id"], soundfile.read(u["path"], dtype="float32")[0]) for u in job["utterances"]]
    transcribe = _engine(system, job, threads)
    transcribe([items[0][1][:WARMUP_SAMPLES]])
    batch = system.get("batch", 1)
    hyps, compute_s = {}, 0.0
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        t = time.perf_counter()
        texts = transcribe([a for _, a in chunk])
        compute_s += time.perf_counter() - t
        hyps.update({uid: text for (uid, _), text in zip(chunk, texts)})
    audio_s = float(np.sum([len(a) for _, a in items])) / SAMPLE_RATE
    with open(result_path, "w") as f:
        json.dump({"compute_s": compute_s, "audio_s": audio_s, "peak_rss_mib": peak_rss_mb(), "hyps": hyps}, f)


def _engine(system: dict, job: dict, threads: int):
    """A function: list of audio arrays -> list of texts."""
    if system["kind"] == "wavq":
        from wavq.runtime import load

        model = load(job["paths"][system["variant"]], **MEMORY[system["memory"]])
        batch = system["batch"]
        return lambda audio: [r.text for r in model.transcribe(list(audio), batch_size=batch, without_timestamps=True)]
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(job["model"])

    def features(audio):
        return processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features

    if system["kind"] == "ct2":
        import ctranslate2

        model = ctranslate2.models.Whisper(job["ct2_dir"], device="cpu", compute_type="int8", intra_threads=threads)
        special = ["<|startoftranscript|>", "<|notimestamps|>"]
        if ".en" not in job["model"]:  # multilingual: English transcription (transformers detects it)
            special[1:1] = ["<|en|>", "<|transcribe|>"]
        prompt = processor.tokenizer.convert_tokens_to_ids(special)

        def ct2(audio):
            out = []
            for a in audio:
                res = model.generate(ctranslate2.StorageView.from_array(features([a])), [prompt], beam_size=1)
                out.append(processor.tokenizer.decode(res[0].sequences_ids[0], skip_special_tokens=True).strip())
            return out

        return ct2
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.set_num_threads(threads)
    hf = WhisperForConditionalGeneration.from_pretrained(job["model"], dtype=torch.float32).eval()

    def generate(audio):
        out = []
        for a in audio:
            with torch.no_grad():
                tokens = hf.generate(torch.from_numpy(features([a])))
            out.append(processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip())
        return out

    return generate


# ------------------------------------------------------------------------------------------------- parent


def utterances(n: int, n_long: int) -> list:
    import soundfile

    from wavq.evaluation.datasets import find_utterances, spread

    utts = [u for u in find_utterances(LIBRISPEECH, "test-clean") if u.text]
    seconds = {u.id: soundfile.info(u.path).duration for u in utts}
    long = [u for u in utts if LONG_SECONDS[0] <= seconds[u.id] <= LONG_SECONDS[1]]
    short = [u for u in utts if seconds[u.id] < LONG_SECONDS[0]]
    return spread(short, n) + (spread(long, n_long) if n_long else [])  # spread(x, 0) would be all of x


def prepare(model: str, workdir: str) -> dict:
    from wavq.converter.export import convert
    from wavq.converter.quant.recipe import Recipe

    stem = os.path.join(workdir, model.replace("/", "--"))
    paths = {variant: f"{stem}.{variant}.wq" for variant in ("f32", *QUANTIZED)}
    for variant, path in paths.items():
        if not os.path.exists(path):
            bits, group = QUANTIZED.get(variant, (0, 0))
            convert(model, path, Recipe(method="rtn", bits=bits, group_size=group) if bits else None)
    ct2_dir = stem + ".ct2-int8"
    if not os.path.exists(ct2_dir):
        try:
            import ctranslate2

            ctranslate2.converters.TransformersConverter(model).convert(ct2_dir, quantization="int8")
        except ImportError:
            ct2_dir = ""
    return {"paths": paths, "ct2_dir": ct2_dir}


def run(system: dict, job: dict, workdir: str, threads: int) -> dict:
    job_path, result_path = os.path.join(workdir, "job.json"), os.path.join(workdir, "result.json")
    with open(job_path, "w") as f:
        json.dump({**job, "system": system, "threads": threads}, f)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.update({v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    env["WAVQ_KERNEL_THREADS"] = str(threads)
    if system["kind"] == "wavq" and not system["kernel"]:
        env["WAVQ_NO_KERNEL"] = "1"
    else:
        env.pop("WAVQ_NO_KERNEL", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", job_path, result_path]
    subprocess.run(cmd, check=True, env=env)
    with open(result_path) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="openai/whisper-base")
    p.add_argument("--n", type=int, default=100, help="test-clean utterances under 20 s")
    p.add_argument("--long", type=int, default=4, help="test-clean utterances of 20-30 s")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="names of the systems to run (default: all)")
    p.add_argument("--quick", action="store_true", help="skip batch 8 with every weight kept")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "wavq-bench-speed"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "speed"))
    p.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    os.makedirs(args.workdir, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    utts = utterances(args.n, args.long)
    job = {"model": args.model, "utterances": [{"id": u.id, "path": u.path} for u in utts], **prepare(args.model,
           args.workdir)}  # fmt: skip
    chosen = systems(args.quick)
    if args.only:  # in the order given
        chosen = [next(x for x in chosen if x["name"] == name) for name in args.only]
    rows: list[dict] = []
    for system in chosen:
        if system["kind"] == "ct2" and not job["ct2_dir"]:
            continue
        r = run(system, job, args.workdir, args.threads)
        rows.append({**system, **r, "rtf": r["compute_s"] / r["audio_s"], "file_bytes": _size(system, job)})
        print(f"{system['name']:<36} RTF {rows[-1]['rtf']:.3f}  peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        _write(args.out, _meta(args, started, load_before, utts, rows), _compared(rows))  # a table after each system


def _compared(rows: list[dict]) -> list[dict]:
    """Rows with their time ratio to transformers f32 and how many texts equal its texts."""
    ref = next((r for r in rows if r["name"] == "transformers-f32"), None)
    out = []
    for r in rows:
        same = None if ref is None else sum(r["hyps"].get(k) == v for k, v in ref["hyps"].items())
        out.append(
            {**r, "ratio": r["compute_s"] / ref["compute_s"] if ref else None, "same_text_as_transformers": same}
        )
    return out


def _meta(args, started, load_before: float, utts: list, rows: list) -> dict:
    return {
        "model": args.model,
        "command": "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "threads": args.threads,
        "n_utterances": len(utts),
        "n_long": args.long,
        "audio_seconds": rows[0]["audio_s"] if rows else 0,
    }


def _size(system: dict, job: dict) -> int | None:
    if system["kind"] == "wavq":
        return os.path.getsize(job["paths"][system["variant"]])
    if system["kind"] == "ct2":
        return os.path.getsize(os.path.join(job["ct2_dir"], "model.bin"))
    return None  # transformers: the checkpoint in the Hugging Face cache (safetensors f32)


def _write(out: str, meta: dict, rows: list) -> None:
    tag = meta["model"].split("/")[-1]
    data = {"meta": meta, "rows": [{k: v for k, v in r.items() if k != "hyps"} for r in rows]}
    prior = {}
    if os.path.exists(out + ".json"):
        with open(out + ".json") as f:
            prior = json.load(f)
    prior[tag] = data
    with open(out + ".json", "w") as f:
        json.dump(prior, f, indent=1)
    lines = [f"# Speed: wavq vs transformers f32 and CTranslate2 int8 ({len(prior)} model(s))", ""]
    for d in prior.values():
        m = d["meta"]
        lines += [
            f"## {m['model']}",
            "",
            f"- command: `{m['command']}`",
            f"- machine: {m['machine']}; {m['versions']}; {m['threads']} threads",
            f"- date: {m['started']} to {m['finished']} UTC; load average before/after: "
            f"{m['load_average_before_after'][0]} / {m['load_average_before_after'][1]}",
            f"- {m['n_utterances']} test-clean utterances ({m['n_long']} of 20-30 s), {m['audio_seconds']:.0f} s "
            "of audio, greedy; each system in its own subprocess, one at a time",
            *(
                [
                    "- **the machine was shared and heavily loaded during this run (2 cores, load average above): "
                    "times and ratios are indicative only**"
                ]
                if max(m["load_average_before_after"]) > LOADED
                else []
            ),
            "",
            "| system | memory | kernel | batch | RTF | time / transformers f32 | peak RSS MiB | file MB | "
            "same text as transformers |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in d["rows"]:
            ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
            size = "" if r.get("file_bytes") is None else f"{r['file_bytes'] / 1e6:.1f}"
            kern = "" if r["kind"] != "wavq" else ("yes" if r["kernel"] else "no")
            lines.append(
                f"| {r['name']} | {r.get('memory', '')} | {kern} | {r.get('batch', 1)} | {r['rtf']:.3f} | {ratio} | "
                f"{r['peak_rss_mib']:.0f} | {size} | {r.get('same_text_as_transformers', '')}/{m['n_utterances']} |"
            )
        lines.append("")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
