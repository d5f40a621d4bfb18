"""x @ W^T for whisper-base-shaped quantized weights: numpy (dequantize, then BLAS) vs a cached float32 weight vs
the compiled kernel (runtime/kernel.py), at decoding (M = 1, 5 rows: greedy and 5 beams) and encoder (M = 1500
frames) row counts.

Weights are random (speed does not depend on their values), RTN-quantized in groups of 64, symmetric. Each cell is
the best wall time of repeated calls after one untimed call (the best, not the median: the machine may be shared).
The numpy engines use numpy's BLAS with its threads (OPENBLAS_NUM_THREADS); the kernel columns say theirs.

With --integer, the products of weights with an activation spec (runtime/intlinear.py) instead: numpy int_linear
vs the kernel's integer products (intlinear.packed_int_linear) vs the kernel's float product on the same codes,
at 8 and 4 bits, dynamic 8-bit activations, the engines timed in turn within every round (interleaved).

    python benchmarks/bench_kernel.py                      # writes benchmarks/results/kernel.md
    python benchmarks/bench_kernel.py --integer            # writes benchmarks/results/kernel_int.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable

import numpy as np
from bench_common import machine, versions

from wavq.formats import codecs
from wavq.formats.activation import ActivationSpec
from wavq.runtime import kernel
from wavq.runtime.intlinear import int_linear, packed_int_linear

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(512, 512), (2048, 512), (512, 2048), (51865, 512)]  # (out, in): attention, fc1, fc2, output embedding
ROWS = [1, 5, 8, 16, 1500]
BITS = [4, 3]
GROUP = 64
MIN_SECONDS = 0.3  # per cell: repeat until this much time has been spent
MIN_CALLS = 3
# The output embedding only ever meets a decoding step's few rows; an encoder-sized product with it is not a real case.
SKIP = {((51865, 512), 1500)}


def best_ms(fn: Callable[[], object]) -> float:
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - start < MIN_SECONDS:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def best_ms_interleaved(fns: list[Callable[[], object]], clock: Callable[[], float]) -> list[float]:
    """best_ms for several calls on `clock`, timed one after another in every round, so load that comes and goes on
    a shared machine reaches them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < MIN_CALLS or time.perf_counter() - start < MIN_SECONDS * len(fns):
        for fn, ts in zip(fns, times):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [min(ts) * 1e3 for ts in times]


ENGINES = ["numpy dequantize + matmul", "cached float32 matmul", "kernel, 1 thread", "kernel, 2 threads", "kernel int8"]


def with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        os.environ[kernel.THREADS_ENV] = str(n)
        try:
            return fn()
        finally:
            del os.environ[kernel.THREADS_ENV]

    return call


def engines(x: np.ndarray, t: kernel.PackedTensor, w: np.ndarray) -> list[Callable[[], object]]:
    """The calls timed, in the order of ENGINES."""

    def numpy_dequantize():
        return x @ codecs.dequantize_packed(t.codes, t.scales, t.zeros, t.bits, t.cols, t.group_size).T

    return [
        numpy_dequantize,
        lambda: x @ w.T,
        with_threads(1, lambda: kernel.matmul(x, t)),
        with_threads(2, lambda: kernel.matmul(x, t)),
        with_threads(1, lambda: kernel.matmul_int8(x, t)),
    ]


def run() -> list[list[str]]:
    rng = np.random.default_rng(0)
    table = []
    for rows, cols in SHAPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        for bits in BITS:
            qt, _ = codecs.quantize(w, bits, GROUP, True)
            t = kernel.PackedTensor.from_quantized(qt)
            wq = kernel.dequantize(t)
            for m in ROWS:
                if ((rows, cols), m) in SKIP:
                    continue
                x = rng.standard_normal((m, cols)).astype(np.float32)
                cells = [f"{rows}x{cols}", str(bits), str(m)]
                cells += [f"{best_ms(fn):.2f}" for fn in engines(x, t, wq)]
                table.append(cells)
                print(" | ".join(cells), file=sys.stderr, flush=True)
    return table


INT_ENGINES = ["numpy int_linear", "kernel int_linear", "kernel float matmul"]
INT_ROWS = [1, 8, 1500]
INT_BITS = [8, 4]
INT_ACT = ActivationSpec(8)  # dynamic per-row 8-bit activations, as wavq-convert --act-bits 8 writes them
INT_GROUP = 128  # wavq-convert's default group size, asymmetric by default: what its --act-bits files hold
INT_SYMMETRIC = False


def int_engines(x: np.ndarray, qt: codecs.QuantizedTensor, t: kernel.PackedTensor) -> list[Callable[[], object]]:
    """The calls timed, in the order of INT_ENGINES."""
    return [
        lambda: int_linear(x, qt, INT_ACT),
        with_threads(1, lambda: packed_int_linear(x, t, INT_ACT)),
        with_threads(1, lambda: kernel.matmul(x, t)),
    ]


def run_integer() -> list[list[str]]:
    """The integer path's rows: numpy int_linear on the unpacked codes, the kernel's integer products on the
    packed ones (both including the activation quantization and the rescale), and kernel.matmul on the same
    packed codes with float inputs."""
    rng = np.random.default_rng(0)
    table = []
    for rows, cols in SHAPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        for bits in INT_BITS:
            qt, _ = codecs.quantize(w, bits, INT_GROUP, INT_SYMMETRIC)
            t = kernel.PackedTensor.from_quantized(qt)
            for m in INT_ROWS:
                if ((rows, cols), m) in SKIP:
                    continue
                x = rng.standard_normal((m, cols)).astype(np.float32)
                times = best_ms_interleaved(int_engines(x, qt, t), time.process_time)
                cells = [f"{rows}x{cols}", str(bits), str(m)] + [f"{ms:.2f}" for ms in times]
                table.append(cells)
                print(" | ".join(cells), file=sys.stderr, flush=True)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--integer", action="store_true", help="time the integer path (writes kernel_int.md)")
    ap.add_argument("--output", default=None, help="table to write (default: results/kernel.md or kernel_int.md)")
    args = ap.parse_args()
    output = args.output or os.path.join(HERE, "results", "kernel_int.md" if args.integer else "kernel.md")
    if not kernel.available():
        sys.exit(f"bench_kernel: {kernel.kernel_status()}; build it with `pip install -e .` and a C compiler")
    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    table = run_integer() if args.integer else run()
    load1 = os.getloadavg()
    blas = f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} " if "OPENBLAS_NUM_THREADS" in os.environ else ""
    flag = " --integer" if args.integer else ""
    if args.integer:
        title = "# Integer products of act-quant weights: numpy int_linear vs the compiled kernel"
        header = ["weight (out x in)", "bits", "rows M"] + INT_ENGINES
        notes = [
            f"- Weights: random, RTN, asymmetric, groups of {INT_GROUP} (wavq-convert's defaults); activations: "
            f"{INT_ACT.bits}-bit dynamic per row. "
            "Times: best-of-repeats CPU milliseconds (process time) per call of x @ W^T (x float32, M rows), "
            "activation quantization and output included; every engine runs on one thread, so its CPU time is its "
            "work, which other jobs on the shared machine do not inflate as they do wall time; the three engines of a "
            "row were timed in turn in every round.",
            "- numpy int_linear = runtime/intlinear.int_linear on the unpacked codes (exact float32 BLAS blocks); "
            "kernel int_linear = intlinear.packed_int_linear (kernel.code_products: weight tiles unpacked once per "
            "call, exact int32 group sums, AVX2 vpmaddwd at 8 bits and vpmaddubsw at 4, 1 thread); kernel float "
            "matmul = kernel.matmul on the same packed codes with float inputs (no activation quantization), "
            "1 thread. The two int_linear columns agree bit for bit.",
        ]
    else:
        title = "# Products with packed quantized weights: numpy vs the compiled kernel"
        header = ["weight (out x in)", "bits", "rows M"] + ENGINES
        notes = [
            f"- Weights: random, RTN, symmetric, groups of {GROUP}. Times: best-of-repeats wall milliseconds per call "
            "of x @ W^T (x float32, M rows), output included.",
            "- numpy dequantize + matmul = the runtime's low-memory mode (formats.codecs.dequantize_packed, then "
            "BLAS); cached float32 = Weights(cache=True); kernel = kernel.matmul (M <= "
            f"{kernel.SMALL_M}: the C loops on packed codes; larger M: BLAS on weight tiles the kernel dequantizes); "
            "kernel int8 = kernel.matmul_int8 (activations quantized to int8 per block of "
            f"{kernel.ACT_BLOCK}, int32 dot products, 1 thread).",
        ]
    lines = [
        title,
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; {versions()}; {kernel.kernel_status()}",
        f"- Load average (1 min) at start {load0[0]:.1f}, at end {load1[0]:.1f} (the machine is shared: other jobs "
        "ran alongside, so absolute times are noisy; the columns of one row were measured back to back)",
        *notes,
        f"- BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset (all cores)')}",
        f"- Command: `{blas}nice -n 10 python benchmarks/bench_kernel.py{flag} --output {os.path.relpath(output)}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 3 + "---:|" * (len(header) - 3),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
