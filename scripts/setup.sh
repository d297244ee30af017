#!/usr/bin/env bash
# Finds (or installs) libtorch and compiles keel's C shim against it into build/.
# Order: $LIBTORCH (an unpacked libtorch folder), the active python3's torch, Debian/Ubuntu's libtorch-dev
# (installed through apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/libkeeltorch.so
src=engine/torch/csrc/keel_torch.cpp
mkdir -p build

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

std=c++17
abi=""
if [ -n "${LIBTORCH:-}" ]; then
  [ -d "$LIBTORCH/include" ] || { echo "keel setup: LIBTORCH=$LIBTORCH has no include/ folder: point it at an unpacked libtorch" >&2; exit 1; }
  inc="-I$LIBTORCH/include -I$LIBTORCH/include/torch/csrc/api/include"
  lib="$LIBTORCH/lib"
  src_desc="LIBTORCH=$LIBTORCH"
elif tdir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null); then
  inc="-I$tdir/include -I$tdir/include/torch/csrc/api/include"
  lib="$tdir/lib"
  abi="-D_GLIBCXX_USE_CXX11_ABI=$(python3 -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))')"
  src_desc="python torch $(python3 -c 'import torch; print(torch.__version__)') at $tdir"
  echo 'int main(){}' | g++ -std=c++20 -x c++ - -o /dev/null 2>/dev/null && std=c++20
else
  multi=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  if [ ! -d /usr/include/torch/csrc ] || ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "keel setup: installing libtorch-dev and libopenblas0-pthread with apt-get" >&2
      as_root apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends libtorch-dev libopenblas0-pthread g++ >&2
    else
      echo "keel setup: no libtorch found: set LIBTORCH=/path/to/libtorch, or pip install torch, or install libtorch-dev" >&2
      exit 1
    fi
  fi
  inc="-I/usr/include/torch/csrc/api/include"
  lib="/usr/lib/$multi"
  src_desc="system libtorch-dev"
fi

cuda=""
stats=""
if [ -e "$lib/libtorch_cuda.so" ]; then
  cuda="-ltorch_cuda -lc10_cuda"
  stats="-DKEEL_WITH_CUDA"
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -d "$d/include" ]; then stats="$stats -I$d/include"; break; fi
  done
fi

bench_src=engine/torch/csrc/bench/decode_bench.cpp
train_src=engine/torch/csrc/bench/train_bench.cpp
llama2c_src=engine/torch/csrc/bench/llama2c_bench.c
stamp="$src_desc|$cuda|$stats|$(sha256sum "$src" engine/torch/csrc/keel_step.cpp engine/torch/csrc/keel_shim.h engine/torch/csrc/keel_torch.h engine/torch/csrc/keel_linear.h "$bench_src" "$train_src" "$llama2c_src" engine/torch/csrc/bench/bench_ops.h scripts/setup.sh | sha256sum | cut -c1-16)"
have_bench() { [ -n "${KEEL_SKIP_BENCH:-}" ] || { [ -f build/keel-decode-bench ] && [ -f build/keel-train-bench ] && [ -f build/keel-llama2c-bench ]; }; }
if [ -f "$out" ] && have_bench && [ -f build/shim.stamp ] && [ "$(cat build/shim.stamp)" = "$stamp" ]; then
  exit 0
fi
echo "keel setup: compiling the libtorch shim against $src_desc${cuda:+ (CUDA)}" >&2
# shellcheck disable=SC2086
compile_shim() {
  # shellcheck disable=SC2086
  # -fopenmp-simd: the fused step's dot products vectorise (an OpenMP simd reduction, no OpenMP runtime).
  g++ -O2 -fopenmp-simd -std=$std -shared -fPIC $abi $inc "$@" -Wno-deprecated-declarations "$src" engine/torch/csrc/keel_step.cpp -o "$out.tmp" \
    -L"$lib" -Wl,-rpath,"$lib" -Wl,--no-as-needed $cuda -ltorch -ltorch_cpu -lc10 -Wl,--as-needed
}
# CUDA memory statistics need the CUDA runtime's headers; without them the shim still runs on CUDA.
# shellcheck disable=SC2086
if ! compile_shim $stats; then
  [ -n "$stats" ] || exit 1
  echo "keel setup: retrying without CUDA memory statistics (CUDA headers not usable)" >&2
  compile_shim
fi
mv "$out.tmp" "$out"
# The C++ reference for `keel bench decode`, built against the same libtorch (KEEL_SKIP_BENCH=1 skips it).
# shellcheck disable=SC2086
if [ -z "${KEEL_SKIP_BENCH:-}" ]; then
  for b in decode train; do
    # shellcheck disable=SC2086
    g++ -O2 -std=$std $abi $inc -Wno-deprecated-declarations "engine/torch/csrc/bench/${b}_bench.cpp" -o "build/keel-${b}-bench" \
      -L"$lib" -Wl,-rpath,"$lib" -Wl,--no-as-needed $cuda -ltorch -ltorch_cpu -lc10 -Wl,--as-needed
  done
  # The plain C loop `keel bench decode --llama2c` compares against: no libtorch, one thread, built the fastest
  # plain way llama2.c documents (its runomp flags at one thread, without OpenMP: -Ofast -march=native).
  gcc -Ofast -march=native -std=c11 -D_POSIX_C_SOURCE=199309L "$llama2c_src" -o build/keel-llama2c-bench -lm
fi
echo "$stamp" > build/shim.stamp
echo "$lib" > build/libtorch.path
