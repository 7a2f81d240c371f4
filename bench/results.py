"""Regenerate the measured part of docs/RESULTS.md: every method at matched sparsity / FLOPs, several seeds.

Writes the tables to docs/results_tables.md and the accuracy-vs-FLOPs plot to
docs/results_accuracy_vs_flops.png; docs/RESULTS.md quotes them and says what they mean.

    PYTHONPATH=. python bench/results.py --cases lenet300-mnist5k --seeds 3 --epochs 10

Runs go to --runs (one directory per case/method/seed, skipped when already finished, so an
interrupted grid resumes). Nothing is tuned on the test split: every setting below is a library
default or was chosen, before this grid, only for landing on the FLOPs target (gate learning rates).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from sparsekern.pruning.train.loop import PruneConfig, run_prune

CASES = {"lenet300-mnist5k": ("lenet300", "mnist5k"), "lenet5-mnist5k": ("lenet5", "mnist5k"),
         "resnet20-digits": ("resnet20", "digits"), "vgg16-digits": ("vgg16", "digits")}
SPARSITY = 0.9
FLOPS = (0.5, 0.25)
# Gate learning rates that let the gates reach the FLOPs targets within short runs (measured for
# landing on LeNet-300/digits, not for accuracy): Adam at the paper's 1e-3 barely moves independent
# gates in a few hundred steps; the generator's fan-in amplifies its steps, so it needs less.
HC_GATE_LR = 0.1
DEP_GATE_LR = 0.003


def grid():
    yield "dense", {}
    yield "gmp", {"target_sparsity": SPARSITY}
    yield "str", {"target_sparsity": SPARSITY}
    yield "l0", {"target_sparsity": SPARSITY}
    for f in FLOPS:
        yield f"l0_hc@{f}", {"method": "l0_hc", "target_flops": f, "gate_lr": HC_GATE_LR}
        yield f"dep_l0_fwd@{f}", {"method": "dep_l0", "target_flops": f, "gate_lr": DEP_GATE_LR}
        yield f"dep_l0_bwd@{f}", {"method": "dep_l0", "target_flops": f, "gate_lr": DEP_GATE_LR,
                                  "dependency": "backward"}


def run_one(case: str, label: str, opts: dict, seed: int, epochs: int, runs: str) -> dict:
    out = os.path.join(runs, case, label, f"seed{seed}")
    done = os.path.join(out, "summary.json")
    if os.path.isfile(done):
        return json.load(open(done))
    model, data = CASES[case]
    opts = dict(opts)
    method = opts.pop("method", label)
    resume = os.path.isfile(os.path.join(out, "checkpoint.pt"))
    return run_prune(PruneConfig(method=method, model=model, data=data, epochs=epochs, seed=seed, out=out,
                                 resume=resume, progress=False, **opts))


def _mean_std(values) -> str:
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def table(case: str, rows: dict) -> list[str]:
    seeds = len(next(iter(rows.values())))
    lines = [f"### {case} ({f'{seeds} seeds' if seeds > 1 else '1 seed: no spread'})", "",
             "| method | test acc. % (mean ± std) | sparsity % | FLOPs % of dense | "
             "kept widths (seed 0) | s / epoch |", "|---|---|---|---|---|---|"]
    for label, summaries in rows.items():
        flops = [s["flops"] / s["dense_flops"] for s in summaries]
        widths = "-".join(map(str, summaries[0].get("widths", []))) or "-"
        per_epoch = statistics.mean(s["train_seconds"] / s["epochs"] for s in summaries)
        lines.append(f"| {label} | {_mean_std(s['accuracy'] for s in summaries)} | "
                     f"{_mean_std(s['sparsity'] for s in summaries)} | {_mean_std(flops)} | {widths} | "
                     f"{per_epoch:.2f} |")
    return lines + [""]


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (case, rows) in zip(axes[0], results.items()):
        for label, summaries in rows.items():
            x = [100 * s["flops"] / s["dense_flops"] for s in summaries]
            y = [100 * s["accuracy"] for s in summaries]
            ax.errorbar(statistics.mean(x), statistics.mean(y), yerr=statistics.stdev(y) if len(y) > 1 else 0,
                        fmt="o", capsize=3, label=label)
        ax.set_xlabel("FLOPs (% of dense)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(case)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _case(text: str) -> tuple[str, int | None]:
    case, _, seeds = text.partition(":")
    if case not in CASES or (seeds and not (seeds.isdigit() and int(seeds) > 0)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected CASE or CASE:SEEDS, CASE one of {', '.join(CASES)}")
    return case, int(seeds) if seeds else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["lenet300-mnist5k"], type=_case,
                   help=f"cases ({', '.join(CASES)}), each optionally CASE:SEEDS to override --seeds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--runs", default="runs/results")
    p.add_argument("--doc", default="docs/results_tables.md")
    p.add_argument("--plot", default="docs/results_accuracy_vs_flops.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for case, seeds in args.cases:
        results[case] = {}
        for label, opts in grid():
            results[case][label] = [run_one(case, label, opts, seed, args.epochs, args.runs)
                                    for seed in range(seeds or args.seeds)]
            print(case, label, [round(s["accuracy"], 4) for s in results[case][label]], file=sys.stderr, flush=True)
    cases = " ".join(case + (f":{seeds}" if seeds else "") for case, seeds in args.cases)
    lines = [f"Command: `PYTHONPATH=. python bench/results.py --cases {cases} --seeds {args.seeds} "
             f"--epochs {args.epochs}`", ""]
    for case, rows in results.items():
        lines += table(case, rows)
    with open(args.doc, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(results, args.plot)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
