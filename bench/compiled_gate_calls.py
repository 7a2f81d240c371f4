"""What the direct gate calls save in a compiled training step (issue 8).

A compiled L0 model calls, per gated layer and step, ``take_noise`` and the gate op forward and
backward. ``direct``: the C++ ops (``sparsekern_C::take_noise``, and ``sparsekern_C::<op>_at``
and its backward, to which sparsekern.ops.inductor sends ``sparsekern::<op>_at`` under
inductor on the compiled backends). ``custom-op``: the Python custom ops around the same kernels,
as before (``sparsekern::take_noise`` and the ``<op>_at_any`` copies). A small model makes the
per-call cost visible: 10 L0 Linear(64, 64) layers with a gate per weight, batch 8,
``torch.compile(fullgraph=True)``, SGD.

    OMP_NUM_THREADS=1 python bench/compiled_gate_calls.py [--pairs 4]

Each variant runs in its own process (inductor's caches off), alternating, ``--pairs`` times;
per process the best and the median of 21 timings of 100 steps (this process's CPU time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import timeit

VARIANTS = ("custom-op", "direct")


def _measure(variant: str) -> tuple[float, float]:
    import torch

    import sparsekern  # noqa: F401
    from sparsekern.ops import inductor as inductor_decomps
    from sparsekern.ops import noise as noise_ops
    from sparsekern.pruning import sparsify

    torch.set_num_threads(1)
    if variant == "custom-op":
        def through_custom_op(name, n, backward):
            op = getattr(torch.ops.sparsekern, f"{name}{'_at_backward' if backward else '_at'}_any").default
            return lambda *args: op(*args)
        inductor_decomps._gate_call = through_custom_op
        noise_ops._COMPILED_TAKE_NOISE.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(10)])
    sparsify(model, "l0", granularity="weight")
    forward = torch.compile(model, fullgraph=True)
    x = torch.randn(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        forward(x).sum().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(5):
        step()
    times = timeit.Timer(step, timer=time.process_time).repeat(number=100, repeat=21)
    return min(times) / 100 * 1e6, statistics.median(times) / 100 * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.variant:
        print(*_measure(args.variant))
        return 0
    env = dict(os.environ, TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0", OMP_NUM_THREADS="1")
    best = {v: [] for v in VARIANTS}
    print("variant     best us/step  median us/step")
    for _ in range(args.pairs):
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--variant", v], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            low, median = float(out[-2]), float(out[-1])
            best[v].append(low)
            print(f"{v:<12}{low:>13.0f}{median:>16.0f}", flush=True)
    ratio = statistics.median(a / b for a, b in zip(best["custom-op"], best["direct"]))
    print(f"custom-op / direct (median over pairs of the best): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
