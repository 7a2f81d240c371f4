#!/usr/bin/env bash
# `make cuda-check`: the CUDA build of sparsekern, built, loaded and inspected without a GPU.
#  1. a venv with the CUDA build of torch (pinned; cached outside the clone, reused when complete)
#  2. the setup.py CUDA build, as the wheel users get (SASS for sm_80/90/100 + PTX), inspected
#     with cuobjdump, installed, and loaded in a fresh process: every op has CPU, CUDA, Meta kernels
#  3. the op tests and the torchvision data tests in that venv, against the installed wheel
#  4. the Triton AOT compile of every kernel variant for sm_80, sm_90 and sm_100
#  5. the CMake CUDA build with a pinned cmake, loaded with torch.ops.load_library
#  6. bench/gpu_run.sh preflight build: the GPU run's first stages (in-place sm_90 build, load check)
# The wheel build compiles the torch binding with nvcc and the C++ standard this torch wants, so
# `.ci/nvcc_check.sh --binding` (for a machine with a CPU-only torch) is not run here.
# Needs nvcc (CUDA 13) on PATH or CUDA_HOME; the torch wheels come from pip's index.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_PIN=2.14.1
TORCHVISION_PIN=0.29.1
CMAKE_PIN=3.31.6
VENV=${SPARSEKERN_CUDA_VENV:-$HOME/.cache/sparsekern/cuda-venv-torch$TORCH_PIN}
JOBS=${MAX_JOBS:-$(nproc)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { echo "== cuda-check [$((SECONDS - START)) s]: $*"; }
fail() { echo "cuda-check FAILED: $*" >&2; exit 1; }

step "venv $VENV"
REQS="torch==$TORCH_PIN torchvision==$TORCHVISION_PIN cmake==$CMAKE_PIN numpy ninja setuptools wheel pybind11 pytest"
REQS="$REQS scikit-learn matplotlib tqdm"
STAMP="$VENV/.sparsekern-requirements"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$REQS" ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $REQS
    echo "$REQS" > "$STAMP"  # written last: an interrupted install is redone
fi
PY="$VENV/bin/python"
"$PY" -c "import torch; assert torch.version.cuda, 'torch in the venv has no CUDA'; print('torch', torch.__version__)"
CUDA_ROOT=$("$PY" sparsekern/_build/cuda_toolkit.py) || fail "no usable CUDA toolkit"

step "wheel (setup.py CUDA build, default TORCH_CUDA_ARCH_LIST)"
mkdir -p "$WORK/src"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && env -u TORCH_CUDA_ARCH_LIST SPARSEKERN_BUILD=cuda SPARSEKERN_CPU_ARCH=portable MAX_JOBS="$JOBS" \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps . -w "$WORK/wheel") \
    > "$WORK/wheel.log" 2>&1 || { tail -40 "$WORK/wheel.log"; fail "wheel build"; }
grep "^sparsekern:" "$WORK/wheel.log" || true
WHEEL=$(ls "$WORK"/wheel/sparsekern-*.whl)
"$PY" -m zipfile -e "$WHEEL" "$WORK/unpacked"
SO=$(ls "$WORK"/unpacked/sparsekern/_C*.so)
# cuobjdump: the toolkit's, else the one Triton bundles (minimal toolkits lack it).
CUOBJDUMP="$CUDA_ROOT/bin/cuobjdump"
[[ -x "$CUOBJDUMP" ]] || CUOBJDUMP=$("$PY" -c \
    "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/cuobjdump'))")
ELF=$("$CUOBJDUMP" --list-elf "$SO" || true)
PTX=$("$CUOBJDUMP" --list-ptx "$SO" || true)
for arch in sm_80 sm_90 sm_100; do
    grep -q "\.$arch\.cubin" <<< "$ELF" || fail "no $arch SASS in $(basename "$WHEEL")"
done
grep -q "sm_100\.ptx" <<< "$PTX" || fail "no PTX for sm_100 in $(basename "$WHEEL")"
echo "wheel $(basename "$WHEEL"): SASS $(grep -o 'sm_[0-9]*' <<< "$ELF" | sort -u | tr '\n' ' ')+ PTX $(grep -o 'sm_[0-9]*' <<< "$PTX" | sort -u | tr '\n' ' ')"

step "install the wheel, load it in a fresh process"
"$PY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
# From outside the source tree, so `import sparsekern` is the installed wheel.
(cd "$WORK" && "$PY" "$ROOT/sparsekern/_build/library_check.py" --import-sparsekern --keys CPU,CUDA,Meta) \
    || fail "installed wheel does not load"
(cd "$WORK" && "$PY" -W error::RuntimeWarning -c "import sparsekern; print('available_backends:', sparsekern.available_backends())")

step "tests in the CUDA venv against the installed wheel (CUDA tests skip): ops, opcheck, torchvision data"
(cd "$WORK" && "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" -x \
    "$ROOT/tests/test_build.py::test_opcheck" "$ROOT/tests/test_ops.py" "$ROOT/tests/test_training_options.py") \
    | tail -3

step "Triton AOT compile"
# A fresh cache: a cached cubin would skip the compile this step exists to run.
(cd "$WORK" && env -u TRITON_INTERPRET TRITON_CACHE_DIR="$WORK/triton-cache" "$PY" -m sparsekern.backends.triton.aot_check --arch 80,90,100)

step "CMake CUDA build (cmake $CMAKE_PIN), loaded with torch.ops.load_library"
NVRTC=$(ls "$("$PY" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')"/nvidia/cu*/lib/libnvrtc.so.* \
    | head -1)
TORCH_PREFIX=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
TORCH_CUDA_ARCH_LIST=9.0 "$VENV/bin/cmake" -S "$WORK/src" -B "$WORK/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
    -DSPARSEKERN_WITH_CUDA=ON -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DCUDAToolkit_ROOT="$CUDA_ROOT" \
    -DCMAKE_CUDA_COMPILER="$CUDA_ROOT/bin/nvcc" -DCUDA_NVRTC_LIB="$NVRTC" \
    > "$WORK/cmake.log" 2>&1 || { tail -40 "$WORK/cmake.log"; fail "cmake configure"; }
"$VENV/bin/cmake" --build "$WORK/cmake" -j "$JOBS" > "$WORK/cmake-build.log" 2>&1 \
    || { tail -40 "$WORK/cmake-build.log"; fail "cmake build"; }
(cd "$WORK" && "$PY" "$ROOT/sparsekern/_build/library_check.py" --library "$WORK/cmake/libsparsekern_ops.so" \
    --keys CPU,CUDA) || fail "CMake library does not load"

step "bench/gpu_run.sh preflight build (the first stages of a lent GPU machine's run; no GPU needed)"
# In the source copy: its in-place build must not replace the checkout's own sparsekern/_C*.so.
(cd "$WORK/src" && PYTHON="$PY" OUT="$WORK/gpu-run" MAX_JOBS="$JOBS" CUDA_HOME="$CUDA_ROOT" \
    bash bench/gpu_run.sh preflight build) || fail "bench/gpu_run.sh preflight build"
grep -q "^build  *ok" "$WORK/gpu-run/gpu-run-summary.txt" || fail "bench/gpu_run.sh skipped the build"

step "all CUDA build checks passed"
