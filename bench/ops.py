"""Benchmark of every sparsekern op: compiled backend vs eager reference vs torch.compile vs plain PyTorch.

    python bench/ops.py                                   # CPU: 1K (per-call latency), 4K, 64K, 1M, 16M fp32
    python bench/ops.py --sizes 1M --repeat 3             # quick smoke test
    python bench/ops.py --device cuda --sizes 1M,4M,16M,64M,256M   # GPU: + ResNet-50 step + plot

Variants: `cpu` (on CPU) or `cuda`/`triton` (on GPU), each if available: the
public op run on that backend; `eager`: the public op on the `torch` backend;
`compile`: torch.compile of the sparsekern.backends.reference functions (forward; and for
fwd+bwd one function calling the reference forward and backward kernels);
`plain` / `plain-compile`: the formula a user would write instead, in eager torch ops
(autograd for the backward; gates drawn with torch.rand), and torch.compile of it;
`clone`: a copy of the op's main tensor, the memory-bandwidth floor.
Bandwidth counts the bytes an op must move: every input read once and every
output written once (forward, plus backward for fwd+bwd).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Compile afresh: a graph inductor cached under another thread count or older code would be timed instead.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import sparsekern  # noqa: E402
from sparsekern.backends import reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_layers import hard_concrete_sample, str_weight  # noqa: E402

HC = (2.0 / 3.0, -0.1, 1.1)  # beta, gamma, zeta
SEED, OFFSET = 1234, 0
RESULTS = Path(__file__).resolve().parent / "results"
UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


# ---------------------------------------------------------------- the ops
@dataclass
class OpBench:
    """One op at one size: inputs, the public call, the reference fwd/bwd kernels, byte counts."""

    tensors: dict  # name -> tensor (floating ones get gradients)
    grad: torch.Tensor | None  # upstream gradient for fwd+bwd (None: no backward)
    public: Callable  # (**tensors) -> output, through sparsekern's public op
    ref_fwd: Callable  # (**tensors) -> output, sparsekern.backends.reference
    ref_bwd: Callable | None  # (grad, **tensors) -> grads, sparsekern.backends.reference
    bytes_fwd: int
    bytes_bwd: int
    main: str  # the tensor whose clone is the bandwidth floor
    plain: Callable | None = None  # (**tensors) -> output: the eager torch ops a user would write instead
    floor_gates: int = 0  # gates the op samples (its compute floor's size); -n: n uniforms; 0: memory-bound


def _plain_eval(log_alpha):
    return (torch.sigmoid(log_alpha) * (HC[2] - HC[1]) + HC[1]).clamp(0, 1)


def _plain_l0(log_alpha):
    return torch.sigmoid(log_alpha - HC[0] * math.log(-HC[1] / HC[2])).sum()


def _plain_activation(x, log_alpha):
    z = hard_concrete_sample(log_alpha.expand(x.shape[0], -1))
    return x * z.reshape(z.shape + (1,) * (x.dim() - 2))


def _make(op: str, n: int, dtype: torch.dtype, device: str) -> OpBench:
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    es = torch.empty((), dtype=dtype).element_size()
    rows = max(1, n // 1024)
    w = randn(rows, n // rows)
    if op == "soft_threshold":
        s = torch.full((1,), -3.0, dtype=dtype, device=device)  # one threshold per layer, the paper's default
        return OpBench(dict(weight=w, s=s), randn(*w.shape),
                       lambda weight, s: sparsekern.soft_threshold(weight, s),
                       reference.soft_threshold, reference.soft_threshold_backward,
                       2 * n * es, 3 * n * es, "weight", str_weight)
    if op in ("hard_concrete", "hard_concrete_eval", "l0_norm"):
        la = randn(rows, n // rows, scale=1.5)
        if op == "hard_concrete":
            return OpBench(dict(log_alpha=la), randn(*la.shape),
                           lambda log_alpha: sparsekern.hard_concrete(log_alpha, SEED, OFFSET),
                           lambda log_alpha: reference.hard_concrete(log_alpha, SEED, OFFSET, *HC),
                           lambda g, log_alpha: reference.hard_concrete_backward(g, log_alpha, SEED, OFFSET, *HC),
                           2 * n * es, 3 * n * es, "log_alpha", hard_concrete_sample, floor_gates=n)
        if op == "hard_concrete_eval":
            return OpBench(dict(log_alpha=la), randn(*la.shape),
                           lambda log_alpha: sparsekern.hard_concrete_eval(log_alpha),
                           lambda log_alpha: reference.hard_concrete_eval(log_alpha, *HC[1:]),
                           lambda g, log_alpha: reference.hard_concrete_eval_backward(g, log_alpha, *HC[1:]),
                           2 * n * es, 3 * n * es, "log_alpha", _plain_eval)
        return OpBench(dict(log_alpha=la), torch.ones((), dtype=dtype, device=device),
                       lambda log_alpha: sparsekern.l0_norm(log_alpha),
                       lambda log_alpha: reference.l0_norm(log_alpha, *HC),
                       lambda g, log_alpha: reference.l0_norm_backward(g, log_alpha, *HC),
                       n * es, 2 * n * es, "log_alpha", _plain_l0)
    if op == "gated_weight":  # unstructured: one gate per weight
        la = randn(*w.shape, scale=1.5)
        return OpBench(dict(weight=w, log_alpha=la), randn(*w.shape),
                       lambda weight, log_alpha: sparsekern.gated_weight(weight, log_alpha, SEED, OFFSET),
                       lambda weight, log_alpha: reference.gated_weight(weight, log_alpha, SEED, OFFSET, *HC),
                       lambda g, weight, log_alpha: reference.gated_weight_backward(g, weight, log_alpha, SEED,
                                                                                    OFFSET, *HC),
                       3 * n * es, 5 * n * es, "weight",
                       lambda weight, log_alpha: weight * hard_concrete_sample(log_alpha), floor_gates=n)
    if op == "gated_activation":  # conv activations [B, 64, H, H], one gate per (example, channel)
        side = 32 if n >= 65536 else max(1, int(math.sqrt(n // 64)))
        x = randn(max(1, n // (64 * side * side)), 64, side, side)
        la = randn(64, scale=1.5)
        return OpBench(dict(x=x, log_alpha=la), randn(*x.shape),
                       lambda x, log_alpha: sparsekern.gated_activation(x, log_alpha, SEED, OFFSET),
                       lambda x, log_alpha: reference.gated_activation(x, log_alpha, SEED, OFFSET, *HC),
                       lambda g, x, log_alpha: reference.gated_activation_backward(g, x, log_alpha, SEED,
                                                                                   OFFSET, *HC),
                       2 * x.numel() * es, 3 * x.numel() * es, "x", _plain_activation)
    if op == "uniform":
        dev = torch.device(device)
        return OpBench(dict(like=w), None,
                       lambda like: sparsekern.uniform(n, SEED, OFFSET, device=dev),
                       lambda like: reference.uniform(n, SEED, OFFSET, dev),
                       None, 4 * n, 0, "like", floor_gates=-n)
    raise ValueError(f"unknown op {op!r}")


RNG_OPS = ("hard_concrete", "gated_weight", "gated_activation", "uniform")
OPS = ("soft_threshold", "hard_concrete", "hard_concrete_eval", "l0_norm", "gated_weight", "gated_activation",
       "uniform")


# ---------------------------------------------------------------- timing
class Backend:
    """Selects a sparsekern backend for the calling thread and (through the env var) autograd's device threads."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.old = os.environ.get("SPARSEKERN_BACKEND")
        os.environ["SPARSEKERN_BACKEND"] = self.name
        self.ctx = sparsekern.use_backend(self.name)
        self.ctx.__enter__()

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        if self.old is None:
            os.environ.pop("SPARSEKERN_BACKEND", None)
        else:
            os.environ["SPARSEKERN_BACKEND"] = self.old


def time_cpu(fn: Callable, repeat: int, min_time: float, clock: str = "wall") -> float:
    """Median seconds per call: median over `repeat` blocked_autorange measurements of their medians.

    clock="cpu" counts this process's CPU time (user + system) instead of wall time: on a
    machine shared with other jobs it leaves out the time spent waiting for a core."""
    from torch.utils.benchmark import Timer

    fn()
    fn()  # warm up (torch.compile, allocator)
    kw = {"timer": time.process_time} if clock == "cpu" else {}
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), **kw)
    return statistics.median(timer.blocked_autorange(min_run_time=min_time).median for _ in range(repeat))


def time_cuda(fn: Callable, repeat: int, min_time: float) -> float:
    """Median seconds per call on the GPU (L2 flushed between calls by do_bench, or CUDA events)."""
    fn()
    torch.cuda.synchronize()
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return do_bench(fn, warmup=25, rep=max(100, int(min_time * 1000)), return_mode="median") / 1e3
    times = []
    for _ in range(max(repeat, 10)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _fwd_bwd_public(b: OpBench) -> Callable:
    leaves = {k: v.detach().requires_grad_() for k, v in b.tensors.items()}

    def run():
        out = b.public(**leaves)
        torch.autograd.grad(out, list(leaves.values()), b.grad)

    return run


def _plain_run(b: OpBench, fn: Callable, mode: str) -> Callable:
    """The plain-PyTorch formula (eager or compiled), forward or forward + autograd backward."""
    if mode == "fwd":
        return lambda: fn(**b.tensors)
    leaves = {k: v.detach().requires_grad_() for k, v in b.tensors.items()}
    return lambda: torch.autograd.grad(fn(**leaves), list(leaves.values()), b.grad)


def _variants(b: OpBench, mode: str, ours: list[str], compile_ok: bool = True, floor: bool = False) -> dict:
    """name -> (backend to select or None, zero-argument callable)."""
    t = b.tensors
    if mode == "fwd":
        public = lambda: b.public(**t)  # noqa: E731
        compiled = torch.compile(b.ref_fwd, fullgraph=True)  # lazy: compiles on first call
        comp = lambda: compiled(**t)  # noqa: E731
    else:
        public = _fwd_bwd_public(b)

        def both(g, **kw):
            return b.ref_fwd(**kw), b.ref_bwd(g, **kw)

        compiled = torch.compile(both, fullgraph=True)
        comp = lambda: compiled(b.grad, **t)  # noqa: E731
    out = {name: (name, public) for name in ours}
    out["eager"] = ("torch", public)
    if compile_ok:
        out["compile"] = (None, comp)
    if b.plain is not None:
        out["plain"] = (None, _plain_run(b, b.plain, mode))
        out["plain-compile"] = (None, _plain_run(b, torch.compile(b.plain, fullgraph=True), mode))
    main = t[b.main]
    out["clone"] = (None, main.clone)
    if floor and b.floor_gates:
        out["floor"] = (None, _floor_run(b.floor_gates, mode))
        if mode == "fwd+bwd":
            out["floor-autograd"] = (None, _floor_autograd_run(b))
    return out


def _floor_autograd_run(b: OpBench) -> Callable:
    """The compute floor called the way a user's op is: through autograd, with the op's leaves, its
    outputs and gradients allocated. What a fwd+bwd op cannot get below in PyTorch at small sizes,
    where the autograd engine's fixed cost (graph, engine, grad buffers) rivals the loop."""
    fwd, bwd = _floor_run(b.floor_gates, "fwd"), _floor_run(b.floor_gates, "bwd")
    names = list(b.tensors)
    values = [v.detach().requires_grad_() for v in b.tensors.values()]
    main = names.index(b.main)

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *leaves):
            fwd()
            return torch.empty_like(leaves[main])

        @staticmethod
        def backward(ctx, grad):
            bwd()
            return tuple(torch.empty_like(t) for t in values)

    return lambda: torch.autograd.grad(Floor.apply(*values), values, b.grad)


def _floor_run(gates: int, mode: str) -> Callable:
    """The compute floor (bench/compute_floor.py) of sampling `gates` gates: the forward's Philox +
    hard-concrete loop, plus for fwd+bwd the backward's (it regenerates the noise and forms dz)."""
    from compute_floor import floor_call

    if gates < 0:  # the uniform stream: Philox alone
        return floor_call("philox", -gates)
    fwd = floor_call("gate", gates)
    if mode == "fwd":
        return fwd
    bwd = floor_call("gate_grad", gates)
    if mode == "bwd":
        return bwd
    return lambda: (fwd(), bwd())


def measure(fn, backend, timer, repeat, min_time) -> float:
    if backend is None:
        return timer(fn, repeat, min_time)
    with Backend(backend):
        return timer(fn, repeat, min_time)


# ---------------------------------------------------------------- ResNet-50 step
def resnet50_weight_shapes() -> list[tuple]:
    """Conv and fc weight shapes of ResNet-50 (torchvision if importable; else the same architecture written out)."""
    try:
        import torchvision

        model = torchvision.models.resnet50()
        return [tuple(p.shape) for name, p in model.named_parameters() if p.dim() in (2, 4) and "weight" in name]
    except ImportError:
        pass
    shapes, inplanes = [(64, 3, 7, 7)], 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            if block == 0:
                shapes.append((planes * 4, inplanes, 1, 1))  # the downsample projection
            inplanes = planes * 4
    shapes.append((1000, 2048))
    return shapes  # 54 layers, 25,502,912 weights (+ BN and fc bias = torchvision's 25,557,032)


def bench_model(dtype, device, ours, timer, repeat, min_time) -> dict:
    """One STR training step over every ResNet-50 conv/fc weight: per-layer soft_threshold fwd + bwd."""
    shapes = resnet50_weight_shapes()
    gen = torch.Generator(device=device).manual_seed(0)
    ws = [(torch.randn(s, generator=gen, device=device) * 0.05).to(dtype) for s in shapes]
    ss = [torch.full((1,), -5.0, dtype=dtype, device=device) for _ in shapes]
    gs = [torch.randn(s, generator=gen, device=device).to(dtype) for s in shapes]
    es = torch.empty((), dtype=dtype).element_size()
    numel = sum(w.numel() for w in ws)
    leaves = [t.detach().requires_grad_() for t in ws + ss]

    def public_step():
        outs = [sparsekern.soft_threshold(w, s) for w, s in zip(leaves[: len(ws)], leaves[len(ws):])]
        torch.autograd.grad(outs, leaves, gs)

    def reference_step(ws, ss, gs):
        return [(reference.soft_threshold(w, s), reference.soft_threshold_backward(g, w, s))
                for w, s, g in zip(ws, ss, gs)]

    compiled = torch.compile(reference_step, fullgraph=True)
    variants = {name: (name, public_step) for name in ours}
    variants.update(eager=("torch", public_step), compile=(None, lambda: compiled(ws, ss, gs)),
                    clone=(None, lambda: [w.clone() for w in ws]))
    times = {name: measure(fn, be, timer, repeat, min_time) for name, (be, fn) in variants.items()}
    return dict(layers=len(shapes), numel=numel, bytes=5 * numel * es, clone_bytes=2 * numel * es, seconds=times)


# ---------------------------------------------------------------- reporting
def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"--sizes: cannot read {text!r} (e.g. 1M, 4M, 256M, 65536)")
    return int(m.group(1)) * UNITS.get(m.group(2), 1)


def size_name(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


def device_name(device: str) -> str:
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu-{cores}core"


def ratios(row: dict, ours: list[str]) -> dict:
    t = row["seconds"]
    clone_bw = row["clone_bytes"] / t["clone"]
    out = {}
    for name in ours:
        bw = row["bytes"] / t[name]
        vs = {f"vs_{k.replace('-', '_')}": t[k] / t[name] if k in t else None
              for k in ("eager", "compile", "plain", "plain-compile")}
        out[name] = dict(**vs, gbps=bw / 1e9, clone_fraction=bw / clone_bw)
    out["clone_gbps"] = clone_bw / 1e9
    return out


def parse_threads(text: str | None) -> list[int]:
    """--threads: '1,2,all' -> [1, 2, <cores>] (duplicates dropped, order kept); None: torch's count."""
    if not text:
        return [torch.get_num_threads()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if not (part == "all" or part.isdigit()) or part == "0":
            raise SystemExit(f"--threads: cannot read {part!r} (positive counts or 'all', e.g. 1,2,all)")
        count = cores if part == "all" else int(part)
        if count not in counts:
            counts.append(count)
    return counts


def quartiles(values: list[float]) -> list[float]:
    """[median, first quartile, third quartile]."""
    if len(values) < 2:
        return [values[0]] * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [median, q1, q3]


FLOORS = ("clone", "floor", "floor-autograd")  # ratios against these are ours / floor


def paired_ratios(samples: dict, ours: list[str]) -> dict:
    """Per round, each variant's time over our backend's of the same round (measured next to each
    other), as [median, q1, q3] over rounds: > 1 means ours is faster (for clone and floor: how far
    ours is above that floor, inverted: ours / floor)."""
    out = {}
    for name in ours:
        mine = samples[name]
        per = {}
        for other, ts in samples.items():
            if other == name:
                continue
            r = [m / t for m, t in zip(mine, ts)] if other in FLOORS else [t / m for m, t in zip(mine, ts)]
            per[other] = quartiles(r)
        out[name] = per
    return out


def _fmt_q(q: list[float] | None) -> str:
    return f"{q[0]:.2f} ({q[1]:.2f}-{q[2]:.2f})" if q else "-"


def print_paired_table(rows: list[dict], name: str) -> None:
    """Markdown: ns per element of `name` and of the floors, paired ratios with quartiles."""
    print(f"\n| op | mode | size | threads | {name} ns/elem | x plain | x plain-compile | {name} / copy "
          f"| {name} / compute floor | {name} / floor through autograd | floor ns/elem |")
    print("|---|---|---:|---:|---:|---|---|---|---|---|---:|")
    for r in rows:
        q, n = r["paired"].get(name, {}), r["numel"]
        floor = f"{r['seconds']['floor'] * 1e9 / n:.2f}" if "floor" in r["seconds"] else "-"
        print(f"| {r['op']} | {r['mode']} | {size_name(n)} | {r['threads']} | {r['seconds'][name] * 1e9 / n:.2f} "
              f"| {_fmt_q(q.get('plain'))} | {_fmt_q(q.get('plain-compile'))} | {_fmt_q(q.get('clone'))} "
              f"| {_fmt_q(q.get('floor'))} | {_fmt_q(q.get('floor-autograd'))} | {floor} |")


def _fmt_ratio(q: dict, key: str, width: int) -> str:
    return f"{q[key]:>{width}.2f}" if q.get(key) is not None else f"{'-':>{width}}"


def print_table(rows: list[dict], ours: list[str]) -> None:
    names = ours + ["eager", "compile", "plain", "plain-compile", "clone"]
    head = f"{'op':<19}{'mode':<8}{'size':>6}{'thr':>4} " + "".join(f"{n + ' ms':>17}" for n in names)
    head += "".join(f"{n + ' x eager':>14}{n + ' x comp':>13}{n + ' x plain':>14}{n + ' x plcomp':>15}"
                    f"{n + ' GB/s':>10}{n + ' %clone':>11}" for n in ours)
    print(head)
    for r in rows:
        line = f"{r['op']:<19}{r['mode']:<8}{size_name(r['numel']):>6}{r.get('threads', ''):>4} "
        line += "".join(f"{r['seconds'][n] * 1e3:>17.4f}" if n in r["seconds"] else f"{'-':>17}" for n in names)
        for n in ours:
            q = r["ratios"][n]
            line += (_fmt_ratio(q, "vs_eager", 14) + _fmt_ratio(q, "vs_compile", 13) + _fmt_ratio(q, "vs_plain", 14)
                     + _fmt_ratio(q, "vs_plain_compile", 15) + f"{q['gbps']:>10.1f}{q['clone_fraction'] * 100:>10.0f}%")
        print(line)


def have_matplotlib() -> bool:
    """Plots are optional: the lent GPU machines have no matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(rows: list[dict], ours: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows})
    ncols = min(4, len(ops))
    nrows = -(-len(ops) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(ours + ["eager", "compile"])}
    for ax in axes.flat[len(ops):]:
        ax.axis("off")
    for ax, op in zip(axes.flat, ops):
        for mode in ("fwd", "fwd+bwd"):
            sel = sorted((r for r in rows if r["op"] == op and r["mode"] == mode), key=lambda r: r["numel"])
            if not sel:
                continue
            for name in [n for n in ours + ["eager", "compile"] if n in sel[0]["seconds"]]:
                bw = [r["bytes"] / r["seconds"][name] / 1e9 for r in sel]
                ax.plot([r["numel"] for r in sel], bw, marker="o", linestyle="-" if mode == "fwd" else "--",
                        color=colors[name], label=f"{name} {mode}")
            ax.plot([r["numel"] for r in sel], [r["ratios"]["clone_gbps"] for r in sel], color="k", marker="x",
                    linewidth=0.8, label="clone" if mode == "fwd" else None)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (bytes the op must move)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1K,4K,64K,1M,16M",
                   help="comma-separated element counts (K/M/G suffixes); 1K is the per-call latency row")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--repeat", type=int, default=3, help="measurements per case (median taken)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per CPU measurement (blocked_autorange)")
    p.add_argument("--model", action=argparse.BooleanOptionalAction, default=None,
                   help="also time a ResNet-50 STR step (default: on for cuda)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                   help="write the bandwidth plot (default: on for cuda)")
    p.add_argument("--compile-rng", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the reference of the ops that draw random numbers (default: on for cuda; "
                        "on CPU inductor took over 10 minutes to compile the reference Philox, so off)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset to time (default all; e.g. leave out eager at 16M: its Philox "
                        "reference takes ~30 s per call on CPU)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="CPU timing clock: wall time, or this process's CPU time (use with one thread on a "
                        "machine shared with other jobs: waiting for a core is not counted)")
    p.add_argument("--threads", default=None,
                   help="CPU: comma-separated torch thread counts, each a pass of the whole grid in this run "
                        "('all' = the cores this process may use; default: torch's current count)")
    p.add_argument("--floor", action="store_true",
                   help="CPU: add the compute-floor variant of the gate ops (bench/compute_floor.py, built on "
                        "first use) and print the paired table (ratios with quartiles, ns per element)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-ops.json)")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {list(OPS)}")
    dtype = getattr(torch, args.dtype)
    available = sparsekern.available_backends()
    ours = [n for n in (("cpu",) if args.device == "cpu" else ("cuda", "triton")) if n in available]
    if not ours:
        print(f"note: no compiled backend for {args.device} is available (have {available}); "
              "timing eager, compile and clone only", file=sys.stderr)
    timer = time_cuda if args.device == "cuda" else functools.partial(time_cpu, clock=args.clock)
    name = device_name(args.device)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    thread_counts = parse_threads(args.threads) if args.device == "cpu" else [torch.get_num_threads()]
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # inductor's CPU code fixes its OpenMP thread count when it compiles
        for op in ops:
            for n in sizes:
                b = _make(op, n, dtype, args.device)
                for mode in ("fwd", "fwd+bwd") if b.ref_bwd is not None else ("fwd",):
                    compile_ok = op not in RNG_OPS or (args.compile_rng if args.compile_rng is not None
                                                       else args.device == "cuda")
                    variants = _variants(b, mode, ours, compile_ok, floor=args.floor and args.device == "cpu")
                    if args.variants:
                        # clone always: the bandwidth columns are computed from it
                        keep = args.variants.split(",") + (list(FLOORS) if args.floor else ["clone"])
                        variants = {k: v for k, v in variants.items() if k in keep}
                    # CPU: round-robin, one measurement per variant per round, so load that comes and
                    # goes hits all variants alike; GPU timers take their own repeats.
                    rounds, per_call = (args.repeat, 1) if args.device == "cpu" else (1, args.repeat)
                    samples = {v: [] for v in variants}
                    for _ in range(rounds):
                        for v, (be, fn) in variants.items():
                            samples[v].append(measure(fn, be, timer, per_call, args.min_time))
                    seconds = {v: statistics.median(ts) for v, ts in samples.items()}
                    numel = b.tensors[b.main].numel()
                    es = b.tensors[b.main].element_size()
                    row = dict(op=op, mode=mode, numel=numel, threads=threads, seconds=seconds, samples=samples,
                               clone_bytes=2 * numel * es, bytes=b.bytes_fwd + (b.bytes_bwd if mode == "fwd+bwd" else 0))
                    row["ratios"] = ratios(row, ours)
                    row["paired"] = paired_ratios(samples, ours)
                    rows.append(row)
                    times = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in seconds.items())
                    print(f"  {op} {mode} {size_name(numel)} {threads}T: {times} ms", file=sys.stderr, flush=True)
                del b
    print(f"\n{name}  dtype={args.dtype}  threads={thread_counts}  torch={torch.__version__}  "
          f"(median seconds shown as ms; x = speedup of our backend; %clone = fraction of clone bandwidth)")
    print_table(rows, ours)
    if args.floor and ours:
        print_paired_table(rows, ours[0])

    result = dict(device=name, dtype=args.dtype, threads=thread_counts, torch=torch.__version__, clock=args.clock,
                  backends=available, ours=ours, repeat=args.repeat, rows=rows)
    if args.model if args.model is not None else args.device == "cuda":
        model = bench_model(dtype, args.device, ours, timer, args.repeat, args.min_time)
        model["ratios"] = ratios(model, ours)
        result["resnet50_step"] = model
        t = model["seconds"]
        print(f"\nResNet-50 STR step ({model['layers']} layers, {model['numel'] / 1e6:.1f}M weights, fwd+bwd): "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items()))
        for n in ours:
            q = model["ratios"][n]
            print(f"  {n}: {q['vs_eager']:.2f}x eager, {q['vs_compile']:.2f}x compile, {q['gbps']:.1f} GB/s, "
                  f"{q['clone_fraction'] * 100:.0f}% of clone bandwidth")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"{name}-ops.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    if args.plot if args.plot is not None else args.device == "cuda":
        png = out.with_name(f"{name}-bandwidth.png")
        if have_matplotlib():
            plot(rows, ours, png)
            print(f"wrote {png}")
        else:  # optional: the JSON has every number
            print(f"no plot {png.name}: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
