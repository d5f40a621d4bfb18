"""Rows measured before the sweep existed (benchmarks/bench_quant_table.py's JSON tables) as sweep rows of a grid's
cells, marked as imported with the original table's machine, date and command, so reports are drawn from them
instead of numbers retyped by hand."""

from __future__ import annotations

import os

from .grid import Grid

MIB = 1 << 20
PERCENT = 100.0  # the table stores WER in %, rows as a fraction
# the table's set suffixes -> the grid's set names
TABLE_SETS = {"clean": "test-clean", "other": "test-other"}


def _header(md_path: str | None) -> dict:
    """The table's "Measured ..." and "Command: ..." lines."""
    if not md_path or not os.path.exists(md_path):
        return {}
    out = {}
    with open(md_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("Measured "):
                out["measured"] = line.strip()
            elif line.startswith("Command: "):
                out["command"] = line.removeprefix("Command: ").strip()
    return out


def import_table(table: list[dict], grid: Grid, model: str, table_path: str, md_path: str | None = None):
    """(rows for the grid's cells of `model` that the table measured, labels of table rows no cell has)."""
    cells = {c.label: c for c in grid.cells if c.model == model}
    header = _header(md_path)
    rows, unmatched = [], []
    for r in table:
        cell = cells.get(r["label"])
        if cell is None:
            unmatched.append(r["label"])
            continue
        sets = {
            TABLE_SETS[k]: {
                "wer": r[f"wer_{k}"] / PERCENT,
                "n_words": r[f"words_{k}"],
                "n_utterances": r[f"n_{k}"],
                "rtf": None,  # measured through transformers in batches: no runtime speed
            }
            for k in TABLE_SETS
            if f"wer_{k}" in r
        }
        rows.append(
            {
                "cell": cell.id,
                "status": "ok",
                "error": None,
                "label": cell.label,
                "model": model,
                "kind": cell.baseline or "wavq",
                "recipe": cell.recipe,
                "bits_per_weight": r["bpw"],
                "file_bytes": round(r["file_mib"] * MIB),
                "tensor_bits": r.get("tensor_bits") or {},
                "tensor_group_size": r.get("tensor_group_size") or {},
                "sets": sets,
                "rtf": None,
                "peak_rss_mib": None,
                "macs_per_audio_second": None,
                "bitops_per_audio_second": None,
                "convert_seconds": r.get("convert_s"),
                "convert_peak_rss_mib": r.get("convert_rss_mib"),
                "date": r.get("date"),
                "machine": r.get("machine"),
                "versions": None,
                "provenance": {
                    "source": "imported",
                    "table": table_path,
                    **header,
                    "evaluated_by": "transformers generate() on the file's dequantized weights, greedy, batched",
                    "runtime_agreed": f"{r.get('runtime_same')}/{r.get('runtime_checked')} first test-clean "
                    "utterances gave the same text on the numpy runtime",
                },
            }
        )
    return rows, unmatched
