"""One training step (forward, loss, backward, SGD step), dense vs sparsekern vs plain PyTorch.

    python bench/train_step.py                                  # CPU: lenet300 + resnet20, eager + compile
    python bench/train_step.py --models lenet300 --modes eager  # quick
    python bench/train_step.py --device cuda                    # + resnet50 batch 256, bf16 autocast

Methods: ``dense``; ``str`` / ``l0`` (sparsekern layers via ``sparsify``: per-layer soft
threshold; one hard-concrete gate per weight with the ``regularization`` penalty);
``str-plain`` / ``l0-plain`` (the same math in plain PyTorch as the papers' code writes it:
``sign(w)*relu(abs(w)-sigmoid(s))``, AMLab-style ``torch.rand`` gates, see plain_layers.py).
Each runs eager and under ``torch.compile(model, fullgraph=True)`` (the model; loss,
backward and optimizer outside, as users write it). All variants of a model are timed
round-robin one step at a time, side by side, ``--rounds`` times; ms/step is the median. The ratios
are paired: per round, one variant's step over the other's, then the median over rounds (and, for
``sk vs plain``, its quartiles). Overhead = ms / dense ms of the same mode - 1; ``sk vs plain`` =
plain ms / sparsekern ms (> 1: sparsekern faster). ``l0_hc`` / ``dep_l0``: channel gates placed as
Dep-L0 places them, independent or from the gate generator; ``generator`` = dep_l0 ms / l0_hc ms - 1,
the generator's cost per step.

Memory (issue 20; off with ``--no-memory``): the peak the allocator hands out during one step, above
what was live before it (parameters, optimizer state), measured once per variant after the timing:
``torch.cuda.max_memory_allocated`` on a GPU, on CPU the running sum of torch.profiler's allocation
and free events (bench/cpu_memory.py says why that is the same quantity). ``mem vs plain`` = plain
peak / sparsekern peak (> 1: sparsekern holds less), ``mem vs dense`` = peak / dense peak.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Compile afresh: a graph inductor cached from older sparsekern code would be timed instead.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_memory import peak_bytes  # noqa: E402
from ops import RESULTS, device_name, have_matplotlib  # noqa: E402
from plain_layers import plain_l0_penalty, plainify  # noqa: E402

from sparsekern.models import build_model  # noqa: E402
from sparsekern.pruning import regularization, sparsify  # noqa: E402

METHODS = ("dense", "str", "str-plain", "l0", "l0-plain", "l0_hc", "dep_l0")
STRUCTURED = ("l0_hc", "dep_l0")  # channel gates at the same places; dep_l0 adds the gate generator
LAM = 1e-6  # L0 penalty weight: its size does not change the step's cost
# name -> (builder args, batch): MNIST-shaped MLP, CIFAR-shaped ResNet-20, ImageNet ResNet-50 (CUDA)
MODELS = {
    "lenet300": (dict(num_classes=10, in_channels=1, image_size=28), 512),
    "lenet5": (dict(num_classes=10, in_channels=1, image_size=28), 128),  # LeNet-5-Caffe, as bench/gate_lowering.py
    "resnet20": (dict(num_classes=10, in_channels=3, image_size=32), 64),
    "resnet50": (dict(num_classes=1000, in_channels=3, image_size=224), 256),
}


def build(model_name: str, method: str, device: str) -> tuple[nn.Module, callable]:
    """The model for ``method`` and its loss penalty (a callable, 0 for no penalty)."""
    torch.manual_seed(0)
    args, _ = MODELS[model_name]
    model = build_model(model_name, **args)
    if method in ("str", "l0") + STRUCTURED:
        # l0: one gate per weight, as l0-plain has (sparsify's default is the paper's per-neuron gates)
        sparsify(model, method, **{"str": {"s_init": -5.0}, "l0": {"granularity": "weight"}}.get(method, {}))
    elif method.endswith("-plain"):
        plainify(model, method.split("-")[0])
    model.to(device).train()
    if method == "l0" or method in STRUCTURED:
        return model, lambda: regularization(model, lam=LAM, num_samples=1)
    if method == "l0-plain":
        return model, lambda: LAM * plain_l0_penalty(model)
    return model, None


def make_step(model_name: str, method: str, mode: str, device: str, amp: bool, batch: int | None = None):
    model, penalty = build(model_name, method, device)
    forward = torch.compile(model, fullgraph=True) if mode == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5)
    args, default_batch = MODELS[model_name]
    batch = batch or default_batch
    gen = torch.Generator(device=device).manual_seed(1)
    size = args["image_size"]
    x = torch.randn(batch, args["in_channels"], size, size, generator=gen, device=device)
    y = torch.randint(0, args["num_classes"], (batch,), generator=gen, device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(forward(x), y)
            if penalty is not None:
                loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, device: str, clock=time.perf_counter) -> float:
    """Seconds of one step (the GPU synchronized around it)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of a[i] / b[i] (step times of one round)."""
    ratios = [x / y for x, y in zip(a, b)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def bench_model(model_name: str, methods, modes, device: str, rounds: int, amp: bool,
                clock=time.perf_counter, batch: int | None = None, memory: bool = True) -> dict:
    steps = {}
    for mode in modes:
        for method in methods:
            step = make_step(model_name, method, mode, device, amp, batch)
            for _ in range(3):  # warm up: compile, allocator, autograd caches
                step()
            steps[(method, mode)] = step
            print(f"  {model_name} {method} {mode}: ready", file=sys.stderr, flush=True)
    samples = {key: [] for key in steps}
    for r in range(rounds):  # round-robin, one step at a time: every variant sees the same machine load
        for key, step in steps.items():
            samples[key].append(timed(step, device, clock))
    print(f"  {model_name}: {rounds} rounds done", file=sys.stderr, flush=True)
    peaks = {key: peak_bytes(step, device) for key, step in steps.items()} if memory else {}
    rows = []
    for (method, mode), times in samples.items():
        ms = statistics.median(times) * 1e3
        peak = peaks.get((method, mode))
        rows.append(dict(model=model_name, method=method, mode=mode, ms=ms, samples_ms=[t * 1e3 for t in times],
                         peak_step_mb=None if peak is None else peak / 2**20))
    by = {(r["method"], r["mode"]): r["samples_ms"] for r in rows}
    for r in rows:
        # Ratios of steps timed in the same round (next to each other), then their median and
        # quartiles: load that drifts over the run cancels, which it does not in a ratio of medians.
        dense = by.get(("dense", r["mode"]))
        r["overhead_vs_dense"] = paired(r["samples_ms"], dense)[0] - 1 if dense else None
        plain = by.get((r["method"] + "-plain", r["mode"]))
        if plain and r["method"] in ("str", "l0"):
            ratio, q1, q3 = paired(plain, r["samples_ms"])
            r["sk_vs_plain"], r["sk_vs_plain_quartiles"] = ratio, [q1, q3]
        else:
            r["sk_vs_plain"] = None
        # Dep-L0's extra cost: the gate generator (one pass per step) over independent L0-HC gates.
        hc = by.get(("l0_hc", r["mode"]))
        r["generator_cost_vs_l0_hc"] = paired(r["samples_ms"], hc)[0] - 1 if hc and r["method"] == "dep_l0" else None
        plain_peak, dense_peak = peaks.get((r["method"] + "-plain", r["mode"])), peaks.get(("dense", r["mode"]))
        ours = peaks.get((r["method"], r["mode"]))
        r["memory_vs_plain"] = plain_peak / ours if plain_peak and ours and r["method"] in ("str", "l0") else None
        r["memory_vs_dense"] = ours / dense_peak if ours is not None and dense_peak else None
    return dict(model=model_name, batch=batch or MODELS[model_name][1], rows=rows)


def print_table(result: dict) -> None:
    print(f"\n{result['model']} (batch {result['batch']})")
    print(f"{'method':<11}{'mode':<9}{'ms/step':>10}{'vs dense':>10}{'sk vs plain [quartiles]':>25}{'generator':>11}"
          f"{'peak MB':>9}{'mem vs dense':>13}{'mem vs plain':>13}")
    for r in result["rows"]:
        over = f"{r['overhead_vs_dense'] * 100:+.0f}%" if r["overhead_vs_dense"] is not None else "-"
        vs = f"{r['sk_vs_plain']:.2f}x [{r['sk_vs_plain_quartiles'][0]:.2f}-{r['sk_vs_plain_quartiles'][1]:.2f}]" \
            if r["sk_vs_plain"] is not None else ""
        gen = r.get("generator_cost_vs_l0_hc")
        gen = f"{gen * 100:+.0f}%" if gen is not None else ""
        peak = f"{r['peak_step_mb']:.2f}" if r.get("peak_step_mb") is not None else "-"
        mem_d = f"{r['memory_vs_dense']:.2f}x" if r.get("memory_vs_dense") is not None else ""
        mem_p = f"{r['memory_vs_plain']:.2f}x" if r.get("memory_vs_plain") is not None else ""
        print(f"{r['method']:<11}{r['mode']:<9}{r['ms']:>10.2f}{over:>10}{vs:>25}{gen:>11}"
              f"{peak:>9}{mem_d:>13}{mem_p:>13}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, res in zip(axes.flat, results):
        modes = sorted({r["mode"] for r in res["rows"]}, key=["eager", "compile"].index)
        methods = [m for m in METHODS if any(r["method"] == m for r in res["rows"])]
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            ms = [next((r["ms"] for r in res["rows"] if r["method"] == m and r["mode"] == mode), 0) for m in methods]
            ax.bar([j + i * width for j in range(len(methods))], ms, width, label=mode)
        ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(methods))], methods)
        ax.set_ylabel("ms / training step")
        ax.set_title(f"{res['model']} (batch {res['batch']})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default=None,
                   help="comma-separated of lenet300, lenet5, resnet20, resnet50 (default: lenet300,resnet20 on CPU, "
                        "+ resnet50 on cuda)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--rounds", type=int, default=30, help="round-robin steps timed per variant (median taken)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; 1 is steadier on a shared box)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or (CPU, with --threads 1) this process's CPU time, which other jobs on a "
                        "shared machine do not inflate")
    p.add_argument("--batch", type=int, default=None, help="batch size for every model (default: per model)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the per-step peak memory (one profiled step per variant)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-train-step.json)")
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu: CPU only (GPU steps are timed by the wall clock around synchronizations)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    default_models = "lenet300,resnet20,resnet50" if args.device == "cuda" else "lenet300,resnet20"
    models = (args.models or default_models).split(",")
    methods = args.methods.split(",")
    modes = args.modes.split(",")
    results = []
    for name in models:
        amp = name == "resnet50"  # batch 256 in bf16 autocast, as GPU training runs
        results.append(bench_model(name, methods, modes, args.device, args.rounds, amp, clock, args.batch, args.memory))
        print_table(results[-1])
    dev = device_name(args.device)
    out = Path(args.out) if args.out else RESULTS / f"{dev}-train-step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=dev, threads=torch.get_num_threads(), torch=torch.__version__,
                                   rounds=args.rounds, clock=args.clock, results=results), indent=1))
    png = out.with_suffix(".png")
    if have_matplotlib():
        plot(results, png)
        print(f"\nwrote {out} and {png}")
    else:  # the numbers are in the JSON; bench/results.py can plot them elsewhere
        print(f"\nwrote {out} (no plot: matplotlib is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
