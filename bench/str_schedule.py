"""STR's schedule trial (docs/RESULTS.md, "STR's schedule"): the STR rows of ``bench/results.py``
with ``TargetSparsity``'s ``start_frac`` / ``ramp_frac`` (or a per-layer cap equal to the target)
changed, each variant in its own run directory.

    PYTHONPATH=. python bench/str_schedule.py --start 0.1 --ramp 0.6 --cases lenet300-digits lenet300-signal1d
    PYTHONPATH=. python bench/str_schedule.py --uniform --cases lenet300-digits
    PYTHONPATH=. python bench/str_schedule.py --rewind 0.5 --rewind-warmup 0.25 --cases lenet5-digits
    PYTHONPATH=. python bench/str_schedule.py --refit-from scaled --cases lenet5-digits
    PYTHONPATH=. python bench/str_schedule.py --refit-from scaled --short   # the 6-epoch check
    PYTHONPATH=. python bench/str_schedule.py --anneal 0.5 --cases lenet300-digits lenet5-digits

``--short`` runs the check every trial so far also had to pass: ``sparsekern prune --method str
--data digits --epochs 6`` on the (model, target, seed) of ``SHORT_CHECK``, one torch thread.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from results import CASES, SPARSITIES, run_one  # noqa: E402

from sparsekern.pruning.control.target import FROZEN_S, TargetSparsity  # noqa: E402

SHORT_CHECK = (("lenet5", 0.8, 0), ("lenet5", 0.8, 1), ("lenet5", 0.9, 0), ("lenet300", 0.8, 0), ("lenet300", 0.9, 0))


def _rewind_at_refit(defaults: dict, rewind: float, warmup: float) -> None:
    """LR rewinding (Renda et al. 2020) for the refit: from the controller's ramp end, the cosine
    restarts at its value at ``rewind`` of training and decays to 0 by the end. Replaces the run's
    schedule with a plain cosine (the grid's: no warm-up epochs); the ramp end repeats
    ``TargetSparsity``'s formula because the controller is built inside the run."""
    import sparsekern.pruning.train.loop as loop

    def scheduler(optimizer, config, steps_per_epoch):
        total = steps_per_epoch * (config.epochs + config.finetune_epochs)
        start = round(defaults["start_frac"] * total)
        end = max(start + 1, round(defaults["ramp_frac"] * total))
        peak = 0.5 * (1 + math.cos(math.pi * rewind))
        now = 0.5 * (1 + math.cos(math.pi * end / total))
        warm = round(warmup * (total - end))

        def factor(step):
            if step < end:
                return 0.5 * (1 + math.cos(math.pi * step / total))
            if step - end < warm:  # linear from the schedule's rate at the ramp end up to the rewound one
                return now + (peak - now) * (step - end + 1) / warm
            return peak * 0.5 * (1 + math.cos(math.pi * (step - end - warm) / max(1, total - end - warm)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loop.lr_scheduler = scheduler


def _refit_from(start: str) -> None:
    """Where the refit starts the survivors: ``shrunk`` at their soft-thresholded values, ``scaled``
    at their stored values times one factor per layer that gives the layer the L2 norm of its
    shrunk weights (the stored values' relative sizes, the shrunk layer's output scale)."""
    @torch.no_grad()
    def fold(self):
        self.masks = []
        for layer in self.layers:
            shrunk = layer.effective_weight()
            keep = shrunk != 0
            layer.weight.mul_(keep)
            if start == "shrunk":
                layer.weight.copy_(shrunk)
            else:
                layer.weight.mul_(shrunk.norm() / layer.weight.norm().clamp_min(1e-30))
            layer.s.fill_(FROZEN_S)
            self.masks.append(keep)
    TargetSparsity._fold = fold


def _anneal_shrinkage(fraction: float) -> None:
    """The relaxed lasso's path (Meinshausen 2007: the selected support refitted under phi times
    the selecting penalty) instead of one jump to phi = 0: at the ramp end the pruned set is fixed
    as in the default, but each survivor keeps its stored value and the thresholds fall linearly
    from their value at the refit to 0 over ``fraction`` of the rest of training, so the
    survivors' effective weights grow back gradually rather than at once."""
    fold, apply_masks = TargetSparsity._fold, TargetSparsity._apply_masks

    @torch.no_grad()
    def anneal(self):
        steps = max(1, round(fraction * (self.total_steps - self.ramp_end)))
        phi = max(0.0, 1.0 - (self.step_count - self.ramp_end) / steps)
        for layer, t in zip(self.layers, self.fold_thresholds):
            layer.s.copy_(torch.logit(phi * t) if phi > 0 else torch.full_like(t, FROZEN_S))

    @torch.no_grad()
    def folded(self):
        self.fold_thresholds = [layer.threshold().clone() for layer in self.layers]
        fold(self)
        anneal(self)

    def masked(self):
        apply_masks(self)
        anneal(self)
    TargetSparsity._fold, TargetSparsity._apply_masks = folded, masked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=[], choices=sorted(CASES))
    p.add_argument("--short", action="store_true", help="run the 6-epoch check (SHORT_CHECK) instead of --cases")
    p.add_argument("--start", type=float, default=None, help="start_frac (default: the library's)")
    p.add_argument("--ramp", type=float, default=None, help="ramp_frac (default: the library's)")
    p.add_argument("--uniform", action="store_true", help="cap every layer at the target (max_layer_sparsity)")
    p.add_argument("--rewind", type=float, default=None,
                   help="at the refit, restart the cosine LR at its value at this fraction of training")
    p.add_argument("--rewind-warmup", type=float, default=0.0, help="fraction of the refit warming up to it")
    p.add_argument("--refit-from", choices=["stored", "shrunk", "scaled"], default="stored",
                   help="the survivors' values when the refit starts (default: the library's, stored)")
    p.add_argument("--anneal", type=float, default=None,
                   help="at the refit, lower the thresholds to 0 over this fraction of the rest of training")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--runs", default="runs/str_schedule")
    args = p.parse_args(argv)
    if not args.cases and not args.short:
        p.error("give --cases, --short or both")
    if args.anneal is not None and not 0 < args.anneal <= 1:
        p.error(f"--anneal must be in (0, 1], got {args.anneal}")
    torch.set_num_threads(1)
    defaults = TargetSparsity.__init__.__kwdefaults__  # what the STR method's controller is built with
    if args.start is not None:
        defaults["start_frac"] = args.start
    if args.ramp is not None:
        defaults["ramp_frac"] = args.ramp
    if args.rewind is not None:
        _rewind_at_refit(defaults, args.rewind, args.rewind_warmup)
    if args.refit_from != "stored":
        _refit_from(args.refit_from)
    if args.anneal is not None:
        _anneal_shrinkage(args.anneal)
    init = TargetSparsity.__init__
    if args.uniform:
        def capped(self, model, target, total_steps, **kw):
            init(self, model, target, total_steps, **{"max_layer_sparsity": target, **kw})
        TargetSparsity.__init__ = capped
    name = f"start{defaults['start_frac']:g}-ramp{defaults['ramp_frac']:.3g}" + ("-uniform" if args.uniform else "") \
        + (f"-rewind{args.rewind:g}-warm{args.rewind_warmup:g}" if args.rewind is not None else "") \
        + (f"-from-{args.refit_from}" if args.refit_from != "stored" else "") \
        + (f"-anneal{args.anneal:g}" if args.anneal is not None else "")
    if args.short:
        for model, target, seed in SHORT_CHECK:
            acc = run_one(f"{model}-digits", f"str@{target}", {"method": "str", "target_sparsity": target}, seed, 6,
                          os.path.join(args.runs, name))["accuracy"]
            print(f"{name} {model} 6 epochs str@{target} seed {seed}: {acc:.3f}", flush=True)
    for case in args.cases:
        for sparsity in SPARSITIES:
            accs = [run_one(case, f"str@{sparsity}", {"method": "str", "target_sparsity": sparsity}, seed, args.epochs,
                            os.path.join(args.runs, name))["accuracy"] for seed in range(args.seeds)]
            print(f"{name} {case} str@{sparsity}: {100 * statistics.mean(accs):.2f} "
                  f"({' '.join(f'{100 * a:.2f}' for a in accs)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
