#!/usr/bin/env bash
# keel's device check: the CUDA build and its numerics against Hugging Face transformers.
#
# usage: scripts/device-check.sh OUTDIR [--cpu]
#
# Run from the repository root on a GPU machine that has python3 with PyTorch (CUDA) and transformers and a C++
# compiler, but no Go: build keel beforehand on a Go machine with `make device-bundle` (it writes .device/keel,
# which this script runs). The shim is compiled here against python3's own libtorch. --cpu is the dry run: the
# CUDA-only parts are skipped with a message, and without transformers keel's own tiny checkpoints stand in.
set -uo pipefail
out=${1:?usage: scripts/device-check.sh OUTDIR [--cpu]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
keel=${KEEL_BIN:-$PWD/.device/keel}
log="$out/device-check.log"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

[ -x "$keel" ] || { say "device-check: $keel not found: run 'make device-bundle' on a Go machine first"; exit 1; }
say "== machine"
{ uname -a; command -v g++ && g++ --version | head -1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2; } 2>&1 | tee -a "$log"
say "== shim"
start=$(date +%s)
if ! KEEL_SKIP_BENCH=1 bash scripts/setup.sh 2>&1 | tee -a "$log"; then
  say "device-check: compiling the shim failed"
  python3 scripts/device_check.py "$out" "$keel" --shim-failed "$@" 2>&1 | tee -a "$log"
  exit 1
fi
say "shim compiled in $(( $(date +%s) - start ))s"
export KEEL_SHIM=$PWD/build/libkeeltorch.so
"$keel" info 2>&1 | tee -a "$log"
PYTHONUNBUFFERED=1 python3 scripts/device_check.py "$out" "$keel" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
