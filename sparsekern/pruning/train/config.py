"""``PruneConfig``: every setting of a ``sparsekern prune`` run, its defaults and its validation."""
from __future__ import annotations

import math
from dataclasses import dataclass

from sparsekern.pruning.methods import METHODS as METHOD_CLASSES
from sparsekern.pruning.methods import recipes

METHODS = tuple(METHOD_CLASSES)
# Settings that may change between a run and its resumption without changing the result.
RESUME_FREE = ("out", "resume", "progress", "backend", "device", "workers", "checkpoint_every")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("off", "bf16", "fp16")


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
    recipe: str = "default"  # or "paper": the original code's training (see methods/recipes.py)
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
    fsdp: bool = False  # FSDP2 (fully_shard) instead of DDP; sharded checkpoints (train/fsdp.py, sharded_checkpoint.py)

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
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64:
            # torch.manual_seed takes 64 bits; beyond, it said "Overflow when unpacking long long"
            raise ValueError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
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
        if not isinstance(self.fsdp, bool):
            raise ValueError(f"fsdp must be a bool, got {self.fsdp!r}")
        if self.fsdp and self.amp == "fp16":
            raise ValueError("amp 'fp16' (a GradScaler) is not supported with fsdp; use amp 'bf16'")
        # STR's fine-tuning folds the thresholds into the weights: on the full weights, which
        # neither the EMA's copies nor FSDP's shards are.
        if self.method == "str" and self.finetune_epochs and (self.fsdp or self.ema):
            raise ValueError("finetune_epochs with method 'str' is not supported together with "
                             f"{'fsdp' if self.fsdp else 'ema'}")
        if self.lr_milestones and self.lr_schedule != "step":
            raise ValueError("lr_milestones are only for lr_schedule 'step'")
