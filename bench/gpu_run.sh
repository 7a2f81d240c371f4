#!/usr/bin/env bash
# On a lent GPU machine: build with CUDA, run the GPU tests, benchmark. Results land in $OUT
# (default bench/results); commit them under bench/results/ with the device name.
#   bash bench/gpu_run.sh [STAGE ...]     (on the GPU machine, from the repository root)
# Stages, in order by default (each meant to fit one 10-minute device call; the build persists between
# calls on a warm machine):
#   preflight  what the stages need and what is missing, in one screen (always cheap; no GPU needed)
#   build   CUDA build for sm_90 (H100/H200) and a load check of the library (no GPU needed)
#   test    the CUDA/Triton op tests, the compiled-graph tests (inductor, reduce-overhead), noise state
#           (needs pytest)
#   ops     bench/ops.py fp32 and bf16, 1M-256M elements, and the per-call latency at 1K
#   train, train-compile
#           bench/train_step.py: ResNet-50 batch 256 bf16 autocast, dense/STR/L0 and their plain
#           versions, eager (train) and under torch.compile (train-compile: 5 compiles of ResNet-50)
#           (ResNet-50 is built in when torchvision is missing; plots need matplotlib, else JSON only)
# Every stage runs and reports on its own: a failing or skipped stage does not stop the others.
# The summary at the end lists stage, status, exit code and seconds; the exit code is 1 if any
# stage failed. Missing packages can come from wheels brought along: WHEELS=DIR installs what is
# missing from DIR with pip --no-index (the lent machines have no internet).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build is what the stages import
# nvcc off PATH (the lent machines): the toolkit where torch looks last too.
if ! command -v nvcc >/dev/null 2>&1 && [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
[[ -n "${CUDA_HOME:-}" ]] && export PATH="$CUDA_HOME/bin:$PATH"

has() { "$PY" -c "import $1" >/dev/null 2>&1; }
gpu() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

if [[ -n "${WHEELS:-}" ]]; then
  for pkg in pytest matplotlib torchvision; do
    has "$pkg" || "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$pkg" || echo "WHEELS: no $pkg in $WHEELS"
  done
fi

preflight() {
  echo "python   $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  "$PY" -c "import torch; print('torch   ', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" \
    || echo "torch    MISSING (every stage needs it)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  else
    echo "nvidia-smi missing (no GPU: build only)"
  fi
  echo "nvcc     $(command -v nvcc || echo "MISSING (build needs it; set CUDA_HOME)")  CUDA_HOME=${CUDA_HOME:-unset}"
  for pkg in ninja triton pytest matplotlib torchvision; do
    if has "$pkg"; then echo "$(printf '%-8s' "$pkg") ok"; else echo "$(printf '%-8s' "$pkg") MISSING"; fi
  done
  echo "stages: build needs nvcc+ninja; test needs pytest and a GPU; ops/train need a GPU;"
  echo "        no matplotlib: no plots (JSON only); no torchvision: the built-in ResNet-50"
}

build() {
  command -v nvcc >/dev/null 2>&1 || { echo "SKIP build: no nvcc (set CUDA_HOME)"; return 200; }
  has ninja || { echo "SKIP build: no ninja"; return 200; }
  SPARSEKERN_BUILD=cuda TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  local rc=$?
  tail -5 "$OUT/build.log"
  [[ $rc == 0 ]] || return $rc
  # as a module from the repository root: sparsekern is importable from the in-place build
  "$PY" -m sparsekern._build.library_check --import-sparsekern --keys CPU,CUDA,Meta
}

run_tests() {
  has pytest || { echo "SKIP test: pytest is not installed (bring its wheel: WHEELS=DIR)"; return 200; }
  gpu || { echo "SKIP test: no GPU"; return 200; }
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton.py tests/test_ops.py \
    tests/test_inductor_decomps.py tests/test_noise_state.py tests/test_noise_sync.py tests/test_triton_noise.py \
    tests/test_fast_path.py tests/test_compile_models.py tests/test_selftest_devices.py \
    > "$OUT/gpu-tests.log" 2>&1
  local rc=$?
  tail -15 "$OUT/gpu-tests.log"
  return $rc
}

ops() {
  gpu || { echo "SKIP ops: no GPU"; return 200; }
  local rc=0
  for dtype in float32 bfloat16; do
    "$PY" bench/ops.py --device cuda --dtype "$dtype" --sizes 1K,1M,4M,16M,64M,256M \
      --out "$OUT/cuda-$dtype-ops.json" > "$OUT/cuda-$dtype-bench.log" 2>&1 || rc=$?
    tail -40 "$OUT/cuda-$dtype-bench.log"
  done
  return $rc
}

train() {
  gpu || { echo "SKIP $1: no GPU"; return 200; }
  local mode
  mode=$([ "$1" = train ] && echo eager || echo compile)
  "$PY" bench/train_step.py --device cuda --models resnet50 --rounds 20 --modes "$mode" \
    --methods dense,str,str-plain,l0,l0-plain --out "$OUT/cuda-train-step-$mode.json" \
    > "$OUT/cuda-train-step-$mode.log" 2>&1
  local rc=$?
  tail -12 "$OUT/cuda-train-step-$mode.log"
  return $rc
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(preflight build test ops train train-compile)
summary=()
failed=0
for stage in "${stages[@]}"; do
  echo "== $stage"
  start=$SECONDS
  case "$stage" in
    preflight) preflight ;;
    build) build ;;
    test) run_tests ;;
    ops) ops ;;
    train|train-compile) train "$stage" ;;
    *) echo "unknown stage $stage (preflight, build, test, ops, train, train-compile)"; false ;;
  esac
  rc=$?
  status=ok
  if [[ $rc == 200 ]]; then status=skipped; elif [[ $rc != 0 ]]; then status=FAILED; failed=1; fi
  summary+=("$(printf '%-14s %-8s rc=%-4s %6ss' "$stage" "$status" "$rc" "$((SECONDS - start))")")
done
echo "== summary (stage, status, exit code, seconds)"
printf '%s\n' "${summary[@]}" | tee "$OUT/gpu-run-summary.txt"
exit $failed
