"""Compiled training steps with each inductor gate lowering (issue 21): ``kernel`` (our compiled
gate kernels, opaque to inductor) vs ``decompose`` (the Philox stream and hard-concrete math as
tensor ops inductor fuses, ``sparsekern.ops.gate_decomposition``), and the plain-PyTorch L0.

    python bench/gate_lowering.py                        # lenet300 + lenet5, 1 thread, 20 rounds
    python bench/gate_lowering.py --threads 2 --rounds 30

Models: LeNet-300-100 (batch 512) and LeNet-5-Caffe (batch 128), L0 with one gate per weight
(``l0``, gated_weight) and per neuron (``l0-neuron``, sparsify's default), under
``torch.compile(model, fullgraph=True)``; step = forward, loss + L0 penalty, backward, SGD.
Variants are timed round-robin one step at a time; ``decompose vs kernel`` = kernel ms /
decompose ms per round (> 1: decompose faster), median and quartiles over rounds. The box is
shared: the 1-minute load average is printed before and after the timing.
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
        loss = nn.functional.cross_entropy(forward(x), y) + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    inductor.set_inductor_gates(lowering)
    for _ in range(3):  # compile, then warm the allocator
        step()
    inductor.set_inductor_gates(None)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default="l0,l0-neuron")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds")
    print("| model | method | kernel ms | decompose ms | plain ms | decompose vs kernel (q1-q3) | load avg |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
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
                  f"{ratio:.2f} ({q1:.2f}-{q3:.2f}) | {load_before:.1f} -> {load_after:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
