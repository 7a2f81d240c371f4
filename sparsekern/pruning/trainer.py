"""The training loop behind ``sparsekern prune``: ``run_prune(PruneConfig(...)) -> summary``.

Run directory (written by rank 0 only): ``config.json``, ``checkpoint.pt``
(atomic, every epoch), ``log.csv`` and ``log.jsonl`` (one row per epoch),
and at the end ``summary.json`` and ``model.pt`` (the finalized state_dict).

Reproducibility: the batch order of epoch ``e`` is a permutation seeded by
(seed, e), and a checkpoint holds model (with the sparse layers' RNG offset
buffers), optimizer(s), scheduler, pruning controller, RNG states and counters,
so a killed run resumed with ``resume=True`` ends with the same weights as an
uninterrupted one. Under ``torchrun`` the model is wrapped in DDP (gloo on CPU);
each global batch is split across ranks and the loss is scaled so the averaged
gradient equals the single-process one; controllers act on the synchronized
parameters, so every rank takes the same pruning decisions.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sparsekern import pruning
from sparsekern.backends import use_backend
from sparsekern.data import load_dataset
from sparsekern.models import build_model
from sparsekern.pruning.methods import METHODS as METHOD_CLASSES
from sparsekern.pruning.methods.base import has_batchnorm
from sparsekern.pruning.methods.l0 import HC_GATE_LR, HC_LAMBDA, L0_DROP_RATE, L0_GATE_LR, L0_LAMBDA  # noqa: F401
from sparsekern.pruning.checkpoint import (
    CheckpointError, atomic_torch_save, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)

METHODS = tuple(METHOD_CLASSES)
# Settings that may change between a run and its resumption without changing the result.
RESUME_FREE = ("out", "resume", "progress", "backend", "device")
LOG_FIELDS = ("epoch", "step", "train_loss", "train_acc", "test_acc", "sparsity", "lr", "seconds")


@dataclass
class PruneConfig:
    method: str = "dense"
    model: str = "lenet300"
    data: str = "digits"
    epochs: int = 10
    target_sparsity: float | None = None  # str / gmp / l0
    target_flops: float | None = None  # l0_hc / dep_l0: wanted fraction of the dense FLOPs
    lam: float | None = None  # l0*: penalty weight (methods/l0.py); str: thresholds' weight decay
    gate_lr: float | None = None  # gated methods: Adam learning rate of the gates / generator
    dependency: str | None = None  # dep_l0: forward (default) or backward
    finetune_epochs: int = 0  # after `epochs`: gates frozen and deterministic, no penalty
    seed: int = 0
    out: str = "runs/run"
    resume: bool = False
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9
    backend: str = "auto"
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "weight_decay", "momentum"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not isinstance(self.finetune_epochs, int) or isinstance(self.finetune_epochs, bool) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an int >= 0, got {self.finetune_epochs!r}")
        if self.target_sparsity is not None and not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if self.target_flops is not None and not 0.0 < self.target_flops < 1.0:
            raise ValueError(f"target_flops must be in (0, 1), got {self.target_flops}")
        if self.lam is not None and (not math.isfinite(self.lam) or self.lam < 0):
            raise ValueError(f"lambda must be a finite number >= 0, got {self.lam}")
        if self.gate_lr is not None and (isinstance(self.gate_lr, bool) or not isinstance(self.gate_lr, (int, float))
                                         or not math.isfinite(self.gate_lr) or self.gate_lr <= 0):
            raise ValueError(f"gate_lr must be a finite number > 0, got {self.gate_lr!r}")
        if self.dependency not in (None, "forward", "backward"):
            raise ValueError(f"dependency must be 'forward' or 'backward', got {self.dependency!r}")
        if self.target_flops is not None and self.lam is not None:
            raise ValueError("target_flops adapts lambda itself: give one of target_flops and lambda")
        METHOD_CLASSES[self.method].check(self)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")


# ---------------------------------------------------------------- distributed helpers
class _Dist:
    """Rank/world of this process; initialises a process group under torchrun."""

    def __init__(self, device_type: str):
        self.owns_group = False
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            self.owns_group = True
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, values: list[float], device) -> list[float]:
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def check_agree(self, model: nn.Module, sparsity: float, device) -> None:
        """Raise if the ranks ended with different weights or pruning decisions (they must not)."""
        if not self.on:
            return
        with torch.no_grad():
            mine = torch.stack([torch.tensor(sparsity, dtype=torch.float64, device=device)] +
                               [p.detach().double().sum() for p in model.parameters()])
        low, high = mine.clone(), mine.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError("distributed ranks disagree on the trained weights or sparsity")

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------- optimizers
def _optimizers(groups: list[dict], config: PruneConfig, gate_lr: float | None):
    """(SGD over the weights, Adam over the gates or None). The gates get their own Adam at a
    constant rate (the L0 paper trains with Adam, Dep-L0 its gate generator): the pace of a gate is
    then set by ``gate_lr``, not by the scale of lambda. Before (per-weight gates, SGD for all) no
    lambda gave useful sparsity on LeNet-300/digits: 250 -> 0% sparse, 400 -> 100%, both at chance."""
    gates = [g for g in groups if g["name"] == "gates"]
    rest = [g for g in groups if g["name"] != "gates"]
    optimizer = torch.optim.SGD(rest, lr=config.lr, momentum=config.momentum)
    if not gates:
        return optimizer, None
    return optimizer, torch.optim.Adam([{**g, "lr": gate_lr} for g in gates], lr=gate_lr)


RECALIBRATION_BATCHES = 20


def _recalibrate(model: nn.Module, method, train_ds, config: PruneConfig, device) -> None:
    """BatchNorm statistics of the eval network (see pruning.batchnorm), from the first training
    batches in a fixed order (no RNG drawn, so resumed runs stay identical)."""
    if method.has_gates_or_thresholds() and has_batchnorm(model):
        pruning.recalibrate_bn(model, train_ds.tensors[0], RECALIBRATION_BATCHES, batch_size=config.batch_size)


# ---------------------------------------------------------------- data order
def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int):
    """This rank's index tensors for every global batch of ``epoch``, plus each global batch's size."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world:  # every rank needs at least one example
            return
        yield batch[rank::world], len(batch)


def _steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    return sum(1 for start in range(0, n, batch_size) if min(batch_size, n - start) >= world)


@torch.no_grad()
def _accuracy(model: nn.Module, ds, device, d: _Dist, batch_size: int = 512) -> float:
    model.eval()
    x_all, y_all = ds.tensors
    mine = torch.arange(d.rank, len(y_all), d.world)
    correct = 0
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        correct += int((model(x_all[idx].to(device)).argmax(1) == y_all[idx].to(device)).sum())
    total_correct, total = d.sum([float(correct), float(len(mine))], device)
    return total_correct / total


# ---------------------------------------------------------------- run directory
def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _write_logs(out: str, history: list[dict]) -> None:
    """Rewrite log.csv and log.jsonl from the history (so a resumed run never duplicates rows)."""
    with open(os.path.join(out, "log.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    with open(os.path.join(out, "log.jsonl.tmp"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in history)
    for name in ("log.csv", "log.jsonl"):
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


def _prepare_out(config: PruneConfig, d: _Dist) -> str | None:
    """The checkpoint to resume from (or None); refuses to overwrite a run unless resuming."""
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out {out!r} exists and is not a directory")
    ckpt = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ckpt):
        if not config.resume:
            raise ValueError(f"run directory {out!r} already holds a run; pass --resume or choose another --out")
        return ckpt
    d.barrier()  # every rank has looked before rank 0 creates the directory
    if d.rank == 0:
        os.makedirs(out, exist_ok=True)
    return None


def _check_resumable(saved: dict, config: PruneConfig, ckpt: str) -> None:
    now = dataclasses.asdict(config)
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
            if k not in RESUME_FREE and saved.get(k) != now[k]]
    if diff:
        raise ValueError(f"cannot resume {ckpt!r}: it was started with different settings: {', '.join(diff)}")


# ---------------------------------------------------------------- the run
def run_prune(config: PruneConfig, *, on_epoch_end=None) -> dict:
    """Train (and prune) as configured; returns the summary also written to ``out/summary.json``.

    ``on_epoch_end(epoch, history_row)`` is called after each epoch's checkpoint is written.
    """
    config.validate()
    device = _resolve_device(config.device)
    with use_backend(config.backend):
        d = _Dist(device.type)
        try:
            return _run(config, device, d, on_epoch_end)
        finally:
            d.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _run(config: PruneConfig, device, d: _Dist, on_epoch_end) -> dict:
    train_ds, test_ds, info = load_dataset(config.data)  # first: a bad --data must not leave a run dir
    ckpt_path = _prepare_out(config, d)
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None:
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"checkpoint {ckpt_path!r} is not a training checkpoint (no config)")
        _check_resumable(state["config"], config, ckpt_path)

    _seed_everything(config.seed)
    n_train = len(train_ds)
    steps_per_epoch = _steps_per_epoch(n_train, config.batch_size, d.world)
    total_steps = steps_per_epoch * config.epochs  # the pruning phase; fine-tuning comes after
    all_epochs = config.epochs + config.finetune_epochs
    method = METHOD_CLASSES[config.method](config)
    model = build_model(config.model, info["num_classes"], info["in_channels"], info["image_size"])
    model = method.sparsify(model).to(device)
    example = train_ds.tensors[0][:1].to(device)
    controller = method.controller(model, total_steps, example)
    optimizer, gate_optimizer = _optimizers(method.param_groups(model), config, method.gate_lr())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * all_epochs)

    epoch, step, history = 0, 0, []
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if gate_optimizer is not None:
                gate_optimizer.load_state_dict(state["gate_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if controller is not None:
                controller.load_state_dict(state["controller"])
            set_rng_state(state["rng"])
            epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path!r} does not match this run "
                                  f"({' '.join(str(e).split())[:300]})") from e
    config_record = {**dataclasses.asdict(config), "dataset": info}
    if d.rank == 0:
        _write_json(os.path.join(config.out, "config.json"), config_record)
        if history:
            _write_logs(config.out, history)

    net = model
    if d.on:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x_all, y_all = train_ds.tensors
    show = config.progress and d.rank == 0
    while epoch < all_epochs:
        started = time.time()
        if epoch >= config.epochs:
            method.freeze(model)
        net.train()
        method.set_gate_modes(model)
        loss_sum = correct = seen = 0.0
        bar = _progress(show, steps_per_epoch, f"epoch {epoch + 1}/{all_epochs}")
        for i, (idx, global_batch) in enumerate(_epoch_batches(n_train, config.batch_size, config.seed, epoch,
                                                                d.rank, d.world)):
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            logits = net(x)
            # Sum over this rank's share, divided by the global batch, times world (DDP averages):
            # the gradient is exactly that of the global-batch mean.
            ce = F.cross_entropy(logits, y, reduction="sum")
            loss = ce * (d.world / global_batch)
            penalty = method.penalty(model, n_train)
            if penalty is not None:
                loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            if gate_optimizer is not None:
                gate_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if gate_optimizer is not None:
                gate_optimizer.step()
            scheduler.step()
            if controller is not None and not method.frozen:
                controller.step()
            step += 1
            loss_sum += float(ce.detach())
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                    sparsity=f"{method.sparsity(model):.3f}")
        loss_sum, correct, seen = d.sum([loss_sum, correct, seen], device)
        _recalibrate(model, method, train_ds, config, device)
        test_acc = _accuracy(model, test_ds, device, d)
        epoch += 1
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_acc": test_acc, "sparsity": method.sparsity(model),
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 3)}
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}",
                            test=f"{test_acc:.3f}", sparsity=f"{row['sparsity']:.3f}")
            bar.close()
        if d.rank == 0:
            save_checkpoint(os.path.join(config.out, "checkpoint.pt"), {
                "config": dataclasses.asdict(config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "gate_optimizer": gate_optimizer.state_dict() if gate_optimizer is not None else {},
                "controller": controller.state_dict() if controller is not None else {},
                "rng": rng_state(), "epoch": epoch, "step": step, "history": history,
            })
            _write_logs(config.out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    d.check_agree(model, method.sparsity(model), device)
    final = method.export(model)
    summary = _summarize(final, model, config, info, method, example, test_ds, device, d, history,
                         getattr(controller, "lam", None), method.widths(final))
    if d.rank == 0:
        atomic_torch_save({k: v.detach().cpu() for k, v in final.state_dict().items()},
                          os.path.join(config.out, "model.pt"))
        _write_json(os.path.join(config.out, "summary.json"), summary)
    d.barrier()
    return summary


def _progress(show: bool, total: int, desc: str):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _summarize(final, model, config, info, method, example, test_ds, device, d, history,
               controller_lambda=None, widths=None) -> dict:
    # FLOPs of the sparse model: its dense FLOPs are the original architecture's, and
    # channels closed by structured gates count as removed (see pruning.report).
    report = pruning.sparsity_report(model, example)
    sparsity = method.final_sparsity(model, report, final)
    return {
        "method": config.method, "model": config.model, "data": info["name"], "epochs": config.epochs,
        "seed": config.seed, "world_size": d.world,
        "accuracy": _accuracy(final, test_ds, device, d),
        "sparsity": sparsity,
        "params": sum(p.numel() for p in final.parameters()),
        "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in final.parameters())),
        "flops": int(round(report["total"]["effective_flops"])),
        "dense_flops": int(round(report["total"]["dense_flops"])),
        "layers": report["layers"],
        "total": report["total"],
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "finetune_epochs": config.finetune_epochs,
        **({"widths": widths} if widths is not None else {}),
        **({"final_lambda": controller_lambda} if controller_lambda is not None else {}),
    }
