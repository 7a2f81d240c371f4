"""Distributed checkpoints of a sharded (``--fsdp``) run, with ``torch.distributed.checkpoint`` (DCP).

Layout: ``RUN_DIR/checkpoint.dcp/step-<N>/`` holds DCP's files (``.metadata`` and one
``__<rank>_0.distcp`` per rank: each rank writes its own shards of the model, optimizer and
EMA tensors) and ``state.pt`` (everything else: config, counters, scheduler, controller, RNG,
the optimizers' hyper-parameters), written by rank 0.

Atomic: a checkpoint is written into ``.step-<N>.tmp/`` and renamed to ``step-<N>/`` only once
every rank has finished its part; then older ``step-*`` directories are deleted. A run killed
mid-save leaves its last complete ``step-*`` (and a ``.tmp`` directory, removed by the next
save). A failed write (a full disk) on any rank is one ``CheckpointWriteError`` on every rank,
the temporary directory removed and the last complete checkpoint kept.

Resharding: tensors are saved by their full (global) names and shapes, so a checkpoint saved on
N ranks loads on any number (DCP reads each rank's part of the new sharding).

Safety: DCP reads ``.metadata`` with ``pickle`` and non-tensor items with
``torch.load(weights_only=False)``. Here only tensors go through DCP, ``.metadata`` is read by an
unpickler that accepts nothing but DCP's own metadata records and torch's dtype/size types, and
``state.pt`` is read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import enum
import errno
import os
import pickle
import re
import shutil

import torch
import torch.distributed as dist
from torch import nn

from sparsekern.pruning.atomic_files import fsync_dir
from sparsekern.pruning.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

DIRNAME = "checkpoint.dcp"
STATE_FILE = "state.pt"
_STEP = re.compile(r"^step-(\d+)$")
_STEP_OR_OLD = re.compile(r"^step-(\d+)(\.old)?$")  # .old: moved aside while the same step is saved again
_PLACEHOLDER = "__sparsekern_dcp_tensor__"


class CheckpointWriteError(CheckpointError):
    """A distributed checkpoint could not be written (e.g. a full disk); the last complete one is kept.
    ``errno``: the failing write's error number (EIO if unknown)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


# ----------------------------------------------------------------- where the checkpoints are
def checkpoint_root(out: str) -> str:
    return os.path.join(out, DIRNAME)


def latest_checkpoint(out: str) -> str | None:
    """The newest complete ``step-<N>`` directory of a run, or None."""
    root = checkpoint_root(out)
    if not os.path.isdir(root):
        return None
    steps = [(int(m.group(1)), not m.group(2), name) for name in os.listdir(root) if (m := _STEP_OR_OLD.match(name))
             and os.path.isfile(os.path.join(root, name, STATE_FILE))]  # a step's .old only if it alone is left
    return os.path.join(root, max(steps)[2]) if steps else None


# ----------------------------------------------------------------- tensors <-> DCP, the rest <-> state.pt
def _split(obj, prefix: str, tensors: dict):
    """``obj`` with every tensor replaced by a placeholder naming its key in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return (_PLACEHOLDER, prefix)
    if isinstance(obj, dict):
        return {k: _split(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj))
    return obj


def _join(obj, tensors: dict):
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == _PLACEHOLDER:
        return tensors[obj[1]]
    if isinstance(obj, dict):
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_join(v, tensors) for v in obj)
    return obj


def _sharded_state(model: nn.Module, optimizers: dict, ema) -> dict:
    """The tensor-holding state: model, each optimizer (by parameter names), the EMA."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    state = {"model": get_model_state_dict(model)}
    for name, opt in optimizers.items():
        if opt is not None:
            state[name] = get_optimizer_state_dict(model, opt)
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


# ----------------------------------------------------------------- saving
def _agree(ok: bool) -> bool:
    """True when every rank's ``ok`` is (one all-reduce)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _errno(e: BaseException) -> int | None:
    """The operating system's error number behind ``e``: its own, the first failed rank's inside DCP's
    CheckpointException, or one quoted in its text."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    for inner in getattr(e, "failures", {}).values():
        return _errno(inner[0] if isinstance(inner, tuple) else inner)
    match = re.search(r"\[Errno (\d+)\]", str(e))
    return int(match.group(1)) if match else None


def _reason(e: BaseException) -> str:
    code = _errno(e)
    if code is not None:
        return os.strerror(code)
    for inner in getattr(e, "failures", {}).values():  # DCP's CheckpointException: the first rank's failure
        return _reason(inner[0] if isinstance(inner, tuple) else inner)
    return " ".join(str(e).split())[:200] or type(e).__name__


def save_sharded(out: str, step: int, model: nn.Module, optimizers: dict, ema, extra: dict) -> str:
    """Write the checkpoint of ``step`` (collective: every rank calls it); returns its directory.

    ``extra`` (a dict of plain values and small tensors, the same on every rank) goes to
    ``state.pt``. Raises ``CheckpointWriteError`` on every rank if any rank failed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    rank = dist.get_rank()
    root = checkpoint_root(out)
    final = os.path.join(root, f"step-{step:09d}")
    tmp = os.path.join(root, f".step-{step:09d}.tmp")
    previous = latest_checkpoint(out)
    error = None
    if rank == 0:
        try:
            os.makedirs(root, exist_ok=True)
            for name in os.listdir(root):  # a save killed earlier, or this step's own leftover
                if name.startswith(".step-") and name.endswith(".tmp"):
                    shutil.rmtree(os.path.join(root, name))
            os.makedirs(tmp)
        except OSError as e:
            error = e
    if not _agree(error is None):
        raise _write_error(root, error, previous)
    tensors: dict = {}
    skeleton = _split(_sharded_state(model, optimizers, ema), "", tensors)
    try:
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps each rank's failure (a BaseException)
        error = e
    if error is None and rank == 0:
        try:
            save_checkpoint(os.path.join(tmp, STATE_FILE), {**extra, "sharded": skeleton, "step": step})
        except (OSError, RuntimeError) as e:
            error = e
    if not _agree(error is None):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(root, error, previous)
    if rank == 0:  # complete on every rank: publish it, then drop the older ones
        try:
            if os.path.isdir(final):  # the same step saved again (after a resume): moved aside, not
                os.replace(final, final + ".old")  # deleted, until the new one is in place
            os.replace(tmp, final)
            fsync_dir(root)
            shutil.rmtree(final + ".old", ignore_errors=True)
        except OSError as e:
            error = e
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for name in os.listdir(root):
                m = _STEP_OR_OLD.match(name)
                if m and (int(m.group(1)) != step or m.group(2)):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if not _agree(error is None):  # also the barrier: no rank goes on before it is published
        raise _write_error(root, error, previous)
    return final


def _write_error(root: str, error, previous: str | None) -> CheckpointWriteError:
    reason = _reason(error) if error is not None else "another rank failed to write its part"
    kept = f"the last complete checkpoint {previous!r} is kept" if previous else "no earlier checkpoint exists"
    code = (_errno(error) if error is not None else None) or errno.EIO
    return CheckpointWriteError(code, f"cannot write the distributed checkpoint into {root!r}: {reason}; {kept}")


# ----------------------------------------------------------------- loading
class _MetadataUnpickler(pickle.Unpickler):
    """Only DCP's metadata records (dataclasses, enums) and torch's size/dtype/layout types."""

    def find_class(self, module, name):
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                          torch.memory_format)):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":  # a layout by its name
            from torch.serialization import _get_layout
            return _get_layout
        if (module, name) in (("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                              ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")):
            import importlib
            return getattr(importlib.import_module(module), name)
        if module.startswith("torch.distributed.checkpoint."):
            import importlib
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _safe_reader(path: str):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(self.path, ".metadata"), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def read_state(path: str) -> dict:
    """``state.pt`` of a checkpoint directory (``weights_only=True``): what ``save_sharded`` got as ``extra``."""
    return load_checkpoint(os.path.join(path, STATE_FILE))


def load_sharded(path: str, state: dict, model: nn.Module, optimizers: dict, ema) -> None:
    """Load the tensors of checkpoint ``path`` into ``model``, ``optimizers`` and ``ema``, sharded as
    they are now (collective). ``state``: ``read_state(path)``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    targets: dict = {}
    _split(_sharded_state(model, optimizers, ema), "", targets)
    saved_names = _names(state["sharded"])
    if set(targets) != saved_names:
        missing, extra = sorted(saved_names - set(targets))[:3], sorted(set(targets) - saved_names)[:3]
        raise CheckpointError(f"checkpoint {path!r} does not match this run (saved only: {missing}, "
                              f"here only: {extra})")
    try:
        dcp.load(targets, storage_reader=_safe_reader(path))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps every rank's failure
        raise CheckpointError(f"checkpoint {path!r} is unreadable or does not match this run "
                              f"({_reason(e)})") from e
    loaded = _join(state["sharded"], targets)
    set_model_state_dict(model, loaded["model"])
    for name, opt in optimizers.items():
        if opt is not None:
            set_optimizer_state_dict(model, opt, loaded[name])
    if ema is not None:
        ema.load_state_dict(loaded["ema"])


def _names(skeleton) -> set:
    found = set()

    def walk(obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == _PLACEHOLDER:
            found.add(obj[1])
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(skeleton)
    return found
