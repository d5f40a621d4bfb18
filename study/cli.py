"""`wavq sweep`, `wavq report` and `wavq sweep-import`: thin click commands over the study package."""

from __future__ import annotations

import json
import os

import click

from .grid import GridError, load_grid
from .store import Store

HELP = {"help_option_names": ["-h", "--help"]}
SWEEP_FILE = "sweep.json"  # the grid's cells, validation set and budgets, for `wavq report`


def _require(*modules: str, extra: str) -> None:
    """One line naming the extra to install when a module the command needs is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"this command needs {', '.join(missing)}: pip install 'wavq[{extra}]'")


def _grid(path: str):
    try:
        return load_grid(path)
    except (GridError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _save_sweep(grid, path: str, store: Store) -> None:
    """Record the grid's cells beside the rows. A directory may hold the rows of several grids (a test grid and the
    validation grid of the same recipes): their cells are merged, and a grid naming a validation set or budgets
    replaces the earlier ones."""
    target = os.path.join(store.directory, SWEEP_FILE)
    old: dict = {}
    if os.path.exists(target):
        with open(target, encoding="utf-8") as f:
            old = json.load(f)
    cells = {c["cell"]: c for c in old.get("cells", [])}
    cells.update({c.id: {"cell": c.id, "model": c.model, "label": c.label} for c in grid.cells})
    grids = [g for g in old.get("grids", [old["grid"]] if "grid" in old else []) if g != os.path.basename(path)]
    out = {
        "grids": [*grids, os.path.basename(path)],
        "validation": grid.validation or old.get("validation"),
        "budgets": list(grid.budgets) or old.get("budgets", []),
        "cells": list(cells.values()),
    }
    with open(target + ".partial", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    os.replace(target + ".partial", target)


@click.command(context_settings=HELP)
@click.argument("grid_path", metavar="GRID", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Results directory.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Cells run at the same time.")
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run the cells as Ray tasks on this cluster ('auto', ray://host:port, or 'local' to start one).",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Converted models, shared between sweeps  [default: OUTPUT/cache].",
)
@click.option("--task-memory", type=click.IntRange(1), default=None, help="MiB of memory each Ray task declares.")
@click.option("--retry-failed", is_flag=True, help="Run failed cells again (finished cells are never redone).")
def sweep(grid_path, output, jobs, ray_address, cache_dir, task_memory, retry_failed) -> None:
    """Convert and evaluate every cell of GRID not yet in OUTPUT/results.jsonl."""
    _require("torch", "transformers", "jiwer", "tqdm", extra="convert,eval")
    from tqdm import tqdm

    from .runner import DEFAULT_TASK_MEMORY_MIB, pending
    from .runner import sweep as run

    grid = _grid(grid_path)
    store = Store(output)
    _save_sweep(grid, grid_path, store)
    todo = len(pending(grid, store, retry_failed))
    click.echo(f"{len(grid.cells)} cells, {len(grid.cells) - todo} already stored, {todo} to run", err=True)
    failed = []
    with tqdm(total=todo, unit="cell", disable=None) as bar:

        def done(row: dict) -> None:
            bar.update(1)
            if row["status"] != "ok":
                failed.append(row)
                tqdm.write(f"failed: {row['model']} {row['label']}: {row['error']}")

        try:
            run(
                grid,
                store,
                cache_dir=cache_dir,
                jobs=jobs,
                ray_address=ray_address,
                memory_mib=task_memory or DEFAULT_TASK_MEMORY_MIB,
                retry_failed=retry_failed,
                on_row=done,
            )
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"{todo - len(failed)} cells done, {len(failed)} failed; rows in {store.jsonl}", err=True)


@click.command(context_settings=HELP)
@click.argument("results", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report directory.")
def report(results, output) -> None:
    """Write report.md and PNG figures from the rows in RESULTS."""
    _require("matplotlib", extra="plot")
    from .report import write_report

    rows = Store(results).rows()
    if not rows:
        raise click.ClickException(f"{results}: no results.jsonl rows")
    meta_path = os.path.join(results, SWEEP_FILE)
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    stored = {r["cell"] for r in rows}
    todo = [f"{c['label']} ({c['model']})" for c in meta.get("cells", []) if c["cell"] not in stored]
    files = write_report(rows, output, meta.get("validation"), tuple(meta.get("budgets", ())), todo)
    click.echo(f"wrote {len(files)} files to {output}")


@click.command(name="sweep-import", context_settings=HELP)
@click.argument("table", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--grid",
    "grid_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The grid whose cells (matched by model and label) the table's rows become.",
)
@click.option("--model", required=True, help="The model the table measured, as the grid names it.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Results directory.")
def sweep_import(table, grid_path, model, output) -> None:
    """Import TABLE (a bench_quant_table.py JSON, its .md beside it) as rows of GRID's cells, with provenance."""
    from .importer import import_table

    grid = _grid(grid_path)
    with open(table, encoding="utf-8") as f:
        measured = json.load(f)
    md = os.path.splitext(table)[0] + ".md"
    rows, unmatched = import_table(measured, grid, model, os.path.basename(table), md)
    store = Store(output)
    _save_sweep(grid, grid_path, store)
    have = {r["cell"] for r in store.rows()}
    new = [r for r in rows if r["cell"] not in have]
    for row in new:
        store.append(row)
    click.echo(f"imported {len(new)} rows ({len(rows) - len(new)} already stored)")
    if unmatched:
        click.echo(f"no grid cell for {len(unmatched)} table rows: {', '.join(unmatched)}", err=True)


COMMANDS = (sweep, report, sweep_import)
