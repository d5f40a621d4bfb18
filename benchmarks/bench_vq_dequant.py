"""Dequantization speed of codebook (VQ) tensors against scalar codes of about the same bits per weight, read from a
.wq file the way the runtime reads weights: a whole tensor (`WqFile.array`, what a cached or per-layer weight costs)
and blocks of rows (`WqFile.array(rows=...)`, how the output projection is read in low-memory mode).

Tensors are whisper-base-shaped (fc2 (512, 2048), fc1 (2048, 512)) with random indices, codebooks and codes (speed
does not depend on their values); one codebook per tensor, scales in groups of 128. Throughput is MB/s of float32
produced, from the best wall time of repeated calls after one untimed call (bench_kernel.best_ms; the best, not
the median: the machine may be shared). Bits per weight count indices or codes, scales and codebooks (formats.stats).

    nice -n 10 python benchmarks/bench_vq_dequant.py        # writes benchmarks/results/vq_dequant.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import numpy as np
from bench_common import machine, versions
from bench_kernel import best_ms

from wavq.formats import WqFile, quantize, write_wq
from wavq.formats.codecs import CodebookTensor
from wavq.formats.stats import bits_per_weight, codebook_bits_per_weight

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(512, 2048), (2048, 512)]  # (out, in): whisper-base fc2 and fc1
GROUP = 128
BLOCK_ROWS = 64  # rows per read in the row-block column
VQ = [(4, 8), (4, 10), (4, 12), (2, 4), (2, 5), (2, 6)]  # (dim, index bits): 2, 2.5, 3 index bits per weight
SCALAR = [2, 3]  # QSYM bits (no scalar width gives 2.5)


def codebook(rng: np.random.Generator, shape: tuple[int, int], dim: int, index_bits: int) -> CodebookTensor:
    rows, cols = shape
    return CodebookTensor(
        shape,
        dim,
        index_bits,
        GROUP,
        rows,
        rng.integers(0, 1 << index_bits, (rows, cols // dim)).astype(np.uint16),
        rng.standard_normal((1, 1 << index_bits, dim)).astype(np.float16),
        rng.standard_normal((rows, cols // GROUP)).astype(np.float16),
    )


def tensors(rng: np.random.Generator) -> dict[str, tuple[str, float, object]]:
    """name -> (label, bits per weight, tensor)."""
    out: dict[str, tuple[str, float, object]] = {}
    for shape in SHAPES:
        for dim, bits in VQ:
            bpw = codebook_bits_per_weight(dim, bits, GROUP, shape[0], shape)
            out[f"vq{dim}x{bits}/{shape}"] = (f"VQ d{dim} {bits}-bit", bpw, codebook(rng, shape, dim, bits))
        for bits in SCALAR:
            qt, _ = quantize(rng.standard_normal(shape).astype(np.float32), bits, GROUP, symmetric=True)
            out[f"q{bits}/{shape}"] = (f"scalar Q{bits} sym", bits_per_weight(bits, GROUP, True, shape), qt)
    return out


def measure(f: WqFile, name: str) -> tuple[float, float]:
    """(MB/s whole tensor, MB/s in blocks of BLOCK_ROWS rows) of float32 produced."""
    rows = f.info(name).shape[0]
    mb = f.info(name).numel * 4 / 1e6
    whole = best_ms(lambda: f.array(name)) / 1e3

    def blocks() -> None:
        for s in range(0, rows, BLOCK_ROWS):
            f.array(name, rows=slice(s, s + BLOCK_ROWS))

    return mb / whole, mb / (best_ms(blocks) / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=os.path.join(HERE, "results", "vq_dequant.md"))
    args = ap.parse_args()
    load = os.getloadavg()[0]  # the table is only as quiet as the machine was
    table = tensors(np.random.default_rng(0))
    lines = []
    with tempfile.TemporaryDirectory() as d:
        path = write_wq(
            os.path.join(d, "bench.wq"), {"architecture": "bench"}, {n: t for n, (_, _, t) in table.items()}
        )
        with WqFile(path) as f:
            f.verify()  # checksums and finiteness once, outside the timed calls (the runtime checks once too)
            for name, (label, bpw, _) in table.items():
                whole, blocked = measure(f, name)
                shape = f.info(name).shape
                lines.append(f"| {shape[0]}x{shape[1]} | {label} | {bpw:.3f} | {whole:,.0f} | {blocked:,.0f} |")
                print(lines[-1], file=sys.stderr)
    header = [
        "# Dequantization speed: codebook (VQ) tensors vs scalar codes",
        "",
        f"- machine: {machine()}; {versions()}; 1-minute load average at the start: {load:.1f}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- command: `nice -n 10 python benchmarks/bench_vq_dequant.py`",
        f"- MB/s of float32 produced (best of repeated calls); whole tensor, and in blocks of {BLOCK_ROWS} rows; "
        f"scales in groups of {GROUP}, one codebook per tensor; bits/weight include scales and codebooks",
        "",
        f"| shape | encoding | bits/weight | MB/s whole | MB/s {BLOCK_ROWS}-row blocks |",
        "|---|---|---:|---:|---:|",
    ]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as out:
        out.write("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
