#!/usr/bin/env bash
# The main job, from a fresh checkout: convert openai/whisper-tiny.en to 4 bits, then transcribe samples/
# with the numpy runtime and print the word error rate.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
model=${MODEL:-openai/whisper-tiny.en}
out=${OUT:-$root/out/$(basename "$model")-q4.wq}
mkdir -p "$(dirname "$out")"
wavq-convert "$model" --bits 4 --group-size 128 -o "$out" --force
wavq info "$out"
wavq transcribe "$out" samples/*.flac
wavq eval "$out" --data samples
