"""torch.compile(fullgraph=True) of the tiny transformers with str / l0 / gmp layers: training
steps compile once (no recompile after the first step)."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import sparsekern as sk
from transformer_cases import _forward, _input, _model

pytestmark = pytest.mark.usefixtures("one_thread")


# str / l0 / gmp: two methods per model in rotation, so each method runs on four of the six models
SPARSE_CASES = [("bert", "str"), ("bert", "l0"), ("gpt2", "l0"), ("gpt2", "gmp"), ("vit", "gmp"), ("vit", "str"),
                ("llama", "str"), ("llama", "l0"), ("transformer", "l0"), ("transformer", "gmp"),
                ("torch_encoder", "gmp"), ("torch_encoder", "str")]


@pytest.mark.parametrize("kind,method", SPARSE_CASES)
def test_sparse_training_steps_compile_once(kind, method):
    torch._dynamo.reset()
    model = sk.sparsify(_model(kind), method)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x: _forward(model, x), fullgraph=True, backend=counter)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for step in range(3):
        loss = compiled(_input(kind)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert counter.frame_count == 1, f"step {step}: {counter.frame_count} compiles"
