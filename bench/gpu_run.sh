#!/usr/bin/env bash
# On a lent GPU machine: build with CUDA, run the GPU tests, benchmark. Results land in $OUT
# (default bench/results); commit them under bench/results/ with the device name.
#   bash bench/gpu_run.sh [STAGE ...]     (on the GPU machine, from the repository root)
# Stages, in order by default (each meant to fit one 10-minute device call; the build persists between
# calls on a warm machine):
#   build   CUDA build for sm_90 (H100/H200) and a load check of the library
#   test    the CUDA/Triton op tests, the compiled-graph tests (inductor, reduce-overhead), noise state
#   ops     bench/ops.py fp32 and bf16, 1M-256M elements, and the per-call latency at 1K
#   train, train-compile
#           bench/train_step.py: ResNet-50 batch 256 bf16 autocast, dense/STR/L0 and their plain
#           versions, eager (train) and under torch.compile (train-compile: 5 compiles of ResNet-50)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test ops train train-compile)
for stage in "${stages[@]}"; do
  case "$stage" in
    build)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
      SPARSEKERN_BUILD=cuda TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 \
          python3 setup.py build_ext --inplace 2>&1 | tail -5
      python3 sparsekern/_build/library_check.py --import-sparsekern --keys CPU,CUDA,Meta ;;
    test)
      python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton.py tests/test_ops.py \
          tests/test_inductor_decomps.py tests/test_noise_state.py tests/test_fast_path.py \
          tests/test_compile_models.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -15 ;;
    ops)
      for dtype in float32 bfloat16; do
        python3 bench/ops.py --device cuda --dtype "$dtype" --sizes 1K,1M,4M,16M,64M,256M \
            --out "$OUT/cuda-$dtype-ops.json" 2>&1 | tee "$OUT/cuda-$dtype-bench.log" | tail -40
      done ;;
    train|train-compile)
      mode=$([ "$stage" = train ] && echo eager || echo compile)
      python3 bench/train_step.py --device cuda --models resnet50 --rounds 20 --modes "$mode" \
          --methods dense,str,str-plain,l0,l0-plain --out "$OUT/cuda-train-step-$mode.json" 2>&1 \
          | tee "$OUT/cuda-train-step-$mode.log" | tail -12 ;;
    *) echo "unknown stage $stage (build, test, ops, train, train-compile)" >&2; exit 2 ;;
  esac
done
