#!/usr/bin/env bash
# Compiles the pure CUDA kernel files (csrc/cuda/*_kernels.cu: CUDA + csrc/include only,
# every template instantiated for float/half/bfloat16 by its launchers) for sm_90,
# warnings as errors, into a temp dir. No GPU and no torch needed; fails on any error.
#   .ci/nvcc_check.sh            kernel files only (~20 s)
#   .ci/nvcc_check.sh --binding  also the torch binding csrc/cuda/ops_cuda.cu (~2 min; works
#                                with a CPU-only torch by stubbing its CUDA cmake header), in the
#                                C++ standard $PYTHON's torch builds extensions with
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
ARCH=${ARCH:-sm_90}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# torch's CUDAExtension adds the __CUDA_NO_*__ defines: compile the kernels the way setup.py will.
FLAGS=(-std=c++17 -arch="$ARCH" -O3 -I csrc/include --expt-relaxed-constexpr -Werror all-warnings
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
  -D__CUDA_NO_HALF2_OPERATORS__)

pids=()
for src in csrc/cuda/*_kernels.cu; do
  "$NVCC" "${FLAGS[@]}" -c "$src" -o "$OUT/$(basename "$src").o" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

if [[ "${1:-}" == "--binding" ]]; then
  # The standard torch.utils.cpp_extension passes (torch >= 2.13's ATen needs C++20).
  CXX_STD=$("$PYTHON" -c "import inspect, torch.utils.cpp_extension as c; print('c++20' if '-std=c++20' in inspect.getsource(c) else 'c++17')")
  TORCH_INC=$("$PYTHON" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
  PY_INC=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  mkdir -p "$OUT/stub/c10/cuda/impl"  # absent from CPU-only torch wheels
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$OUT/stub/c10/cuda/impl/cuda_cmake_macros.h"
  # shellcheck disable=SC2086
  "$NVCC" -std="$CXX_STD" -arch="$ARCH" -I csrc/include $TORCH_INC -I "$PY_INC" -I "$OUT/stub" \
    --expt-relaxed-constexpr -c csrc/cuda/ops_cuda.cu -o "$OUT/ops_cuda.o" || status=1
fi

if [[ $status -ne 0 ]]; then
  echo "nvcc check FAILED" >&2
  exit 1
fi
echo "nvcc check OK: $(ls "$OUT"/*.o | wc -l) object file(s) for $ARCH"
