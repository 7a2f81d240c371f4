"""Per-call latency of two public ops at 1K elements (µs, best of 5 x 2000 calls, one thread), as JSON.

    PYTHONPATH=. python bench/call_latency.py       # this checkout; without PYTHONPATH: the installed one
Run two installs alternately to compare them side by side.
"""
import json
import timeit

import torch

import sparsekern as sk

torch.set_num_threads(1)
w, s, la, g = torch.randn(1, 1024), torch.full((1,), -3.0), torch.randn(1, 1024), torch.randn(1, 1024)
wg, sg, lag = w.clone().requires_grad_(), s.clone().requires_grad_(), la.clone().requires_grad_()
CASES = {
    "soft_threshold fwd": lambda: sk.soft_threshold(w, s),
    "soft_threshold fwd+bwd": lambda: torch.autograd.grad(sk.soft_threshold(wg, sg), [wg, sg], g),
    "gated_weight fwd": lambda: sk.gated_weight(w, la, 1234, 0),
    "gated_weight fwd+bwd": lambda: torch.autograd.grad(sk.gated_weight(wg, lag, 1234, 0), [wg, lag], g),
}
N = 2000
print(json.dumps({k: min(timeit.repeat(f, number=N, repeat=5)) / N * 1e6 for k, f in CASES.items()}))
