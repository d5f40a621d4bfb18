#!/usr/bin/env bash
# The test suite, from a fresh checkout: set-up (venv, dependencies, Whisper checkpoints), the linters and the
# type checker, then pytest. Any failing step fails the run.
# Extra arguments go to pytest, e.g. the inner loop `bash scripts/test.sh -m "not slow and not real"`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
