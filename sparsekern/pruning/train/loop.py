"""The training loop behind ``sparsekern prune``: ``run_prune(PruneConfig(...)) -> summary``.

Run directory (written by rank 0 only): ``config.json``, ``checkpoint.pt``
(atomic, every epoch), ``log.csv`` and ``log.jsonl`` (one row per epoch),
and at the end ``summary.json`` and ``model.pt`` (the finalized state_dict); a Hugging Face
model (``hf:``) also its ``save_pretrained`` in ``hf_model/``. What is minimised and counted
follows the data's task (``objective``: classification, or next-token prediction).

Reproducibility: the batch order of epoch ``e`` is a permutation seeded by
(seed, e), and a checkpoint holds model (with the sparse layers' RNG offset
buffers), optimizer(s), scheduler, pruning controller, RNG states and counters,
so a killed run resumed with ``resume=True`` ends with the same weights as an
uninterrupted one. Under ``torchrun`` the model is wrapped in DDP (gloo on CPU),
or with ``fsdp`` sharded by FSDP2 (``fsdp.shard_model``; checkpoints in
``checkpoint.dcp/``, ``sharded_checkpoint``); each global batch is split across
ranks and the loss is scaled so the averaged gradient equals the single-process
one; controllers act on the synchronized (with FSDP: gathered, ``full_parameters``)
parameters, so every rank takes the same pruning decisions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F  # noqa: F401  (losses: objective.py; tests kill a run mid-step via trainer.F)

from sparsekern.backends import use_backend
from sparsekern.data import load_dataset
from sparsekern.models import build_for_data, check_for_data
from sparsekern.models.hf import is_hf_name
from sparsekern.pruning.defaults import L0_GATE_LR, L0_LAMBDA  # noqa: F401  (the defaults a run uses)
from sparsekern.pruning.methods import METHODS as METHOD_CLASSES
from sparsekern.pruning.surgery.sparsify import STRUCTURED
from sparsekern.pruning.train.batches import BatchSource, epoch_plan
from sparsekern.pruning.train.batches import steps_per_epoch as _steps_per_epoch
from sparsekern.pruning.train.checkpoint import (
    CheckpointError, atomic_torch_save, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from sparsekern.pruning.train.config import PruneConfig
from sparsekern.pruning.train.distributed import Distributed, resolve_device
from sparsekern.pruning.train.ema import ParameterEMA
from sparsekern.pruning.train.evaluation import autocast, evaluate, evaluated, recalibrate
from sparsekern.pruning.train.fsdp import full_parameters, shard_model
from sparsekern.pruning.train.health import check_finite, health_fields
from sparsekern.pruning.train.lr_schedule import lr_scheduler
from sparsekern.pruning.train.objective import objective_for, perplexity
from sparsekern.pruning.train.progress import progress
from sparsekern.pruning.train.run_dir import (
    check_resumable, finished_summary, prepare_out, write_json, write_logs, write_pretrained,
)
from sparsekern.pruning.train.runlock import RunLock
from sparsekern.pruning.train.sharded_checkpoint import load_sharded, read_state, save_sharded


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


def _step_scheduler(scheduler, scaler) -> None:
    """The LR follows the step count, like the controllers. A GradScaler skips the optimizer step of
    an inf/NaN gradient (always its first fp16 step, while it calibrates the scale); torch then warns
    that the scheduler stepped first. That is intended here (the skipped step had no update to
    schedule), so that one warning is silenced, and only under a GradScaler."""
    if scaler is None:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        scheduler.step()


def run_prune(config: PruneConfig, *, on_epoch_end=None) -> dict:
    """Train (and prune) as configured; returns the summary also written to ``out/summary.json``.

    ``on_epoch_end(epoch, history_row)`` is called after each epoch's checkpoint is written.
    """
    config.validate()
    device = resolve_device(config.device)
    with use_backend(config.backend), contextlib.ExitStack() as cleanup:
        d = Distributed(device.type, fsdp=config.fsdp)
        cleanup.callback(d.close)
        return _run(config, device, d, on_epoch_end, cleanup)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _run(config: PruneConfig, device, d: Distributed, on_epoch_end, cleanup: contextlib.ExitStack) -> dict:
    train_ds, test_ds, info = load_dataset(config.data)  # first: a bad --data must not leave a run dir
    check_for_data(config.model, info)  # likewise a bad --model, or one that cannot take this data
    ckpt_path = prepare_out(config, d)
    if d.rank == 0:  # one run per directory: a second one is refused while this one holds it
        cleanup.enter_context(RunLock(config.out))
    if ckpt_path is None:
        state = None
    else:
        state = read_state(ckpt_path) if config.fsdp else load_checkpoint(ckpt_path)
    if state is not None:
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"checkpoint {ckpt_path!r} is not a training checkpoint (no config)")
        check_resumable(state["config"], config, ckpt_path)

    _seed_everything(config.seed)
    n_train = len(train_ds)
    steps_per_epoch = _steps_per_epoch(n_train, config.batch_size, d.world)
    total_steps = steps_per_epoch * config.epochs  # the pruning phase; fine-tuning comes after
    all_epochs = config.epochs + config.finetune_epochs
    method = METHOD_CLASSES[config.method](config)
    objective = objective_for(info)  # classification, or next-token prediction for causal-LM data

    def fresh_model():
        model = build_for_data(config.model, info)
        try:
            return method.sparsify(model).to(device)
        except ValueError as e:
            if config.method in STRUCTURED and is_hf_name(config.model):  # the CLI cannot pass layers=[...]
                raise ValueError(f"method {config.method!r} on model {config.model!r}: no gate placement is known "
                                 f"for {type(model).__name__} ({' '.join(str(e).split())[:200]})") from e
            raise

    model = fresh_model()
    example = test_ds[0][0].unsqueeze(0).to(device)
    controller = method.controller(model, total_steps, example)
    if config.channels_last:  # before sharding: FSDP2 shards the tensors it is given
        model.to(memory_format=torch.channels_last)
    if config.fsdp:  # after the controller (built on the full model), before the optimizers (on the shards)
        shard_model(model)
        d.sync_buffers(model)  # then, as under DDP, no per-step broadcast (see Distributed.wrap)
    # With FSDP the parameters outside a forward are shards: what reads or edits them runs on
    # the gathered full tensors (a no-op context otherwise).
    full = (lambda: full_parameters(model)) if config.fsdp else contextlib.nullcontext
    optimizer, gate_optimizer = method.optimizers(method.param_groups(model))
    scheduler = lr_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    source = BatchSource(device, workers=config.workers, channels_last=config.channels_last, seed=config.seed)
    ema = ParameterEMA(model, config.ema) if config.ema else None

    epoch, step, history, position = 0, 0, [], {}
    if state is not None:
        try:
            if config.fsdp:
                load_sharded(ckpt_path, state, model, {"optimizer": optimizer, "gate_optimizer": gate_optimizer},
                             ema)
            else:
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
    finished = finished_summary(config, state) if state is not None else None
    if finished is not None:
        return finished
    config_record = {**dataclasses.asdict(config), "dataset": info}
    if d.rank == 0:
        write_json(os.path.join(config.out, "config.json"), config_record)
        if history:
            write_logs(config.out, history)

    ddp = d.on and not config.fsdp
    net = d.wrap(model, device) if ddp else model  # no per-step buffer broadcast (see Distributed.wrap)
    frozen_seen = method.frozen

    def after_freeze() -> None:
        """The gates were frozen (a fine-tune epoch, or the L0 controller's freeze mid-epoch). DDP
        fixed at wrap time which parameters get gradients, so the model is wrapped again; under
        FSDP a freeze inside ``full()`` reached only the gathered copies, so it is applied again to
        the sharded parameters (``Method.freeze`` is idempotent)."""
        nonlocal net, frozen_seen
        frozen_seen = True
        method.freeze(model)
        if ddp:
            net = d.wrap(model, device)

    show = config.progress and d.rank == 0

    def save(extra: dict) -> None:
        """checkpoint.pt by rank 0; with FSDP a sharded checkpoint written by every rank."""
        common = {
            "config": dataclasses.asdict(config), "scheduler": scheduler.state_dict(),
            "controller": controller.state_dict() if controller is not None else {},
            "rng": rng_state(), "epoch": epoch, "step": step, "history": history,
            "scaler": scaler.state_dict() if scaler is not None else {}, **extra,
        }
        if config.fsdp:
            d.sync_buffers(model)  # DCP may write a replicated buffer from any rank: rank 0's, as under DDP
            save_sharded(config.out, step, model, {"optimizer": optimizer, "gate_optimizer": gate_optimizer},
                         ema, common)
        elif d.rank == 0:
            save_checkpoint(os.path.join(config.out, "checkpoint.pt"), {
                **common, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "gate_optimizer": gate_optimizer.state_dict() if gate_optimizer is not None else {},
                "ema": ema.state_dict() if ema is not None else {},
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
        if method.frozen and not frozen_seen:
            after_freeze()
        net.train()
        method.set_gate_modes(model)
        bar = progress(show, steps_per_epoch, f"epoch {epoch + 1}/{all_epochs}")
        if bar is not None:
            bar.update(first)
        plan = epoch_plan(n_train, config.batch_size, config.seed, epoch, d.rank, d.world)
        for i, (x, y, global_batch) in enumerate(source.train(train_ds, plan, epoch, first), start=first):
            with autocast(config, device):
                output = net(x)
            # Sum over this rank's share, divided by the global batch's units (examples; causal LM:
            # predicted tokens), times world (DDP averages): the gradient is exactly that of the
            # global-batch mean.
            ce = objective.loss_sum(output, y, config.label_smoothing)
            loss = ce * (d.world / objective.global_units(global_batch, y))
            with full():
                penalty = method.penalty(model, n_train)
            if penalty is not None:
                loss = loss + penalty
            if not d.on:  # stop at the first bad step (under DDP the ranks agree once per epoch, below)
                check_finite(float(loss.detach()), epoch, step, config)
            optimizer.zero_grad(set_to_none=True)
            if gate_optimizer is not None:
                gate_optimizer.zero_grad(set_to_none=True)
            _backward_and_step(loss, optimizers, scaler)
            _step_scheduler(scheduler, scaler)
            with torch.no_grad(), full():
                if controller is not None and not method.frozen:
                    controller.step()
                method.after_step(model)
            if method.frozen and not frozen_seen:
                after_freeze()
            if ema is not None:
                ema.update()
            step += 1
            loss_sum += float(ce.detach())
            correct += float(objective.correct(output, y))
            seen += objective.units(y)
            if bar is not None:
                bar.update(1)
                # live bars only (the epoch's last postfix is set below); under FSDP the sparsity is a
                # gather, which rank 0 alone cannot do
                if getattr(bar, "live", True) and i % 10 == 0 and not config.fsdp:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                    sparsity=f"{method.sparsity(model):.3f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and i + 1 < len(plan):
                sums = d.sum([loss_sum, correct, seen], device)  # every rank reaches this step
                save({"position": {"batch": i + 1, "sums": sums, "seconds": time.time() - started}})
        loss_sum, correct, seen = d.sum([loss_sum, correct, seen], device)
        check_finite(loss_sum, epoch, step - 1, config)
        d.sync_buffers(model)  # rank 0's BatchNorm statistics and noise counters on every rank
        recalibrate(model, method, train_ds, config, device)
        with evaluated(ema), torch.no_grad(), full():  # FSDP: each rank runs its share of the test set alone, unsharded
            test_acc, test_loss = evaluate(model, test_ds, source, d, config, objective=objective)
        epoch += 1
        with torch.no_grad(), full():
            sparsity_now = method.sparsity(model)
        row = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_acc": test_acc, "sparsity": sparsity_now,
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 3),
               **_sequence_fields(info, test_loss)}
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}",
                            test=f"{test_acc:.3f}", sparsity=f"{row['sparsity']:.3f}")
            bar.close()
        save({})
        if d.rank == 0:
            write_logs(config.out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if config.fsdp:  # the summary and export work on a full, unsharded copy (the EMA's, if any)
        with evaluated(ema), torch.no_grad(), full_parameters(model):
            trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model, ema = fresh_model(), None
        model.load_state_dict(trained)
    d.check_agree(model, method.sparsity(model), device)
    with evaluated(ema):
        final = method.export(model)
        summary = _summarize(final, model, config, info, method, example, test_ds, source, d, history,
                             getattr(controller, "lam", None), objective)
    summary.update(health_fields(summary, history, info, controller, show=d.rank == 0))
    if d.rank == 0:
        atomic_torch_save({k: v.detach().cpu() for k, v in final.state_dict().items()},
                          os.path.join(config.out, "model.pt"))
        if hasattr(final, "save_pretrained"):  # a Hugging Face model: from_pretrained(RUN_DIR/hf_model) reloads it
            write_pretrained(config.out, final)
        write_json(os.path.join(config.out, "summary.json"), summary)
    d.barrier()
    return summary


def _sequence_fields(info: dict, test_loss: float) -> dict:
    """Token data: the test loss per unit, and for causal LM its perplexity (image runs log neither)."""
    if info.get("task") is None:
        return {}
    return {"test_loss": test_loss, **({"test_perplexity": perplexity(test_loss)} if info["task"] == "causal_lm" else {})}


def _summarize(final, model, config, info, method, example, test_ds, source, d, history,
               controller_lambda=None, objective=None) -> dict:
    # FLOPs of the sparse model: its dense FLOPs are the original architecture's, and
    # channels closed by structured gates count as removed (see pruning.report).
    report = method.report(model, example)
    sparsity = method.final_sparsity(model, report, final)
    widths = method.widths(final)
    acc, test_loss = evaluate(final, test_ds, source, d, config, objective=objective)  # float32, as exported
    return {
        "method": config.method, "model": config.model, "data": info["name"], "epochs": config.epochs,
        "seed": config.seed, "world_size": d.world,
        "accuracy": acc,
        **({"accuracy_amp": evaluate(final, test_ds, source, d, config, amp=True, objective=objective)[0]}
           if config.amp != "off" else {}),
        **({"task": info["task"], "seq_len": info["seq_len"], **_sequence_fields(info, test_loss)}
           if info.get("task") else {}),
        "sparsity": sparsity,
        "params": sum(p.numel() for p in final.parameters()),
        "nonzero_params": int(sum(int(torch.count_nonzero(p)) for p in final.parameters())),
        "flops": int(round(report["total"]["effective_flops"])),
        "dense_flops": int(round(report["total"]["dense_flops"])),
        "layers": report["layers"],
        "total": report["total"],
        "left_dense": report["left_dense"],
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "finetune_epochs": config.finetune_epochs,
        **({"widths": widths} if widths is not None else {}),
        **({"final_lambda": controller_lambda} if controller_lambda is not None else {}),
    }
