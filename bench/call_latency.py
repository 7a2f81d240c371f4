"""Per-call latency of every public op at 1K fp32 elements, beside the eager formula it replaces.

    PYTHONPATH=. python bench/call_latency.py [--out run.json]
    (cd /tmp && python /path/to/bench/call_latency.py)    # the installed sparsekern instead
    python bench/call_latency.py --merge before=a.json,b.json after=c.json,d.json [--out both.json]
                                                          # medians of runs, side by side

Variants per op and mode (fwd; fwd+bwd = forward + torch.autograd.grad over the float inputs):
  sparsekern  the public op as a user calls it
  custom-op   the same op with the eager fast path off (sparsekern.ops.fast_path.ENABLED = False): every
              call through its torch.library custom op, the path before issue 8 item 2 (only for
              a sparsekern that has sparsekern.ops.fast_path)
  eager       the torch ops a user would write instead (bench/plain_layers.py: STR's
              sign(w)*relu(abs(w)-sigmoid(s)), gates from torch.rand), with autograd
ratio = sparsekern / eager (<= 1: at or below the eager ops). Timing: one torch thread; all
variants round-robin, `--rounds` x timeit of `--number` calls each, best round per variant
(the minimum filters out the load of a shared machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import timeit

import torch

import sparsekern as sk
from plain_layers import BETA, GAMMA, ZETA, hard_concrete_sample, str_weight

N, SEED = 1024, 1234


def _inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(1, N, generator=g), "s": torch.full((1,), -3.0),
        "la": torch.randn(1, N, generator=g) * 1.5,
        # activations with one gate per (example, channel): a conv's [B, C, H, W] (bench/ops.py's 1K
        # shape) and a dense layer's [B, C], where every element has its own gate
        "x": torch.randn(1, 64, 4, 4, generator=g), "x_dense": torch.randn(16, 64, generator=g),
        "la_c": torch.randn(64, generator=g) * 1.5,
    }


def _plain_activation(x, la):
    z = hard_concrete_sample(la.expand(x.shape[0], -1))
    return x * z.reshape(z.shape + (1,) * (x.dim() - 2))


def _cases() -> dict:
    """op -> (float inputs by name, our call, the eager formula); both take those inputs."""
    return {
        "soft_threshold": (("w", "s"), lambda w, s: sk.soft_threshold(w, s), str_weight),
        "hard_concrete": (("la",), lambda la: sk.hard_concrete(la, SEED, 0), hard_concrete_sample),
        "hard_concrete_eval": (("la",), lambda la: sk.hard_concrete_eval(la),
                               lambda la: (torch.sigmoid(la) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)),
        "l0_norm": (("la",), lambda la: sk.l0_norm(la),
                    lambda la: torch.sigmoid(la - BETA * math.log(-GAMMA / ZETA)).sum()),
        "gated_weight": (("w", "la"), lambda w, la: sk.gated_weight(w, la, SEED, 0),
                         lambda w, la: w * hard_concrete_sample(la)),
        "gated_activation": (("x", "la_c"), lambda x, la: sk.gated_activation(x, la, SEED, 0), _plain_activation),
        "gated_activation dense": (("x_dense", "la_c"), lambda x, la: sk.gated_activation(x, la, SEED, 0),
                                   _plain_activation),
        "uniform": ((), lambda: sk.uniform(N, SEED, 0), lambda: torch.rand(N)),
    }


def _calls(t: dict, names: tuple, fn) -> dict:
    """mode -> zero-argument callable."""
    args = [t[n] for n in names]
    out = {"fwd": lambda: fn(*args)}
    if names:
        leaves = [a.detach().clone().requires_grad_() for a in args]
        grad = torch.ones_like(fn(*args))
        out["fwd+bwd"] = lambda: torch.autograd.grad(fn(*leaves), leaves, grad)
    return out


def _fast_path_switch():
    """sparsekern.ops.fast_path if this sparsekern has the eager fast path, else None."""
    return importlib.import_module("sparsekern.ops.fast_path") if importlib.util.find_spec("sparsekern.ops.fast_path") else None


def measure(rounds: int, number: int) -> dict:
    direct = _fast_path_switch()
    t = _inputs()
    # (op, mode, variant) -> (callable, fast path on)
    runs = {}
    for op, (names, ours, plain) in _cases().items():
        for mode, call in _calls(t, names, ours).items():
            runs[op, mode, "sparsekern"] = (call, True)
            if direct is not None:
                runs[op, mode, "custom-op"] = (call, False)
        for mode, call in _calls(t, names, plain).items():
            runs[op, mode, "eager"] = (call, True)
    best = {k: math.inf for k in runs}
    for _ in range(rounds):
        for key, (call, fast) in runs.items():
            if direct is not None:
                direct.ENABLED = fast
            best[key] = min(best[key], timeit.timeit(call, number=number) / number * 1e6)
    if direct is not None:
        direct.ENABLED = True
    table: dict = {}
    for (op, mode, variant), us in best.items():
        row = table.setdefault(op, {}).setdefault(mode, {})
        row[variant] = round(us, 2)
    for modes in table.values():
        for row in modes.values():
            row["ratio"] = round(row["sparsekern"] / row["eager"], 2)
    return table


def markdown(table: dict) -> str:
    cols = ["sparsekern", "custom-op", "eager", "ratio"]
    lines = ["| op | mode | " + " | ".join(c + (" µs" if c != "ratio" else " (sk / eager)") for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for op, modes in table.items():
        for mode, row in modes.items():
            lines.append(f"| {op} | {mode} | " + " | ".join(str(row.get(c, "-")) for c in cols) + " |")
    return "\n".join(lines)


def merge(labelled: list[str]) -> dict:
    """{label: median over its run files} for LABEL=FILE,FILE,... arguments."""
    out = {}
    for arg in labelled:
        label, files = arg.split("=", 1)
        results = []
        for path in files.split(","):
            with open(path) as f:
                results.append(json.load(f))
        runs = [r["us_per_call"] for r in results]
        table: dict = {}
        for op, modes in runs[0].items():
            for mode, row in modes.items():
                table.setdefault(op, {})[mode] = {
                    v: round(statistics.median(r[op][mode][v] for r in runs), 2) for v in row}
        out[label] = {"config": results[0]["config"], "us_per_call": table, "runs": runs}
    return out


def merged_markdown(merged: dict) -> str:
    """sparsekern µs and sparsekern / eager for each label, eager and custom-op from the last label."""
    labels = list(merged)
    last = merged[labels[-1]]["us_per_call"]
    head = "| op | mode | " + " | ".join(f"{lb} µs | {lb} / eager" for lb in labels) + " | custom-op µs | eager µs |"
    lines = [head, "|---|---|" + "---|---|" * len(labels) + "---|---|"]
    for op, modes in last.items():
        for mode, row in modes.items():
            cells = []
            for lb in labels:
                r = merged[lb]["us_per_call"][op][mode]
                cells.append(f"{r['sparsekern']} | {r['sparsekern'] / r['eager']:.2f}")
            lines.append(f"| {op} | {mode} | " + " | ".join(cells) + f" | {row.get('custom-op', '-')} | {row['eager']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--number", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--merge", nargs="+", metavar="LABEL=FILES", help="combine earlier runs instead")
    args = parser.parse_args()
    if args.merge:
        merged = merge(args.merge)
        print(merged_markdown(merged))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(merged, f, indent=1)
        return
    torch.set_num_threads(1)
    table = measure(args.rounds, args.number)
    result = {"config": {"elements": N, "dtype": "float32", "threads": 1, "rounds": args.rounds,
                         "number": args.number, "torch": torch.__version__, "sparsekern": sk.__file__,
                         "machine": platform.machine()},
              "us_per_call": table}
    print(json.dumps(result))
    print(markdown(table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
