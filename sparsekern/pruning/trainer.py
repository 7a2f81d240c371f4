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

import contextlib
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
from sparsekern.models import build_model, check_model_name
from sparsekern.pruning import recipes
from sparsekern.pruning.batches import BatchSource, epoch_plan
from sparsekern.pruning.batches import steps_per_epoch as _steps_per_epoch
from sparsekern.pruning.checkpoint import (
    CheckpointError, atomic_torch_save, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from sparsekern.pruning.ema import ParameterEMA
from sparsekern.pruning.methods import METHODS as METHOD_CLASSES
from sparsekern.pruning.methods.base import has_batchnorm
from sparsekern.pruning.recipes import L0_GATE_LR, L0_LAMBDA  # noqa: F401  (re-exported)
from sparsekern.pruning.runlock import RunLock

METHODS = tuple(METHOD_CLASSES)
# Settings that may change between a run and its resumption without changing the result.
RESUME_FREE = ("out", "resume", "progress", "backend", "device", "workers", "checkpoint_every")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("off", "bf16", "fp16")
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
    lr: float | None = None  # None: the recipe's (0.05; l0 paper: Adam's 1e-3)
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9
    backend: str = "auto"
    device: str = "auto"
    progress: bool = True
    recipe: str = "default"  # or "paper": the original code's training (see recipes.py)
    s_init: float | None = None  # str: initial threshold logit; None: relative to the weights (paper: -3200)
    ema: float | None = None  # beta of the parameter EMA used for evaluation; 0 off; None: the recipe's
    lr_schedule: str | None = None  # cosine, step or constant; None: the recipe's (cosine; l0 paper: constant)
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate from 0
    lr_milestones: tuple = ()  # step schedule: epochs at which the rate is multiplied by 0.1
    label_smoothing: float = 0.0
    amp: str = "off"  # off, bf16 (autocast) or fp16 (autocast + GradScaler)
    channels_last: bool = False
    workers: int = 0  # DataLoader worker processes (datasets read from disk)
    checkpoint_every: int = 0  # also checkpoint every N steps within an epoch (0: at epoch ends only)

    def __post_init__(self):
        if self.lr is None:
            self.lr = recipes.default_lr(self.method, self.recipe)
        if self.ema is None:
            self.ema = recipes.default_ema(self.method, self.recipe)
        if self.lr_schedule is None:
            self.lr_schedule = "constant" if (self.method, self.recipe) == ("l0", "paper") else "cosine"
        self.lr_milestones = tuple(self.lr_milestones)
        if self.s_init is None and (self.method, self.recipe) == ("str", "paper"):
            self.s_init = recipes.STR_PAPER_S_INIT

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
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.target_sparsity is not None and not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if self.lam is not None and (not math.isfinite(self.lam) or self.lam < 0):
            raise ValueError(f"lambda must be a finite number >= 0, got {self.lam}")
        if not isinstance(self.finetune_epochs, int) or isinstance(self.finetune_epochs, bool) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an int >= 0, got {self.finetune_epochs!r}")
        if self.target_flops is not None and not 0.0 < self.target_flops < 1.0:
            raise ValueError(f"target_flops must be in (0, 1), got {self.target_flops}")
        if self.dependency not in (None, "forward", "backward"):
            raise ValueError(f"dependency must be 'forward' or 'backward', got {self.dependency!r}")
        if self.target_flops is not None and self.lam is not None:
            raise ValueError("target_flops adapts lambda itself: give one of target_flops and lambda")
        if self.recipe == "paper" and (self.target_sparsity is not None and self.method == "l0"):
            raise ValueError("recipe 'paper' for method 'l0' has no target (the paper's knob is --lambda)")
        METHOD_CLASSES[self.method].check(self)
        if self.gate_lr is not None and (isinstance(self.gate_lr, bool) or not isinstance(self.gate_lr, (int, float))
                                         or not math.isfinite(self.gate_lr) or self.gate_lr <= 0):
            raise ValueError(f"gate_lr must be a finite number > 0, got {self.gate_lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        self._validate_recipe_and_schedule()

    def _validate_recipe_and_schedule(self) -> None:
        if self.recipe == "paper" and self.method not in ("str", "l0"):
            raise ValueError(f"recipe 'paper' exists for methods 'str' and 'l0', not {self.method!r}")
        if self.recipe == "paper" and self.gate_lr is not None:
            raise ValueError("gate_lr is not used by recipe 'paper' (its Adam trains every parameter at lr)")
        if self.recipe not in recipes.RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(recipes.RECIPES)}, got {self.recipe!r}")
        if self.s_init is not None and (self.method != "str" or isinstance(self.s_init, bool)
                                        or not isinstance(self.s_init, (int, float)) or not math.isfinite(self.s_init)):
            raise ValueError(f"s_init must be a finite number and only with method 'str', got {self.s_init!r} "
                             f"with method {self.method!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema!r}")
        if self.recipe == "paper" and self.method == "str" and self.target_sparsity is not None:
            raise ValueError("recipe 'paper' for method 'str' has no target (the paper's knob is --lambda, "
                             "the thresholds' weight decay)")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name, high in (("warmup_epochs", self.epochs), ("label_smoothing", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < high:
                raise ValueError(f"{name} must be a number in [0, {high}), got {v!r}")
        for name in ("workers", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or not 0 < m < self.epochs for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be epochs in (0, {self.epochs}), got {list(self.lr_milestones)}")
        if self.lr_milestones and self.lr_schedule != "step":
            raise ValueError("lr_milestones are only for lr_schedule 'step'")


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
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r}: not a device (use cpu, cuda, cuda:N or auto)") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: sparsekern trains on cpu or cuda (cuda:N), not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------- method helpers
RECALIBRATION_BATCHES = 20


def _recalibrate(model: nn.Module, method, train_ds, config: PruneConfig, device) -> None:
    """BatchNorm statistics of the eval network (see pruning.batchnorm), from the first training
    batches in a fixed order (no RNG drawn, so resumed runs stay identical)."""
    if not (method.has_gates_or_thresholds() and has_batchnorm(model)):
        return
    data = (train_ds.tensors[0] if hasattr(train_ds, "tensors")
            else torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size))
    pruning.recalibrate_bn(model, data, RECALIBRATION_BATCHES, batch_size=config.batch_size)


def _scheduler(optimizer, config: PruneConfig, steps_per_epoch: int):
    """Per-step learning-rate schedule: linear warm-up, then cosine to 0, steps of 0.1 or constant."""
    total = steps_per_epoch * (config.epochs + config.finetune_epochs)
    warm = round(config.warmup_epochs * steps_per_epoch)
    if config.lr_schedule == "cosine" and not warm:  # the schedule runs have always used
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    milestones = [m * steps_per_epoch for m in config.lr_milestones]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if config.lr_schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _evaluated(ema):
    """Evaluate with the EMA parameters when there is one."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def _accuracy(model: nn.Module, ds, source: BatchSource, d: _Dist, config: PruneConfig) -> float:
    model.eval()
    correct = seen = 0
    for x, y in source.evaluate(ds, d.rank, d.world):
        with _autocast(config, x.device):
            correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    total_correct, total = d.sum([float(correct), float(seen)], source.device)
    return total_correct / total


def _autocast(config: PruneConfig, device: torch.device):
    if config.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


def _backward_and_step(loss, optimizers: list, scaler) -> None:
    """backward and every optimizer's step; fp16: through the GradScaler (it skips steps with inf/NaN grads)."""
    if scaler is None:
        loss.backward()
        for opt in optimizers:
            opt.step()
        return
    scaler.scale(loss).backward()
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()


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
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now  # a missing key: saved before it existed
            if k not in RESUME_FREE and saved.get(k, now[k]) != now[k]]
    if diff:
        raise ValueError(f"cannot resume {ckpt!r}: it was started with different settings: {', '.join(diff)}")


def _finished_summary(config: PruneConfig, state: dict) -> dict | None:
    """A resumed run that already trained all its epochs: its summary, marked ``already_finished``
    (nothing is retrained or rewritten); None if it still has work to do."""
    path = os.path.join(config.out, "summary.json")
    if int(state.get("epoch", 0)) < config.epochs + config.finetune_epochs or not os.path.isfile(path):
        return None
    with open(path) as f:
        return {**json.load(f), "already_finished": True}


# ---------------------------------------------------------------- the run
def run_prune(config: PruneConfig, *, on_epoch_end=None) -> dict:
    """Train (and prune) as configured; returns the summary also written to ``out/summary.json``.

    ``on_epoch_end(epoch, history_row)`` is called after each epoch's checkpoint is written.
    """
    config.validate()
    device = _resolve_device(config.device)
    with use_backend(config.backend), contextlib.ExitStack() as cleanup:
        d = _Dist(device.type)
        cleanup.callback(d.close)
        return _run(config, device, d, on_epoch_end, cleanup)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


def _check_finite(loss: float, epoch: int, step: int, config: PruneConfig) -> None:
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {config.out!r}" if epoch
                else "no checkpoint was written")
        raise TrainingDiverged(f"training loss became {loss} in epoch {epoch + 1} (step {step + 1}); "
                               f"lower --lr or check the data; {kept}")


def _run(config: PruneConfig, device, d: _Dist, on_epoch_end, cleanup: contextlib.ExitStack) -> dict:
    train_ds, test_ds, info = load_dataset(config.data)  # first: a bad --data must not leave a run dir
    check_model_name(config.model)  # likewise a bad --model
    ckpt_path = _prepare_out(config, d)
    if d.rank == 0:  # one run per directory: a second one is refused while this one holds it
        cleanup.enter_context(RunLock(config.out))
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
    example = test_ds[0][0].unsqueeze(0).to(device)
    controller = method.controller(model, total_steps, example)
    optimizer, gate_optimizer = method.optimizers(method.param_groups(model))
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    source = BatchSource(device, workers=config.workers, channels_last=config.channels_last, seed=config.seed)
    ema = ParameterEMA(model, config.ema) if config.ema else None

    epoch, step, history, position = 0, 0, [], {}
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if gate_optimizer is not None:
                gate_optimizer.load_state_dict(state["gate_optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            scheduler.load_state_dict(state["scheduler"])
            if controller is not None:
                controller.load_state_dict(state["controller"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
            position = dict(state.get("position", {}))  # within the epoch, if saved mid-epoch
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path!r} does not match this run "
                                  f"({' '.join(str(e).split())[:300]})") from e
    finished = _finished_summary(config, state) if state is not None else None
    if finished is not None:
        return finished
    config_record = {**dataclasses.asdict(config), "dataset": info}
    if d.rank == 0:
        _write_json(os.path.join(config.out, "config.json"), config_record)
        if history:
            _write_logs(config.out, history)

    net = model
    if d.on:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    show = config.progress and d.rank == 0

    def save(extra: dict) -> None:
        save_checkpoint(os.path.join(config.out, "checkpoint.pt"), {
            "config": dataclasses.asdict(config), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "gate_optimizer": gate_optimizer.state_dict() if gate_optimizer is not None else {},
            "controller": controller.state_dict() if controller is not None else {},
            "rng": rng_state(), "epoch": epoch, "step": step, "history": history,
            "ema": ema.state_dict() if ema is not None else {},
            "scaler": scaler.state_dict() if scaler is not None else {}, **extra,
        })

    optimizers = [opt for opt in (optimizer, gate_optimizer) if opt is not None]
    while epoch < all_epochs:
        first = int(position.get("batch", 0))  # > 0: resuming in the middle of this epoch
        # Sums so far (all ranks' from a mid-epoch checkpoint, held by rank 0 only).
        loss_sum, correct, seen = position.get("sums", [0.0, 0.0, 0.0]) if d.rank == 0 else [0.0, 0.0, 0.0]
        started = time.time() - float(position.get("seconds", 0.0))
        position = {}
        if epoch >= config.epochs:
            method.freeze(model)
        net.train()
        method.set_gate_modes(model)
        bar = _progress(show, steps_per_epoch, f"epoch {epoch + 1}/{all_epochs}")
        if bar is not None:
            bar.update(first)
        plan = epoch_plan(n_train, config.batch_size, config.seed, epoch, d.rank, d.world)
        for i, (x, y, global_batch) in enumerate(source.train(train_ds, plan, epoch, first), start=first):
            with _autocast(config, device):
                logits = net(x)
            # Sum over this rank's share, divided by the global batch, times world (DDP averages):
            # the gradient is exactly that of the global-batch mean.
            ce = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=config.label_smoothing)
            loss = ce * (d.world / global_batch)
            penalty = method.penalty(model, n_train)
            if penalty is not None:
                loss = loss + penalty
            if not d.on:  # stop at the first bad step (under DDP the ranks agree once per epoch, below)
                _check_finite(float(loss.detach()), epoch, step, config)
            optimizer.zero_grad(set_to_none=True)
            if gate_optimizer is not None:
                gate_optimizer.zero_grad(set_to_none=True)
            _backward_and_step(loss, optimizers, scaler)
            scheduler.step()
            if controller is not None and not method.frozen:
                controller.step()
            method.after_step(model)
            if ema is not None:
                ema.update()
            step += 1
            loss_sum += float(ce.detach())
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                    sparsity=f"{method.sparsity(model):.3f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and i + 1 < len(plan):
                sums = d.sum([loss_sum, correct, seen], device)  # every rank reaches this step
                if d.rank == 0:
                    save({"position": {"batch": i + 1, "sums": sums, "seconds": time.time() - started}})
        loss_sum, correct, seen = d.sum([loss_sum, correct, seen], device)
        _check_finite(loss_sum, epoch, step - 1, config)
        _recalibrate(model, method, train_ds, config, device)
        with _evaluated(ema):
            test_acc = _accuracy(model, test_ds, source, d, config)
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
            save({})
            _write_logs(config.out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    d.check_agree(model, method.sparsity(model), device)
    with _evaluated(ema):
        final = method.export(model)
        summary = _summarize(final, model, config, info, method, example, test_ds, source, d, history,
                             getattr(controller, "lam", None))
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


def _summarize(final, model, config, info, method, example, test_ds, source, d, history,
               controller_lambda=None) -> dict:
    # FLOPs of the sparse model: its dense FLOPs are the original architecture's, and
    # channels closed by structured gates count as removed (see pruning.report).
    report = pruning.sparsity_report(model, example)
    sparsity = method.final_sparsity(model, report, final)
    widths = method.widths(final)
    return {
        "method": config.method, "model": config.model, "data": info["name"], "epochs": config.epochs,
        "seed": config.seed, "world_size": d.world,
        "accuracy": _accuracy(final, test_ds, source, d, config),
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
