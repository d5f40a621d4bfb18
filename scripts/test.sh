#!/usr/bin/env bash
# The test suite, from a fresh checkout: set-up (venv, dependencies, Whisper checkpoints), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not real"`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
python -m pytest -q -p no:cacheprovider "$@"
