"""`sparsekern demo`: dense vs STR (90% target) LeNet-300-100 on digits, in a few CPU minutes.

Runs on one torch thread (see ``common.small_model_threads``; SPARSEKERN_THREADS=N overrides).
"""
from __future__ import annotations

import os
import shutil
import time

from sparsekern.cli.common import CLIError, format_table, say
from sparsekern.pruning.train.runlock import LOCK_NAME, RunLock
from sparsekern.pruning.train.loop import PruneConfig, run_prune

RUN_FILES = {"config.json", "checkpoint.pt", "log.csv", "log.jsonl", "summary.json", "model.pt",
             "sparsity_budget.png", "curves.png", LOCK_NAME}


def add_arguments(p) -> None:
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="directory for the two runs")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each run")
    p.add_argument("--target-sparsity", type=float, default=0.9, help="the STR run's target")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs")
    p.add_argument("--backend", default="auto", help="kernel backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fresh(run_dir: str) -> None:
    """Clear a previous demo run, but never a directory holding anything else."""
    if not os.path.exists(run_dir):
        return
    extra = set(os.listdir(run_dir)) - RUN_FILES if os.path.isdir(run_dir) else {run_dir}
    if extra:
        raise CLIError(f"{run_dir!r} holds files that are not a sparsekern run ({', '.join(sorted(extra))}); "
                       "choose another --out")
    with RunLock(run_dir):  # refuses while another live run holds it
        pass
    shutil.rmtree(run_dir)


def run(args) -> int:
    from sparsekern.cli.common import small_model_threads

    with small_model_threads() as threads:
        return _run(args, threads)


def _run(args, threads: int) -> int:
    results = []
    for method, target in (("dense", None), ("str", args.target_sparsity)):
        run_dir = os.path.join(args.out, method)
        _fresh(run_dir)
        started = time.time()
        summary = run_prune(PruneConfig(
            method=method, model="lenet300", data="digits", epochs=args.epochs, target_sparsity=target,
            seed=args.seed, out=run_dir, backend=args.backend, progress=not args.no_progress))
        results.append((method, summary, time.time() - started))
    dense_macs = results[0][1]["dense_flops"]
    rows = [[m, f"{s['accuracy']:.2%}", f"{s['sparsity']:.2%}", f"{s['nonzero_params']}/{s['params']}",
             s["flops"], f"{s['flops'] / dense_macs:.1%}", f"{t:.1f}"] for m, s, t in results]
    say(f"\nLeNet-300-100 on digits, {args.epochs} epochs, {threads} torch thread{'s' * (threads > 1)}, "
        f"runs in {args.out}")
    say(format_table(["method", "test acc", "weight sparsity", "nonzero params", "MACs/example", "of dense",
                      "seconds"], rows))
    say("weight sparsity: zeros among the weights of the sparsified layers (fc1-fc3; biases are never pruned). "
        "nonzero params: all parameters, biases included. MACs: multiply-accumulates of one forward pass.")
    return 0
