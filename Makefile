# `make test` and `make demo` work on a fresh machine: each installs what it needs.
# PY=... picks the interpreter. Unset, it is python3, except where python3 is a PEP 668 "externally
# managed" system Python (Debian/Ubuntu /usr/bin/python3), which refuses pip installs: there the
# targets create and use a virtual environment in .venv.
SYSTEM_PY ?= python3
VENV := .venv
ifndef PY
  MANAGED := $(shell $(SYSTEM_PY) -c "import os, sys, sysconfig; print(int(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))))" 2>/dev/null)
  ifeq ($(MANAGED),1)
    PY := $(VENV)/bin/python
  else
    PY := $(SYSTEM_PY)
  endif
endif
TORCH_VERSION ?= 2.13.0
PIP := $(PY) -m pip install -q --disable-pip-version-check
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

# Hugging Face transformers (+ accelerate, the Trainer's) for tests/test_hf_gpt2.py and tests/test_integrations_hf.py,
# installed --no-deps so pip never replaces torch:
# transformers and hub pinned to the tested pair, then what importing them needs.
HF_DEPS := transformers==5.25.0 huggingface_hub==2.4.0 tokenizers safetensors regex pyyaml packaging filelock \
	requests tqdm fsspec typing_extensions httpx2 httpcore2 anyio h11 idna sniffio truststore kernels \
	accelerate==1.16.0 psutil
# Lightning for tests/test_integrations_lightning.py, the same way (--no-deps keeps the CPU torch): the tested
# versions, then what importing lightning.pytorch needs.
LIGHTNING_DEPS := lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 fsspec pyyaml tqdm packaging \
	typing_extensions

.PHONY: deps build test test-slow demo selftest bench nvcc-check cuda-check cuda-emulate clean

# torch: the local CPU build when torch is absent (a plain `pip install torch` would pull CUDA).
deps: $(filter $(VENV)/bin/python,$(PY))
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	@$(PY) -c "import numpy, pybind11, ninja, pytest, sklearn, matplotlib, tqdm, setuptools, wheel, mlxtend" 2>/dev/null \
		|| $(PIP) numpy pybind11 ninja pytest scikit-learn matplotlib tqdm setuptools wheel mlxtend
	@# export formats (none depends on torch, so the CPU torch above stays): `sparsekern export --format ...`
	@$(PY) -c "import safetensors, onnx, onnxruntime, onnxscript" 2>/dev/null \
		|| $(PIP) safetensors onnx onnxruntime onnxscript || echo "export packages unavailable: their tests are skipped"
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) triton || echo "triton unavailable: its backend is skipped"
	@$(PY) -c "import transformers, accelerate" 2>/dev/null || $(PIP) --no-deps $(HF_DEPS) || echo "transformers unavailable: its tests are skipped"
	@$(PY) -c "import lightning.pytorch" 2>/dev/null || $(PIP) --no-deps $(LIGHTNING_DEPS) || echo "lightning unavailable: its tests are skipped"

$(VENV)/bin/python:
	@echo "$(SYSTEM_PY) is an externally managed system Python (PEP 668): installing into a virtual environment, $(VENV)"
	@$(SYSTEM_PY) -m venv $(VENV) || { echo "could not create $(VENV): install the venv module (Debian/Ubuntu: apt install python3-venv), or pass PY=<a python you may pip-install into>"; exit 1; }

# Builds sparsekern/_C in place and installs the package (editable) for the `sparsekern` command.
# Incremental: ninja keeps its objects under build/temp-<python>-<torch>-<cpu|cuda>/. setup.py
# checks the new library in a child process; the second check imports the package as users do.
build: deps
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@cd /tmp && $(PY) -W error::RuntimeWarning -c "import sparsekern" || (echo "import sparsekern failed or fell back"; exit 1)

# TRITON_INTERPRET=1 (set in tests/conftest.py when there is no GPU) runs the Triton kernels on CPU.
# `make test`: every test but the `slow` ones (inductor compiles of the decomposed Philox gates,
# multi-process FSDP runs, ...: minutes of compiling on 2 cores), so it stays under 15 minutes;
# `make test-slow` runs those; CI (.ci/run) runs both.
test: build
	$(PYTEST) tests -m "not slow"

test-slow: build
	$(PYTEST) tests -m slow

demo: build
	$(PY) -m sparsekern demo

selftest: build
	$(PY) -m sparsekern selftest

bench: build
	$(PY) bench/ops.py

# Compiles the torch-free CUDA kernel code for sm_90 (catches kernel errors without a GPU).
nvcc-check:
	bash .ci/nvcc_check.sh

# The CUDA kernels run without a GPU (tests/cuda_emulation): csrc/cuda compiled unmodified by g++
# under an emulation header, compared with the CPU kernels and the reference, run under ASan+UBSan
# and TSan, and mutants that must fail. Builds under build/cuda-emulation/ (incremental).
cuda-emulate: build
	$(PY) tests/cuda_emulation/emu_build.py
	$(PYTEST) tests/cuda_emulation

# The CUDA build without a GPU: wheel for sm_80/90/100 + PTX, load checks, nvcc binding
# compile, Triton AOT, CMake build (.ci/cuda_check.sh; needs nvcc, caches a venv in ~/.cache).
cuda-check:
	bash .ci/cuda_check.sh

clean:
	rm -rf build *.egg-info sparsekern/_C*.so
