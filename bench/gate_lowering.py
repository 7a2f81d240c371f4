"""Compiled training steps with each inductor gate lowering (issue 21): ``kernel`` (our compiled
gate kernels, opaque to inductor) vs ``decompose`` (the Philox stream and hard-concrete math as
tensor ops inductor fuses, ``sparsekern.ops.gate_decomposition``), and the plain-PyTorch L0.

    python bench/gate_lowering.py                        # lenet300 + lenet5, 1 thread, 20 rounds
    python bench/gate_lowering.py --threads 2 --rounds 30
    python bench/gate_lowering.py --ops                  # the three ops alone, fwd and fwd+bwd
    python bench/gate_lowering.py --philox               # the uniform stream alone

Models: LeNet-300-100 (batch 512) and LeNet-5-Caffe (batch 128), L0 with one gate per weight
(``l0``, gated_weight) and per neuron (``l0-neuron``, sparsify's default), under
``torch.compile(model, fullgraph=True)``; step = forward, loss + L0 penalty, backward, SGD.
Variants are timed round-robin one step at a time; ``decompose vs kernel`` = kernel ms /
decompose ms per round (> 1: decompose faster), median and quartiles over rounds. The box is
shared: the 1-minute load average is printed before and after the timing.

``--ops``: each gate op alone (compiled, one gate per element: hard_concrete of n gates,
gated_weight of an n-element weight, gated_activation of [n/256, 256]), forward and forward +
backward, ns per element, same round-robin pairing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # the lowering is chosen when a graph compiles
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_layers import plain_l0_penalty, plainify  # noqa: E402
from train_step import paired  # noqa: E402

import sparsekern  # noqa: E402
from sparsekern.models import build_model  # noqa: E402
from sparsekern.ops import inductor  # noqa: E402
from sparsekern.pruning import regularization, sparsify  # noqa: E402

MODELS = {"lenet300": 512, "lenet5": 128}  # name -> batch (MNIST-shaped input)
METHODS = {"l0": {"granularity": "weight"}, "l0-neuron": {}}
LAM = 1e-6


def make_step(model_name: str, method: str, lowering: str | None):
    """A compiled training step, compiled now (the lowering is read while the graph is traced)."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, in_channels=1, image_size=28)
    if method == "l0-plain":
        plainify(model, "l0")
        penalty = lambda: LAM * plain_l0_penalty(model)  # noqa: E731
    else:
        sparsify(model, "l0", **METHODS[method])
        penalty = lambda: regularization(model, lam=LAM, num_samples=1)  # noqa: E731
    model.train()
    forward = torch.compile(model, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    batch = MODELS[model_name]
    x, y = torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen)

    def step():
        inductor.set_inductor_gates(lowering)  # dynamo guards on it: each variant runs its own graph
        loss = nn.functional.cross_entropy(forward(x), y) + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # compiles
    step.first_s = time.perf_counter() - start
    for _ in range(2):  # warm the allocator
        step()
    return step


def _op_call(op: str, n: int, backward: bool, lowering: str):
    gen = torch.Generator().manual_seed(0)
    la = torch.randn(n if op != "gated_activation" else 256, generator=gen).requires_grad_(backward)
    data = {"hard_concrete": (), "gated_weight": (torch.randn(n, generator=gen),),
            "gated_activation": (torch.randn(n // 256, 256, generator=gen),)}[op]
    noise = torch.tensor([7, 0], dtype=torch.int64)
    fn = getattr(sparsekern, op)
    compiled = torch.compile(lambda *a: fn(*a), fullgraph=True)
    args = (*data, la, noise)

    def call():
        inductor.set_inductor_gates(lowering)  # dynamo guards on it: each variant runs its own graph
        out = compiled(*args)
        if backward:
            out.sum().backward()
    return call


def bench_ops(rounds: int) -> None:
    print("| op | n | pass | kernel ns/elem | decompose ns/elem | decompose vs kernel (q1-q3) | load avg |")
    print("| --- | ---: | --- | ---: | ---: | --- | --- |")
    for op in ("hard_concrete", "gated_weight", "gated_activation"):
        for n in (1 << 16, 1 << 20):
            for backward in (False, True):
                calls = {}
                torch._dynamo.reset()
                for lowering in ("kernel", "decompose"):
                    calls[lowering] = _op_call(op, n, backward, lowering)
                    for _ in range(3):
                        calls[lowering]()
                times = {k: [] for k in calls}
                load_before = os.getloadavg()[0]
                for _ in range(rounds):
                    for k, call in calls.items():
                        start = time.perf_counter()
                        call()
                        times[k].append(time.perf_counter() - start)
                ns = {k: statistics.median(v) * 1e9 / n for k, v in times.items()}
                ratio, q1, q3 = paired(times["kernel"], times["decompose"])
                print(f"| {op} | {n} | {'fwd+bwd' if backward else 'fwd'} | {ns['kernel']:.2f} | "
                      f"{ns['decompose']:.2f} | {ratio:.2f} ({q1:.2f}-{q3:.2f}) | "
                      f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} |", flush=True)


def bench_philox(rounds: int, n: int = 1 << 20) -> None:
    """ns per uniform: the decomposed stream compiled by inductor vs the C++ kernel (same bits)."""
    from sparsekern.ops import gate_decomposition
    noise = torch.tensor([7, 0], dtype=torch.int64)
    decomposed = torch.compile(lambda noise: gate_decomposition.uniform(n, noise, torch.device("cpu")),
                               fullgraph=True)
    calls = {"kernel": lambda: sparsekern.uniform(n, 7, 0), "decompose": lambda: decomposed(noise)}
    assert torch.equal(calls["kernel"](), calls["decompose"]())
    try:  # a known-good reference: numpy's Philox (4x64-10, one thread), float32 uniforms
        import numpy as np
        numpy_gen = np.random.Generator(np.random.Philox(7))
        calls["numpy Philox4x64"] = lambda: numpy_gen.random(n, dtype=np.float32)
    except ImportError:
        pass
    times = {k: [] for k in calls}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for k, call in calls.items():
            start = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - start)
    ns = ", ".join(f"{k} {statistics.median(v) * 1e9 / n:.2f} ns" for k, v in times.items())
    print(f"uniform, n={n}, per number: {ns} (load {load_before:.1f} -> {os.getloadavg()[0]:.1f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default="l0,l0-neuron")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", action="store_true", help="the gate ops alone instead of training steps")
    p.add_argument("--philox", action="store_true", help="the uniform stream alone")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds")
    if args.philox:
        bench_philox(args.rounds)
        return 0
    if args.ops:
        bench_ops(args.rounds)
        return 0
    print("| model | method | kernel ms | decompose ms | plain ms | decompose vs kernel (q1-q3) | load avg "
          "| first step s (compile), kernel / decompose |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- | --- |")
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            torch._dynamo.reset()  # no graph of an earlier group is reused (same forward code objects)
            steps = {lowering: make_step(model_name, method, lowering) for lowering in ("kernel", "decompose")}
            if method == "l0":
                steps["plain"] = make_step(model_name, "l0-plain", None)
            times = {k: [] for k in steps}
            load_before = os.getloadavg()[0]
            for _ in range(args.rounds):
                for k, step in steps.items():
                    start = time.perf_counter()
                    step()
                    times[k].append(time.perf_counter() - start)
            load_after = os.getloadavg()[0]
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            ratio, q1, q3 = paired(times["kernel"], times["decompose"])
            plain = f"{ms['plain']:.2f}" if "plain" in ms else "-"
            print(f"| {model_name} | {method} | {ms['kernel']:.2f} | {ms['decompose']:.2f} | {plain} | "
                  f"{ratio:.2f} ({q1:.2f}-{q3:.2f}) | {load_before:.1f} -> {load_after:.1f} | "
                  f"{steps['kernel'].first_s:.0f} / {steps['decompose'].first_s:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
