"""Wav2Vec2-CTC speed and memory: the numpy runtime (float32 and 4-bit RTN) vs transformers, same machine, same run.

No Wav2Vec2 weights can be downloaded here, so the model is facebook/wav2vec2-base-960h's architecture
(Wav2Vec2Config() defaults: 12 layers, 768 wide, GroupNorm feature encoder, 95 M parameters) with random weights;
speed and memory do not depend on the weight values. Audio is real LibriSpeech speech (test-clean utterances
joined end to end) cut to each length.

Every (engine, length) pair runs in its own subprocess, so peak RSS (/proc VmHWM) is that engine's alone.
Each worker loads the model, runs a 1 s warm-up, then transcribes the clip once and reports wall time.
Long audio: both engines window audio longer than 60 s the same way (30 s windows, 5 s strides: wavq's
default and transformers' ASR pipeline with chunk_length_s=30); shorter audio runs in one pass.

    python benchmarks/bench_wav2vec2.py                 # writes benchmarks/results/wav2vec2.md
    python benchmarks/bench_wav2vec2.py --lengths 10,60
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_common import machine, versions

from wavq.evaluation import peak_rss_mb
from wavq.runtime.audio import SAMPLE_RATE

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBRISPEECH = os.path.join(ROOT, "..", "shared", "librispeech")
WINDOW_S = 30.0  # window length for audio longer than UNWINDOWED_MAX_S (wavq's default)
UNWINDOWED_MAX_S = 60.0
WARMUP_S = 1.0
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAOINSHRDLUCMWFGYPBVKJXQZ") + ["'"]
ENGINES = ("wavq-f32", "wavq-rtn4", "transformers")


# ------------------------------------------------------------------------------------------------ setup (parent)


def build_models(workdir: str) -> dict[str, str]:
    """A random base-960h-shaped checkpoint and its f32 / 4-bit RTN (group 128) conversions."""
    import torch
    import transformers

    import wavq.converter.wav2vec2  # noqa: F401  (registers the loader)
    from wavq.converter.export import convert
    from wavq.converter.quant.recipe import Recipe

    ckpt = os.path.join(workdir, "ckpt")
    paths = {
        "checkpoint": ckpt,
        "wavq-f32": os.path.join(workdir, "f32.wq"),
        "wavq-rtn4": os.path.join(workdir, "rtn4.wq"),
    }
    if not os.path.exists(os.path.join(ckpt, "model.safetensors")):
        os.makedirs(ckpt, exist_ok=True)
        torch.manual_seed(0)
        model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(vocab_size=len(VOCAB))).eval()
        model.save_pretrained(ckpt)
        with open(os.path.join(ckpt, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(VOCAB)}, f)
        transformers.Wav2Vec2CTCTokenizer(os.path.join(ckpt, "vocab.json")).save_pretrained(ckpt)
        transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True).save_pretrained(ckpt)
    if not os.path.exists(paths["wavq-f32"]):
        convert(ckpt, paths["wavq-f32"])
    if not os.path.exists(paths["wavq-rtn4"]):
        convert(ckpt, paths["wavq-rtn4"], Recipe(method="rtn", bits=4, group_size=128))
    return paths


def build_audio(workdir: str, seconds: float) -> str:
    """LibriSpeech test-clean speech joined and cut to `seconds`, saved as .npy (noise if the data is absent)."""
    path = os.path.join(workdir, f"audio_{seconds:g}s.npy")
    if os.path.exists(path):
        return path
    n = int(seconds * SAMPLE_RATE)
    pieces, total = [], 0
    try:
        from wavq.evaluation.datasets import find_utterances
        from wavq.runtime.audio import load_audio

        for utt in find_utterances(LIBRISPEECH, "test-clean"):
            if total >= n:
                break
            x = load_audio(utt.path)
            pieces.append(x)
            total += x.shape[0]
    except Exception:  # no dataset: the benchmark still measures speed and memory
        pieces = []
    audio = (
        np.concatenate(pieces)[:n]
        if total >= n
        else (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    )
    np.save(path, audio.astype(np.float32))
    return path


# ------------------------------------------------------------------------------------------------ worker (child)


def worker(engine: str, model_path: str, audio_path: str) -> dict:
    audio = np.load(audio_path)
    seconds = audio.shape[0] / SAMPLE_RATE
    warm = audio[: int(WARMUP_S * SAMPLE_RATE)]
    if engine.startswith("wavq"):
        from wavq.runtime import load

        model = load(model_path)
        model.transcribe(warm)
        load_rss = peak_rss_mb()
        start = time.perf_counter()
        text = model.transcribe(audio).text  # windows by itself beyond 60 s
        elapsed = time.perf_counter() - start
    else:
        import torch
        import transformers

        proc = transformers.Wav2Vec2Processor.from_pretrained(model_path)
        model = transformers.Wav2Vec2ForCTC.from_pretrained(model_path).eval()

        def run(x):
            if x.shape[0] > UNWINDOWED_MAX_S * SAMPLE_RATE:
                pipe = transformers.pipeline(
                    "automatic-speech-recognition",
                    model=model,
                    tokenizer=proc.tokenizer,
                    feature_extractor=proc.feature_extractor,
                )
                return pipe(x, chunk_length_s=WINDOW_S)["text"]
            with torch.inference_mode():
                values = proc(x, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
                ids = model(values).logits.argmax(-1)[0]
            return proc.decode(ids)

        run(warm)
        load_rss = peak_rss_mb()
        start = time.perf_counter()
        text = run(audio)
        elapsed = time.perf_counter() - start
    return {
        "engine": engine,
        "seconds": seconds,
        "elapsed": elapsed,
        "rtf": elapsed / seconds,
        "load_rss_mb": load_rss,
        "peak_rss_mb": peak_rss_mb(),
        "chars": len(text),
    }


# ------------------------------------------------------------------------------------------------ report


def write_report(rows: list[dict], sizes: dict[str, int], out: str, load: tuple[float, float]) -> None:
    lines = [
        "# Wav2Vec2-CTC: wavq runtime vs transformers",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Software: Python {platform.python_version()}, {versions()}",
        f"- Machine load (1-min load average) at start / end: {load[0]:.1f} / {load[1]:.1f}; anything above 0 "
        "means other processes shared the cores and wall times are inflated.",
        "- Model: facebook/wav2vec2-base-960h architecture (95 M parameters), random weights (no weights are "
        "downloadable here; speed and memory do not depend on them).",
        "- Audio: LibriSpeech test-clean speech joined to each length. Each row is its own process: load the model, "
        f"warm up on {WARMUP_S:g} s, transcribe once. Audio over {UNWINDOWED_MAX_S:g} s is windowed by both engines "
        f"({WINDOW_S:g} s windows, {WINDOW_S / 6:g} s strides: wavq's default, transformers' ASR pipeline "
        f"chunk_length_s={WINDOW_S:g}).",
        "- RTF = processing time / audio duration (lower is faster). Peak RSS = the process's maximum resident set "
        "(includes the Python interpreter, the libraries and the model); 'after load' is the peak after loading the "
        "model and the warm-up.",
        "- wavq weights stay memory-mapped and are dequantized per layer as used (the default `Weights`).",
        "",
        "| engine | file size | audio | time (s) | RTF | RSS after load (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{sizes[r['engine']] / 2**20:.0f} MB" if r["engine"] in sizes else "-"
        if "error" in r:
            lines.append(f"| {r['engine']} | {size} | {r['seconds']:g} s | failed: {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['engine']} | {size} | {r['seconds']:g} s | {r['elapsed']:.2f} | {r['rtf']:.3f} | "
            f"{r['load_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "transformers' file size is the checkpoint's model.safetensors (float32).", ""]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="10,60,300", help="audio lengths in seconds, comma separated")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {', '.join(ENGINES)}")
    ap.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "wavq-bench-wav2vec2"),
        help="where the random checkpoint, .wq files and audio are cached",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "wav2vec2.md"), help="markdown output")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "MODEL", "AUDIO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.workdir, exist_ok=True)
    load_start = os.getloadavg()[0]
    paths = build_models(args.workdir)
    sizes = {e: os.path.getsize(paths[e]) for e in ("wavq-f32", "wavq-rtn4")}
    sizes["transformers"] = os.path.getsize(os.path.join(paths["checkpoint"], "model.safetensors"))
    rows = []
    for seconds in [float(s) for s in args.lengths.split(",")]:
        audio = build_audio(args.workdir, seconds)
        for engine in args.engines.split(","):
            model = paths["checkpoint"] if engine == "transformers" else paths[engine]
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", engine, model, audio],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if proc.returncode == 0:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                row = {
                    "engine": engine,
                    "seconds": seconds,
                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120],
                }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    write_report(rows, sizes, args.out, (load_start, os.getloadavg()[0]))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
