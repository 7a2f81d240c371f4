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
SPARSEKERN_BUILD=cuda python3 setup.py build_ext --inplace -j 16 2>&1 | tail -5
python3 -c "import sparsekern; print('backends:', sparsekern.available_backends())"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton.py tests/test_ops.py \
    2>&1 | tee "$OUT/gpu-tests.log" | tail -15
for dtype in float32 bfloat16; do
    python3 bench/ops.py --device cuda --dtype "$dtype" --sizes 1M,4M,16M,64M,256M \
        --out "$OUT/cuda-$dtype-ops.json" 2>&1 | tee "$OUT/cuda-$dtype-bench.log" | tail -40
done
