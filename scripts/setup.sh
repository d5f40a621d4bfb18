#!/usr/bin/env bash
# One-time set-up on a fresh machine, safe to re-run: a virtual environment in .venv with wavq and its
# converter/test dependencies, and the real Whisper checkpoints in the Hugging Face cache (offline copies).
# Source it (`. scripts/setup.sh`) so the venv and HF_HUB_OFFLINE stay set for the caller.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
venv=${WAVQ_VENV:-$root/.venv}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp=$venv/.wavq-installed
# re-install when the package metadata or the optional compiled kernel's sources changed
stale=0
for f in "$root/pyproject.toml" "$root/setup.py" "$root"/runtime/_kernel/*.c; do
  [ -f "$stamp" ] && [ ! "$f" -nt "$stamp" ] || stale=1
done
if [ "$stale" = 1 ]; then
  python -m pip install -q --upgrade pip
  # torch first, pinned: the CPU wheel. A bare `torch` requirement would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$root[convert,eval,dev]"
  touch "$stamp"
fi
shared=${WAVQ_SHARED:-$root/../shared}
if [ -x "$shared/models/install-whisper.sh" ] || [ -f "$shared/models/install-whisper.sh" ]; then
  PYTHON=python bash "$shared/models/install-whisper.sh" tiny.en base
fi
export HF_HUB_OFFLINE=1
