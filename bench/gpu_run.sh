#!/usr/bin/env bash
# One call on a lent GPU machine: build with CUDA, run the CUDA + Triton tests, benchmark.
# Results land in $OUT (default bench/results); commit them under bench/results/.
#   bash bench/gpu_run.sh            (on the GPU machine, from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# H100/H200 are sm_90: one target keeps the build short. setup.py load-checks the library.
SPARSEKERN_BUILD=cuda TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 \
    python3 setup.py build_ext --inplace 2>&1 | tail -5
python3 sparsekern/_build/library_check.py --import-sparsekern --keys CPU,CUDA,Meta
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton.py tests/test_ops.py \
    2>&1 | tee "$OUT/gpu-tests.log" | tail -15
for dtype in float32 bfloat16; do
    python3 bench/ops.py --device cuda --dtype "$dtype" --sizes 1M,4M,16M,64M,256M \
        --out "$OUT/cuda-$dtype-ops.json" 2>&1 | tee "$OUT/cuda-$dtype-bench.log" | tail -40
done
