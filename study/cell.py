"""One cell of a sweep: convert (or reuse the cached file), evaluate, return its row. Never raises for the cell's
own failures: a failing cell becomes a row with status "error" and the message, and the sweep goes on.

Conversion and evaluation each run in a fresh interpreter (child.py), so the conversion's time and peak memory
are its own, and no torch state (threads, caches, seeds) leaks from one cell into the next.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from .baselines import CONVERTED_BASELINES
from .grid import Cell

CONVERSION_LOG = "conversions.log"  # one line per conversion actually run: what a resumed sweep did not redo
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class CellError(RuntimeError):
    """A conversion or evaluation that failed; the message is the child's one-line error."""


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("wavq", "numpy", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_child(stage: str, request: dict, threads: int) -> tuple[dict, float, float]:
    """Run `python -m wavq.study.child STAGE` on `request`: its reply, wall seconds and peak RSS in MiB."""
    env = dict(os.environ, **{v: str(threads) for v in _THREAD_VARS})
    with tempfile.TemporaryDirectory(prefix="wavq-cell-") as tmp:
        req, rep = os.path.join(tmp, "request.json"), os.path.join(tmp, "reply.json")
        with open(req, "w", encoding="utf-8") as f:
            json.dump({**request, "threads": threads}, f)
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = subprocess.Popen([sys.executable, "-m", "wavq.study.child", stage, req, rep], env=env, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.perf_counter() - t0
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace").strip()
        if not os.path.exists(rep):
            last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
            raise CellError(f"{stage} failed: {last}")
        with open(rep, encoding="utf-8") as f:
            reply = json.load(f)
    if "error" in reply:
        raise CellError(f"{stage} failed: {reply['error']}")
    peak = usage.ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else usage.ru_maxrss / 1024
    return reply, seconds, peak


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def converted(cell: Cell, cache_dir: str, threads: int) -> tuple[str, dict]:
    """The cell's .wq file, converted now or found in the cache, and its conversion record."""
    key = cell.conversion_key
    suffix = ".ct2" if cell.baseline else ".wq"  # a converted baseline is CTranslate2's model directory
    wq, record_path = os.path.join(cache_dir, key + suffix), os.path.join(cache_dir, key + ".json")
    if os.path.exists(wq) and os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            return wq, {**json.load(f), "cached": True}
    os.makedirs(cache_dir, exist_ok=True)
    request = {"model": cell.model, "recipe": cell.recipe, "calib": cell.calib, "baseline": cell.baseline, "output": wq}
    reply, seconds, peak = run_child("convert", request, threads)
    record = {
        "conversion_key": key,
        "convert_seconds": seconds,
        "convert_peak_rss_mib": peak,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **reply,
    }
    _write_json(record_path, record)  # after the .wq: a record always has its file
    with open(os.path.join(cache_dir, CONVERSION_LOG), "a", encoding="utf-8") as f:
        f.write(f"{record['converted_at']} {key} {cell.model} {cell.label}\n")
    return wq, {**record, "cached": False}


def run_cell(cell: Cell, cache_dir: str, threads: int = 1) -> dict:
    """The cell's row (status "ok" or "error")."""
    row: dict = {
        "cell": cell.id,
        "label": cell.label,
        "model": cell.model,
        "kind": cell.baseline or "wavq",
        "recipe": cell.recipe,
        "macs_per_audio_second": None,  # compute accounting: filled when the evaluation layer reports it
        "bitops_per_audio_second": None,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "threads": threads,
        "provenance": {"source": "sweep"},
    }
    sets = [{"name": s.name, "path": s.path, "limit": s.limit} for s in cell.sets]
    try:
        if cell.baseline and cell.baseline not in CONVERTED_BASELINES:
            request = {"model": cell.model, "baseline": cell.baseline, "sets": sets}
        else:
            path, record = converted(cell, cache_dir, threads)
            row.update(record)
            request = {"model": cell.model, "baseline": cell.baseline, "model_path": path, "sets": sets}
        reply, _, peak = run_child("evaluate", {**request, "max_new_tokens": cell.max_new_tokens}, threads)
    except CellError as e:
        return {**row, "status": "error", "error": str(e)}
    row.update(reply)
    row["peak_rss_mib"] = peak
    audio = sum(s["audio_seconds"] for s in reply["sets"].values())
    row["rtf"] = sum(s["compute_seconds"] for s in reply["sets"].values()) / audio if audio else None
    return {**row, "status": "ok", "error": None}
