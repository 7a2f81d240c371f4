"""The run directory: ``config.json``, ``log.csv``/``log.jsonl`` and ``summary.json`` (each written
atomically), ``hf_model/`` (a Hugging Face model's save_pretrained, whole or not at all), the check
that refuses to overwrite a run, and the checks before resuming one."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile

from sparsekern.pruning.atomic_files import atomic_write, write_failure
from sparsekern.pruning.surgery.export.hf_pretrained import save_shrunk_pretrained
from sparsekern.pruning.train.config import RESUME_FREE, PruneConfig
from sparsekern.pruning.train.distributed import Distributed
from sparsekern.pruning.train.sharded_checkpoint import checkpoint_root, latest_checkpoint

LOG_FIELDS = ("epoch", "step", "train_loss", "train_acc", "test_acc", "sparsity", "lr", "seconds")


def _write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


def write_logs(out: str, history: list[dict]) -> None:
    """Rewrite log.csv and log.jsonl from the history (so a resumed run never duplicates rows)."""
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    _write_text(os.path.join(out, "log.csv"), table.getvalue())
    _write_text(os.path.join(out, "log.jsonl"), "".join(json.dumps(row) + "\n" for row in history))


def prepare_out(config: PruneConfig, d: Distributed) -> str | None:
    """The checkpoint to resume from (or None): ``checkpoint.pt``, or with ``fsdp`` the newest complete
    ``checkpoint.dcp/step-<N>`` directory; refuses to overwrite a run unless resuming."""
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out {out!r} exists and is not a directory")
    ckpt = os.path.join(out, "checkpoint.pt")
    sharded = latest_checkpoint(out)
    if os.path.exists(ckpt) or sharded is not None:
        if not config.resume:
            raise ValueError(f"run directory {out!r} already holds a run; pass --resume or choose another --out")
        if config.fsdp and sharded is None:
            raise ValueError(f"cannot resume {ckpt!r} with fsdp: that run was not sharded (resume it without --fsdp)")
        if not config.fsdp and not os.path.exists(ckpt):
            raise ValueError(f"cannot resume {checkpoint_root(out)!r} without fsdp: that run was sharded "
                             "(resume it with --fsdp)")
        return sharded if config.fsdp else ckpt
    d.barrier()  # every rank has looked before rank 0 creates the directory
    if d.rank == 0:
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:  # read-only file system, no permission, a file in the path
            raise write_failure(e, out) from e
    return None


def check_resumable(saved: dict, config: PruneConfig, ckpt: str) -> None:
    now = dataclasses.asdict(config)
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now  # a missing key: saved before it existed
            if k not in RESUME_FREE and saved.get(k, now[k]) != now[k]]
    if diff:
        raise ValueError(f"cannot resume {ckpt!r}: it was started with different settings: {', '.join(diff)}")


def finished_summary(config: PruneConfig, state: dict) -> dict | None:
    """A resumed run that already trained all its epochs: its summary, marked ``already_finished``
    (nothing is retrained or rewritten); None if it still has work to do."""
    path = os.path.join(config.out, "summary.json")
    if int(state.get("epoch", 0)) < config.epochs + config.finetune_epochs or not os.path.isfile(path):
        return None
    with open(path) as f:
        return {**json.load(f), "already_finished": True}


PRETRAINED_DIR = "hf_model"


def write_pretrained(out: str, model) -> str:
    """``model.save_pretrained`` into ``out/hf_model`` (a Hugging Face model), whole or not at all:
    written beside it first, then renamed over any earlier copy. A model whose heads or neurons
    ``finalize`` removed is written with its modeling file (``from_pretrained(..., trust_remote_code=True)``)."""
    final = os.path.join(out, PRETRAINED_DIR)
    staging = tempfile.mkdtemp(prefix=f".{PRETRAINED_DIR}-", dir=out)
    try:
        if hasattr(model, "sparsekern_shapes"):  # heads/neurons removed: the config alone cannot rebuild it
            save_shrunk_pretrained(model, staging)
        else:
            model.save_pretrained(staging)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
