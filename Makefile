# `make test` and `make demo` work on a fresh machine: each installs what it needs.
PY ?= python3
TORCH_VERSION ?= 2.13.0
PIP := $(PY) -m pip install -q --disable-pip-version-check
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: deps build test test-fast demo selftest bench nvcc-check clean

# torch: the local CPU build when torch is absent (a plain `pip install torch` would pull CUDA).
deps:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	@$(PY) -c "import numpy, pybind11, ninja, pytest, sklearn, matplotlib, tqdm, setuptools, wheel" 2>/dev/null \
		|| $(PIP) numpy pybind11 ninja pytest scikit-learn matplotlib tqdm setuptools wheel
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) triton || echo "triton unavailable: its backend is skipped"

# Builds sparsekern/_C in place and installs the package (editable) for the `sparsekern` command.
build: deps
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@$(PY) -c "import sparsekern, sys; from sparsekern import _extension as e; sys.exit(e.LOAD_ERROR is not None)" \
		|| (echo "compiled extension failed to load"; exit 1)

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

clean:
	rm -rf build *.egg-info sparsekern/_C*.so
