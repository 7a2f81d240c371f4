"""Run a subset of the ``bench/results.py`` grid (one worker of several): the runs go to the same
directories as ``bench/results.py`` (which then only collects them), so a grid can be split over
processes and ordered by priority.

    PYTHONPATH=. python bench/grid_worker.py --worker 0 --workers 3 --cases lenet300-digits --labels gmp@0.9 --seeds 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from results import CASES, GRIDS, grid, run_dir, run_one  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", required=True, choices=sorted(CASES))
    p.add_argument("--labels", nargs="*", default=None, help="only these grid labels (default: all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--grid", choices=GRIDS, default="full")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--runs", default="runs/results")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reverse", action="store_true", help="take the jobs from the end (a helper worker)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    jobs = [(case, label, opts, seed) for case in args.cases for label, opts in grid(args.grid)
            if args.labels is None or label in args.labels for seed in range(args.seeds)]
    order = list(enumerate(jobs))
    for i, (case, label, opts, seed) in order[::-1] if args.reverse else order:
        if i % args.workers != args.worker:
            continue
        out = run_dir(args.runs, case, label, seed, args.epochs)
        if args.reverse and os.path.exists(os.path.join(out, ".lock")) and not os.path.isfile(os.path.join(out, "summary.json")):
            print(f"{case} {label} seed{seed}: another worker holds it", flush=True)
            continue
        start = time.time()
        try:
            s = run_one(case, label, opts, seed, args.epochs, args.runs)
        except Exception as e:  # e.g. the run directory is locked by another worker
            print(f"{case} {label} seed{seed}: {type(e).__name__}: {e}", flush=True)
            continue
        print(f"{case} {label} seed{seed} acc {s['accuracy']:.4f} ({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
