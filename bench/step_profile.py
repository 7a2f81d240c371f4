"""Where one training step's time goes: sparsekern vs the plain formula, per profiler event.

    python bench/step_profile.py --model lenet300 --method str --mode compile --threads 1

Builds the same steps as ``bench/train_step.py`` (``METHOD`` and ``METHOD-plain``), warms them
up, then profiles ``--steps`` steps of each, alternating ``--reps`` times, and prints the self CPU
time per step of every profiler event, largest difference first. For a gap too small for the
paired timings to resolve, this says which part of the step it is in (e.g. dynamo's guard
evaluation, "TorchDynamo Cache Lookup", against the compiled graph's own kernels).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS, make_step  # noqa: E402  (sets the inductor cache off, as the timings)

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402


def self_times(step, steps: int) -> dict[str, float]:
    """Self CPU microseconds per step of each profiler event over ``steps`` steps."""
    with profile() as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / steps for e in prof.key_averages()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet300", choices=sorted(MODELS))
    p.add_argument("--method", default="str", choices=("str", "l0"))
    p.add_argument("--mode", default="compile", choices=("eager", "compile"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100, help="steps per profiled stretch")
    p.add_argument("--reps", type=int, default=2, help="stretches per variant, alternating")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (args.method, args.method + "-plain")
    steps = {n: make_step(args.model, n, args.mode, "cpu", False) for n in names}
    for step in steps.values():
        for _ in range(10):
            step()
    totals: dict[str, dict[str, float]] = {n: {} for n in names}
    for _ in range(args.reps):
        for n, step in steps.items():
            for key, us in self_times(step, args.steps).items():
                totals[n][key] = totals[n].get(key, 0.0) + us / args.reps
    ours, plain = (totals[n] for n in names)
    print(f"{args.model} {args.mode}, {args.threads} thread(s), {args.reps} x {args.steps} steps each: self CPU us/step")
    print(f"total: {names[0]} {sum(ours.values()):.1f}, {names[1]} {sum(plain.values()):.1f}")
    print(f"| event | {names[0]} | {names[1]} | difference |\n|---|---:|---:|---:|")
    keys = sorted(set(ours) | set(plain), key=lambda k: -abs(ours.get(k, 0.0) - plain.get(k, 0.0)))
    for key in keys[:args.top]:
        a, b = ours.get(key, 0.0), plain.get(key, 0.0)
        print(f"| {key[:60]} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
