"""Running a grid's pending cells: one after another, on a local pool of jobs, or as Ray tasks.

Cells do their work in child processes (cell.py), so a local job is a thread that waits on its children. Rows are
written by this process only, as each cell finishes, so parallel cells never write the same file.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator

from .cell import run_cell
from .grid import Cell, Grid
from .store import Store

CACHE = "cache"  # converted models, under the results directory unless given
# memory a Ray task declares: Ray schedules no more cells on a node than its memory holds (conversion of a
# base-sized Whisper with GPTQ and tuning peaks near 5 GiB)
DEFAULT_TASK_MEMORY_MIB = 6144


def pending(grid: Grid, store: Store, retry_failed: bool = False) -> list[Cell]:
    done = store.done(retry_failed)
    return [c for c in grid.cells if c.id not in done]


def threads_per_job(jobs: int) -> int:
    """Threads each cell's processes may use so that `jobs` cells together do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_local(cells: list[Cell], cache_dir: str, jobs: int) -> Iterator[dict]:
    threads = threads_per_job(jobs)
    if jobs == 1:
        for cell in cells:
            yield run_cell(cell, cache_dir, threads)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_cell, cell, cache_dir, threads) for cell in cells]
        for done in concurrent.futures.as_completed(futures):
            yield done.result()


def run_ray(cells: list[Cell], cache_dir: str, address: str, cpus: int, memory_mib: int) -> Iterator[dict]:
    """The cells as Ray tasks, each declaring its CPUs and memory. `cache_dir` should be on storage every node
    sees; where it is not, each node converts into its own copy of that path (the cache is rebuilt per node)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'wavq[sweep]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus, memory=memory_mib * 2**20, max_retries=0)(run_cell)
        refs = [task.remote(cell, os.path.abspath(cache_dir), cpus) for cell in cells]
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def sweep(
    grid: Grid,
    store: Store,
    *,
    cache_dir: str | None = None,
    jobs: int = 1,
    ray_address: str | None = None,
    memory_mib: int = DEFAULT_TASK_MEMORY_MIB,
    retry_failed: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every cell the store does not hold yet, storing each row as it comes; the new rows."""
    cache_dir = cache_dir or os.path.join(store.directory, CACHE)
    cells = pending(grid, store, retry_failed)
    if ray_address:
        rows = run_ray(cells, cache_dir, ray_address, threads_per_job(jobs), memory_mib)
    else:
        rows = run_local(cells, cache_dir, jobs)
    out = []
    for row in rows:
        store.append(row)
        out.append(row)
        if on_row:
            on_row(row)
    return out
