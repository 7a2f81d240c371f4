# `make test` and `make demo` work on a fresh machine: each installs what it needs.
PY ?= python3
TORCH_VERSION ?= 2.13.0
PIP := $(PY) -m pip install -q --disable-pip-version-check
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: deps build test test-fast demo selftest bench nvcc-check cuda-check clean

# torch: the local CPU build when torch is absent (a plain `pip install torch` would pull CUDA).
deps:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	@$(PY) -c "import numpy, pybind11, ninja, pytest, sklearn, matplotlib, tqdm, setuptools, wheel, mlxtend" 2>/dev/null \
		|| $(PIP) numpy pybind11 ninja pytest scikit-learn matplotlib tqdm setuptools wheel mlxtend
	@# export formats (none depends on torch, so the CPU torch above stays): `sparsekern export --format ...`
	@$(PY) -c "import safetensors, onnx, onnxruntime, onnxscript" 2>/dev/null \
		|| $(PIP) safetensors onnx onnxruntime onnxscript || echo "export packages unavailable: their tests are skipped"
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) triton || echo "triton unavailable: its backend is skipped"

# Builds sparsekern/_C in place and installs the package (editable) for the `sparsekern` command.
# Incremental: ninja keeps its objects under build/temp-<python>-<torch>-<cpu|cuda>/. setup.py
# checks the new library in a child process; the second check imports the package as users do.
build: deps
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@cd /tmp && $(PY) -W error::RuntimeWarning -c "import sparsekern" || (echo "import sparsekern failed or fell back"; exit 1)

# TRITON_INTERPRET=1 (set in tests/conftest.py when there is no GPU) runs the Triton kernels on CPU.
test: build
	$(PYTEST) tests

test-fast: build
	$(PYTEST) tests -m "not slow"

demo: build
	$(PY) -m sparsekern demo

selftest: build
	$(PY) -m sparsekern selftest

bench: build
	$(PY) bench/ops.py

# Compiles the torch-free CUDA kernel code for sm_90 (catches kernel errors without a GPU).
nvcc-check:
	bash .ci/nvcc_check.sh

# The CUDA build without a GPU: wheel for sm_80/90/100 + PTX, load checks, nvcc binding
# compile, Triton AOT, CMake build (.ci/cuda_check.sh; needs nvcc, caches a venv in ~/.cache).
cuda-check:
	bash .ci/cuda_check.sh

clean:
	rm -rf build *.egg-info sparsekern/_C*.so
