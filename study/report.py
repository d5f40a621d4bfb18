"""report.md and PNG figures drawn from a sweep's stored rows (never from a live run).

Per model and evaluation set: WER against bits per weight with the Pareto front, WER against file size, WER against
bit-operations per second of audio (when the rows carry compute accounting); per model: runtime speed and memory and
conversion cost per recipe; per mixed-precision row: the bits given to each tensor as a heat map (layers x kinds).
A recipe measured on several calibration draws (seeds) is drawn at its mean with the draws' range as error bars.
Every figure is also a table in report.md.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import defaultdict

MIB = 1 << 20
PERCENT = 100.0
DPI = 80  # small PNGs: the committed example keeps each under 200 KB
BASELINE_STYLE = dict(marker="s", color="tab:red", linestyle="none")
_LAYER = re.compile(r"^(?:model\.)?(?:(\w+)\.)?layers\.(\d+)\.(.+?)(?:\.weight)?$")


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def draw_key(row: dict) -> str:
    """Rows that differ only in the calibration seed share this key (their recipe without the seed)."""
    recipe = dict(row.get("recipe") or {})
    recipe.pop("seed", None)
    return json.dumps([row["model"], row["kind"], recipe], sort_keys=True)


def pooled(rows: list[dict], set_name: str) -> list[dict]:
    """One point per recipe: a recipe on several seeds at its mean WER with the range (lo, hi), labelled by its
    first-measured row; rows without a WER on the set left out."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in _ok(rows):
        if (r.get("sets") or {}).get(set_name, {}).get("wer") is not None:
            groups[draw_key(r)].append(r)
    out = []
    for group in groups.values():
        wers = [PERCENT * r["sets"][set_name]["wer"] for r in group]
        first = min(group, key=lambda r: (r.get("recipe") or {}).get("seed", 0))
        out.append({**first, "wer_pct": statistics.mean(wers), "lo": min(wers), "hi": max(wers), "draws": len(group)})
    return out


def pareto(points: list[dict], x: str) -> list[dict]:
    """The points no other point beats on both x and WER (fewer bits and lower error), by increasing x."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p[x], p["wer_pct"])):
        if p["wer_pct"] < best:
            front.append(p)
            best = p["wer_pct"]
    return front


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_wer(points: list[dict], x: str, xlabel: str, title: str, path: str) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ours = [p for p in points if p["kind"] == "wavq"]
    base = [p for p in points if p["kind"] != "wavq"]
    for group, style, name in (
        (ours, dict(marker="o", color="tab:blue", linestyle="none"), "wavq recipes"),
        (base, BASELINE_STYLE, "baselines"),
    ):
        if group:
            yerr = [[p["wer_pct"] - p["lo"] for p in group], [p["hi"] - p["wer_pct"] for p in group]]
            ax.errorbar([p[x] for p in group], [p["wer_pct"] for p in group], yerr=yerr, capsize=3, label=name, **style)
    front = pareto(ours, x)
    if front:
        ax.step(
            [p[x] for p in front],
            [p["wer_pct"] for p in front],
            where="post",
            color="tab:green",
            label="Pareto front (wavq)",
        )
    for p in front + base:  # the front's recipes and every baseline are named on the figure
        ax.annotate(p["label"], (p[x], p["wer_pct"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER (%, log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_costs(rows: list[dict], title: str, path: str) -> list[str]:
    """Horizontal bars per recipe for each cost some row measured; the costs drawn."""
    costs = [
        ("rtf", "real-time factor (compute s / audio s)"),
        ("peak_rss_mib", "evaluation peak RSS (MiB)"),
        ("convert_seconds", "conversion time (s)"),
        ("convert_peak_rss_mib", "conversion peak RSS (MiB)"),
    ]
    costs = [(k, name) for k, name in costs if any(r.get(k) is not None for r in rows)]
    if not costs:
        return []
    plt = _figure()
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, len(costs), figsize=(3.2 * len(costs) + 2, 0.22 * len(rows) + 1.5), sharey=True)
    axes = axes if len(costs) > 1 else [axes]
    for ax, (key, name) in zip(axes, costs):
        colors = ["tab:red" if r["kind"] != "wavq" else "tab:blue" for r in rows]
        ax.barh(range(len(rows)), [r.get(key) or 0 for r in rows], color=colors)
        ax.set_xlabel(name, fontsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=6)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [k for k, _ in costs]


def allocation_grid(tensor_bits: dict[str, int]) -> tuple[list[str], list[str], list[list[int | None]]]:
    """(row names: stack and layer, column names: tensor kinds, bits or None) of a per-tensor allocation."""
    cells: dict[tuple[str, str], int] = {}
    for name, bits in tensor_bits.items():
        m = _LAYER.match(name)
        if m:
            cells[(f"{m.group(1) or 'layers'} {int(m.group(2)):02d}", m.group(3))] = bits
        else:
            cells[("other", name.removeprefix("model.").removesuffix(".weight"))] = bits
    layers = sorted({k[0] for k in cells}, key=lambda s: (s == "other", s))
    kinds = sorted({k[1] for k in cells})
    return layers, kinds, [[cells.get((layer, kind)) for kind in kinds] for layer in layers]


def plot_allocation(row: dict, path: str) -> None:
    import numpy as np

    plt = _figure()
    layers, kinds, grid = allocation_grid(row["tensor_bits"])
    data = np.array([[np.nan if b is None else b for b in line] for line in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(0.45 * len(kinds) + 3, 0.25 * len(layers) + 2))
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(kinds)), kinds, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(len(layers)), layers, fontsize=6)
    fig.colorbar(im, ax=ax, label="bits per weight code")
    ax.set_title(f"{row['model']}: {row['label']} ({row['bits_per_weight']:.3f} bits/weight)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _fmt(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _set_names(rows: list[dict]) -> list[str]:
    return sorted({s for r in _ok(rows) for s in r.get("sets") or {}})


def chosen_on_validation(rows: list[dict], validation: str, budgets: tuple[float, ...]) -> list[str]:
    """Per budget, the wavq recipe with the lowest mean validation WER within it, and its results on the other sets."""
    points = {draw_key(p): p for p in pooled([r for r in rows if r["kind"] == "wavq"], validation)}
    others = [s for s in _set_names(rows) if s != validation]
    by_set = {s: {draw_key(p): p for p in pooled(rows, s)} for s in others}
    recipes = {draw_key(r): r["bits_per_weight"] for r in _ok(rows) if r["kind"] == "wavq"}
    lines = []
    for budget in budgets:
        fits = [p for p in points.values() if p["bits_per_weight"] <= budget + 1e-9]
        unmeasured = sum(1 for k, bits in recipes.items() if bits <= budget + 1e-9 and k not in points)
        gap = f"; {unmeasured} recipes within the budget have no {validation} row" if unmeasured else ""
        if not fits:
            lines.append(f"- ≤ {budget} bits/weight: no recipe measured on {validation}{gap}")
            continue
        best = min(fits, key=lambda p: p["wer_pct"])
        tests = ", ".join(f"{s} {_fmt((by_set[s].get(draw_key(best)) or {}).get('wer_pct'))} %" for s in others)
        lines.append(
            f"- ≤ {budget} bits/weight: **{best['label']}** ({best['bits_per_weight']:.3f} bits/weight), "
            f"{validation} {best['wer_pct']:.2f} % → {tests} (best of {len(fits)} measured on {validation}{gap})"
        )
    return lines


def _table(rows: list[dict], sets: list[str]) -> list[str]:
    fronts = {
        s: {draw_key(p) for p in pareto([p for p in pooled(rows, s) if p["kind"] == "wavq"], "bits_per_weight")}
        for s in sets
    }
    head = (
        ["recipe", "kind", "bits/weight", "file MiB"]
        + [f"WER {s} %" for s in sets]
        + ["RTF", "peak MiB", "convert s", "convert peak MiB", "source"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 3) + "---|"]
    for r in sorted(_ok(rows), key=lambda r: (r["kind"] == "wavq", -r["bits_per_weight"], r["label"])):
        wers = []
        for s in sets:
            wer = (r.get("sets") or {}).get(s, {}).get("wer")
            mark = " ◆" if draw_key(r) in fronts[s] and (r.get("recipe") or {}).get("seed", 0) == 0 else ""
            wers.append("—" if wer is None else f"{PERCENT * wer:.2f}{mark}")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    r["kind"],
                    f"{r['bits_per_weight']:.3f}",
                    _fmt(r.get("file_bytes") and r["file_bytes"] / MIB, ".1f"),
                    *wers,
                    _fmt(r.get("rtf"), ".3f"),
                    _fmt(r.get("peak_rss_mib"), ".0f"),
                    _fmt(r.get("convert_seconds"), ".0f"),
                    _fmt(r.get("convert_peak_rss_mib"), ".0f"),
                    r.get("provenance", {}).get("source", "?"),
                ]
            )
            + " |"
        )
    return lines


def _allocation_table(row: dict) -> list[str]:
    layers, kinds, grid = allocation_grid(row["tensor_bits"])
    lines = ["| layer | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    lines += ["| " + layer + " | " + " | ".join(_fmt(b, "d") for b in line) + " |" for layer, line in zip(layers, grid)]
    return lines


def _provenance(row: dict) -> str:
    p = row.get("provenance") or {}
    if p.get("source") != "imported":
        return "- measured by `wavq sweep` (each row has its machine, versions and date)"
    parts = [f"- imported from `{p.get('table')}`: {p.get('measured', '')}", f"Command: {p.get('command', '?')}"]
    parts += [f"WER by {p['evaluated_by']}." if p.get("evaluated_by") else ""]
    return " ".join(x for x in parts if x)


def write_report(
    rows: list[dict],
    out_dir: str,
    validation: str | None = None,
    budgets: tuple[float, ...] = (),
    pending: list[str] | None = None,
) -> list[str]:
    """Write report.md and the figures into out_dir; the files written."""
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    md = [
        "# What each bit costs",
        "",
        "Drawn by `wavq report` from the sweep's stored rows. WER in % (greedy decoding); ◆: on the Pareto front of "
        "WER against bits per weight on that set; a recipe on several calibration seeds is drawn at its mean with "
        "the range as error bars. Multiply-accumulates and bit-operations per second of audio are empty until the "
        "evaluation reports compute accounting.",
        "",
    ]
    md += ["## Provenance", ""] + sorted({_provenance(r) for r in rows}) + [""]
    for model in sorted({r["model"] for r in rows}):
        mrows = [r for r in rows if r["model"] == model]
        sets = _set_names(mrows)
        slug = _slug(model)
        md += [f"## {model}", "", *_table(mrows, sets), ""]
        for s in sets:
            points = pooled(mrows, s)
            for x, xlabel, name in (
                ("bits_per_weight", "bits per weight (codes, scales, zero points)", "bpw"),
                ("file_mib", "file size (MiB)", "size"),
                ("bitops_per_audio_second", "bit-operations per second of audio", "bitops"),
            ):
                for p in points:
                    p["file_mib"] = p["file_bytes"] / MIB if p.get("file_bytes") else None
                drawable = [p for p in points if p.get(x) is not None]
                if not drawable:
                    md += [f"(WER against {xlabel} on {s}: no row has it yet.)", ""]
                    continue
                fn = f"wer_{name}_{slug}_{_slug(s)}.png"
                plot_wer(drawable, x, xlabel, f"{model} on {s}", os.path.join(out_dir, fn))
                written.append(fn)
                md += [f"![WER against {xlabel}, {model}, {s}]({fn})", ""]
        spread = [p for s in sets for p in pooled(mrows, s) if p["draws"] > 1 and (p.update(set=s) or True)]
        if spread:
            md += [
                "### Calibration draws",
                "",
                "| recipe | set | draws | mean WER % | min | max |",
                "|---|---|---:|---:|---:|---:|",
            ]
            md += [
                f"| {p['label']} | {p['set']} | {p['draws']} | {p['wer_pct']:.2f} | {p['lo']:.2f} | {p['hi']:.2f} |"
                for p in spread
            ] + [""]
        if validation and validation in sets:
            md += [f"### Recipes chosen on {validation}", "", *chosen_on_validation(mrows, validation, budgets), ""]
        elif budgets:
            md += [
                f"(No row was measured on the validation set ({validation or 'none named'}): no recipe is chosen "
                "per budget; the test sets only report.)",
                "",
            ]
        fn = f"costs_{slug}.png"
        drawn = plot_costs(
            sorted(_ok(mrows), key=lambda r: -r["bits_per_weight"]),
            f"{model}: cost per recipe",
            os.path.join(out_dir, fn),
        )
        if drawn:
            written.append(fn)
            md += [f"![cost per recipe, {model}]({fn}) (the table above has the numbers)", ""]
        for r in _ok(mrows):
            if len(set((r.get("tensor_bits") or {}).values())) > 1 and (r.get("recipe") or {}).get("seed", 0) == 0:
                fn = f"bits_{slug}_{_slug(r['label'])}.png"
                plot_allocation(r, os.path.join(out_dir, fn))
                written.append(fn)
                md += [
                    f"### Bit allocation: {r['label']}",
                    "",
                    f"![bits per tensor]({fn})",
                    "",
                    *_allocation_table(r),
                    "",
                ]
        errors = [r for r in mrows if r.get("status") != "ok"]
        if errors:
            md += ["### Failed cells", ""] + [f"- {r['label']}: {r.get('error')}" for r in errors] + [""]
    if pending:
        md += ["## Not measured yet", "", ", ".join(pending) + ".", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path + ".partial", "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    os.replace(path + ".partial", path)
    return ["report.md", *written]
