"""The sweep's results: one JSON line per finished cell in results.jsonl, and the same rows flattened in results.csv.

Each row is appended with a single write of one complete line and fsynced, so a sweep killed at any moment leaves
whole rows (a torn last line, possible only if the machine itself fails, is ignored on reading). results.csv is
rewritten from the JSON lines through a temporary file and a rename.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile

JSONL = "results.jsonl"
CSV = "results.csv"
# flattened columns of results.csv before the per-set ones, in this order
COLUMNS = (
    "cell",
    "status",
    "label",
    "model",
    "kind",
    "bits_per_weight",
    "file_bytes",
    "rtf",
    "peak_rss_mib",
    "macs_per_audio_second",
    "bitops_per_audio_second",
    "convert_seconds",
    "convert_peak_rss_mib",
    "recipe",
    "error",
    "date",
    "machine",
    "versions",
    "source",
)
SET_FIELDS = ("wer", "n_words", "n_utterances", "rtf")


class Store:
    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.jsonl = os.path.join(self.directory, JSONL)

    def rows(self) -> list[dict]:
        """Every stored row, a later row for the same cell replacing an earlier one."""
        if not os.path.exists(self.jsonl):
            return []
        latest: dict[str, dict] = {}
        with open(self.jsonl, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                latest[row["cell"]] = row
        return list(latest.values())

    def done(self, retry_failed: bool = False) -> set[str]:
        """Cells that need no run: finished ones, and failed ones unless they are to be retried."""
        return {r["cell"] for r in self.rows() if r["status"] == "ok" or not retry_failed}

    def append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.write_csv()

    def write_csv(self) -> None:
        rows = self.rows()
        sets = sorted({name for r in rows for name in (r.get("sets") or {})})
        header = list(COLUMNS) + [f"{field}_{name}" for name in sets for field in SET_FIELDS]
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".csv.partial", dir=self.directory)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(header)
                for r in rows:
                    flat = {k: r.get(k) for k in COLUMNS}
                    flat["recipe"] = json.dumps(r.get("recipe"), sort_keys=True)
                    flat["source"] = (r.get("provenance") or {}).get("source")
                    for name, s in (r.get("sets") or {}).items():
                        flat.update({f"{field}_{name}": s.get(field) for field in SET_FIELDS})
                    w.writerow(["" if flat.get(h) is None else flat[h] for h in header])
            os.replace(tmp, os.path.join(self.directory, CSV))
        except BaseException:
            os.unlink(tmp)
            raise
