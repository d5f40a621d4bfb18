"""`python -m wavq` and the `wavq` command.

`--threads N` is applied here, before anything imports numpy: OpenBLAS, OpenMP and MKL read their thread counts
from the environment once, when numpy first loads them, so setting the variables inside the click command (after
`wavq.runtime` has imported numpy) would change nothing. threadpoolctl could change them later, but it is not a
dependency. The click option itself is parsed again by the command, which validates it and shows it in --help.
"""

from __future__ import annotations

import os
import sys

THREADS_OPTION = "--threads"
# the BLAS/OpenMP libraries numpy may be built against, and the optional compiled kernel (runtime/kernel.py)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "WAVQ_KERNEL_THREADS")


def threads_from_args(args: list[str]) -> str | None:
    """The value of --threads in a command line (`--threads N` or `--threads=N`), if it is a positive integer;
    anything else is left for click to reject."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        value = None
        if arg == THREADS_OPTION and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(THREADS_OPTION + "="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit() and int(value) > 0:
            return value
    return None


def set_threads(value: str) -> None:
    for name in THREAD_VARIABLES:
        os.environ[name] = value


def main() -> None:
    threads = threads_from_args(sys.argv[1:])
    if threads is not None:
        set_threads(threads)
    from wavq.runtime.cli import main as cli

    cli(prog_name="wavq")


if __name__ == "__main__":
    main()
