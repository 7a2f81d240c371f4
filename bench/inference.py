"""CPU inference latency and peak memory: dense vs the models `sparsekern export` writes.

    python bench/inference.py                                   # lenet300, lenet5, resnet20, vgg16; batch 1, 64
    python bench/inference.py --models lenet300 --batches 1 --rounds 5   # quick

Variants per built-in model (MNIST-shaped inputs for the LeNets, CIFAR-shaped for resnet20 / vgg16):

- ``dense``: the model as built (nn.Linear / nn.Conv2d).
- ``shrunk@50``: the structured export, a narrower plain model at ~50% of the dense FLOPs. The widths
  are the full ones scaled by one factor, searched until the FLOPs land on 50% (no training: latency
  depends on the widths, not on which channels a method kept or how accurate it is).
- ``sparse@S``: the unstructured export (``--format sparse``) at S = 90/95/98% weight sparsity:
  each layer CSR or dense, as ``choose_formats`` times it at that batch. The sparse weights are the
  dense model's magnitude-masked to S (one global threshold over every Linear/Conv2d weight), not a
  trained run: a CSR matmul's speed depends on the sparsity and its pattern, not on accuracy.
- ``csr@S``: every layer CSR (what the sparse path costs where it does not pay).

All variants of a (model, batch) are timed round-robin, one block of calls each per round (a block
runs >= 20 ms), ``--rounds`` times; ms is the median per call; ``speedup`` is the per-round ratio
dense / variant (paired, so load that drifts cancels), its median and quartiles. Peak memory is the
allocator's peak during one forward (bench/cpu_memory.py) plus the bytes of the weights themselves.
Every variant's logits are checked against the (masked) dense model's before timing.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_memory import peak_bytes  # noqa: E402
from ops import RESULTS, device_name  # noqa: E402

from sparsekern.models import build_model  # noqa: E402
from sparsekern.pruning import model_widths, sparsity_report  # noqa: E402
from sparsekern.pruning.surgery.export.format_choice import choose_formats  # noqa: E402

SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32),
          "resnet56": (3, 32, 32)}
SPARSITIES = (0.9, 0.95, 0.98)
FLOPS_TARGET = 0.5
BLOCK_S = 0.02


def build(name: str, widths=None) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10, SHAPES[name][0], SHAPES[name][1:], widths=widths).eval()


def flops(model: nn.Module, x: torch.Tensor) -> float:
    return sparsity_report(model, x)["total"]["dense_flops"]


def shrunk(name: str, x: torch.Tensor, target: float) -> tuple[nn.Module, list[int], float]:
    """The model with every gate site's width scaled by one factor, bisected to ``target`` of the FLOPs."""
    full = build(name)
    dense_flops, widths = flops(full, x), model_widths(full)
    lo, hi = 0.05, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        w = [max(1, round(n * mid)) for n in widths]
        lo, hi = (mid, hi) if flops(build(name, w), x) / dense_flops < target else (lo, mid)
    w = [max(1, round(n * hi)) for n in widths]
    model = build(name, w)
    return model, w, flops(model, x) / dense_flops


@torch.no_grad()
def magnitude_masked(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy with the smallest-magnitude ``sparsity`` of all Linear/Conv2d weights set to zero."""
    out = copy.deepcopy(model)
    layers = [m for m in out.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    magnitudes = torch.cat([m.weight.abs().flatten() for m in layers])
    k = max(1, int(sparsity * magnitudes.numel()))
    threshold = magnitudes.kthvalue(k).values
    for m in layers:
        m.weight.mul_(m.weight.abs() > threshold)
    return out


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def variants(name: str, batch: int, rounds: int) -> tuple[dict, dict, torch.Tensor]:
    """name -> (model, reference for its logits); what each variant is; the input batch."""
    x = torch.randn(batch, *SHAPES[name], generator=torch.Generator().manual_seed(1))
    dense = build(name)
    out, info = {"dense": (dense, dense)}, {"dense": {}}
    small, widths, frac = shrunk(name, x[:1], FLOPS_TARGET)
    out["shrunk@50"], info["shrunk@50"] = (small, small), {"widths": widths, "flops_fraction": round(frac, 4)}
    for s in SPARSITIES:
        masked = magnitude_masked(dense, s)
        tag = f"{round(100 * s)}"
        chosen, records = choose_formats(masked, x, rounds=max(5, rounds // 2))
        out[f"sparse@{tag}"] = (chosen, masked)
        info[f"sparse@{tag}"] = {"csr_layers": [n for n, r in records.items() if r["format"] == "csr"],
                                 "layers": len(records), "records": records}
        every, _ = choose_formats(masked, x, rounds=1, margin=math.inf)
        out[f"csr@{tag}"], info[f"csr@{tag}"] = (every, masked), {}
    return out, info, x


def block(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@torch.no_grad()
def bench(name: str, batch: int, rounds: int) -> list[dict]:
    models, info, x = variants(name, batch, rounds)
    calls = {}
    for key, (model, reference) in models.items():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)  # the variant is correct
        once = min(block(model, x, 1) for _ in range(2))  # warm-up, then one timed call
        calls[key] = max(1, math.ceil(BLOCK_S / max(once, 1e-7)))
    times = {key: [] for key in models}
    for _ in range(rounds):  # round-robin: every variant sees the same load
        for key, (model, _) in models.items():
            times[key].append(block(model, x, calls[key]))
    rows = []
    for key, (model, _) in models.items():
        q1, med, q3 = quartiles(times[key])
        s1, speedup, s3 = quartiles([d / t for d, t in zip(times["dense"], times[key])])
        peak = peak_bytes(lambda m=model: m(x))
        rows.append(dict(model=name, batch=batch, variant=key, ms=med * 1e3, ms_quartiles=[q1 * 1e3, q3 * 1e3],
                         speedup=speedup, speedup_quartiles=[s1, s3], peak_forward_mb=peak / 2**20,
                         weights_mb=weight_bytes(model) / 2**20, **{k: v for k, v in info[key].items()
                                                                    if k != "records"},
                         layer_timings=info[key].get("records")))
        print(f"  {name} b{batch} {key:<10} {med * 1e3:9.3f} ms  x{speedup:5.2f} [{s1:.2f}-{s3:.2f}]  "
              f"peak {peak / 2**20:7.2f} MB  weights {rows[-1]['weights_mb']:7.2f} MB", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | variant | ms (median) | speedup vs dense [quartiles] | forward peak KiB | "
             "weights KiB | CSR layers |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        csr = f"{len(r['csr_layers'])}/{r['layers']}" if "csr_layers" in r else ("all" if r["variant"].startswith(
            "csr") else "-")
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x "
                     f"[{r['speedup_quartiles'][0]:.2f}-{r['speedup_quartiles'][1]:.2f}] | "
                     f"{r['peak_forward_mb'] * 1024:.0f} | {r['weights_mb'] * 1024:.0f} | {csr} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet300,lenet5,resnet20,vgg16")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--rounds", type=int, default=15, help="round-robin rounds per (model, batch)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-inference.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",")
    unknown = [m for m in models if m not in SHAPES]
    if unknown or args.rounds < 1:
        p.error(f"unknown model(s) {unknown} (built in: {', '.join(SHAPES)})" if unknown else "--rounds must be >= 1")
    dev = device_name("cpu")
    out = Path(args.out) if args.out else RESULTS / f"{dev}-inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/inference.py"] + (argv if argv is not None else sys.argv[1:]))
    rows = []
    for name in models:
        for batch in (int(b) for b in args.batches.split(",")):
            rows += bench(name, batch, args.rounds)
            # after every (model, batch): a long run that is stopped keeps what it measured
            out.write_text(json.dumps(dict(device=dev, threads=torch.get_num_threads(), torch=torch.__version__,
                                           rounds=args.rounds, command=command, rows=rows, table=markdown(rows)),
                                      indent=1))
    print(markdown(rows))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
