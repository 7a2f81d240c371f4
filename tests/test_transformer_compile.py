"""torch.compile(fullgraph=True) of transformers with head and neuron gates: training steps
compile once (no recompile after the first step), on every supported architecture (str / l0 /
gmp: tests/test_transformer_compile_sparse.py)."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import sparsekern as sk
from transformer_cases import _forward, _input, _model

pytestmark = pytest.mark.usefixtures("one_thread")
# one method per model keeps the file short; both place the same gates (dep_l0 adds the generator)
CASES = {"bert": "l0_hc", "gpt2": "dep_l0", "vit": "l0_hc", "llama": "dep_l0", "transformer": "dep_l0",
         "torch_encoder": "l0_hc", "llama_gqa": "l0_hc"}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_gated_training_steps_compile_once(kind):
    torch._dynamo.reset()
    model = sk.sparsify(_model(kind), CASES[kind])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda x: _forward(model, x), fullgraph=True, backend=counter)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    before = [p.detach().clone() for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n]
    for step in range(3):
        x = _input(kind)
        loss = compiled(x).square().mean() + sk.regularization(model, lam=1e-6, num_samples=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert counter.frame_count == 1, f"step {step}: {counter.frame_count} compiles"
    after = [p for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))  # the gates train through the graph

