"""`sparsekern selftest` checks each backend on its own device: CUDA tensors for cuda and
compiled Triton when there is a GPU (issue 18, defect 11). The selection is tested on CPU by
faking a GPU; the GPU test runs the real thing."""
from __future__ import annotations

import pytest
import torch

from sparsekern import backends
from sparsekern.backends import registry
from sparsekern.cli import selftest


def _fake(monkeypatch, *, gpu: bool, interpreted: bool, available=("cpu", "cuda", "triton")):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(registry, "triton_interpreted", lambda: interpreted)
    monkeypatch.setattr(backends, "is_available", lambda name: name in available + ("torch", "auto"))


def test_gpu_machine_checks_cuda_and_triton_on_cuda_tensors(monkeypatch):
    _fake(monkeypatch, gpu=True, interpreted=False)
    chosen, skipped = selftest.targets()
    assert [(n, d.type) for n, d in chosen] == [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
    assert skipped == []


def test_interpreted_triton_runs_on_cpu_tensors(monkeypatch):
    for gpu in (False, True):
        _fake(monkeypatch, gpu=gpu, interpreted=True)
        assert selftest.device_for("triton").type == "cpu"
        assert selftest.device_for("cpu").type == "cpu"


def test_without_gpu_cuda_is_reported_not_checked(monkeypatch):
    _fake(monkeypatch, gpu=False, interpreted=True, available=("cpu", "triton"))
    chosen, skipped = selftest.targets()
    assert [(n, d.type) for n, d in chosen] == [("cpu", "cpu"), ("triton", "cpu")]
    assert len(skipped) == 1 and skipped[0].startswith("cuda (needs a GPU")


def test_check_builds_its_inputs_on_the_given_device(monkeypatch):
    seen = []
    real = selftest._run

    def spy(fn, inputs):
        seen.extend(t.device.type for t in inputs)
        return real(fn, inputs)

    monkeypatch.setattr(selftest, "_run", spy)
    rows = selftest.check("torch", torch.float32, (4, 3, 2, 2), device="cpu")
    assert rows and all(r[-1] for r in rows) and set(seen) == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_selftest_on_a_gpu_checks_cuda_tensors(capsys):
    assert selftest.main(["--dtypes", "float32"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.endswith(" ok")]
    for name in ("cuda", "triton"):
        if backends.is_available(name) and not registry.triton_interpreted():
            assert [name, "cuda"] in rows, name
