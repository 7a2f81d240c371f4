"""Lightning integration: ``SparsityCallback`` (``pip install sparsekern[lightning]``).

    callback = SparsityCallback("l0", target_sparsity=0.9)
    trainer = lightning.Trainer(max_epochs=3, callbacks=[callback])
    trainer.fit(module, loader)
    plain = callback.final_model      # the LightningModule's copy, sparse layers baked

The callback drives a ``SparsitySession`` (``integrations.session``) at Lightning's hooks:

* ``setup``: sparsify the LightningModule in place, before ``configure_optimizers`` runs (so the
  optimizer holds the sparse layers' parameters; ``include``/``exclude`` name its submodules,
  e.g. ``"net.*"``);
* ``on_fit_start`` / ``on_train_start``: the gates leave the optimizer (before a resumed fit loads
  its state) for their own Adam; the controller over ``trainer.estimated_stepping_batches``
  optimizer steps; the training-set size for the L0 penalty;
* ``on_before_optimizer_step`` (after the last accumulated backward, before gradient clipping):
  ``penalty.backward()`` once per optimizer step (Lightning divides each micro-batch's loss by
  ``accumulate_grad_batches``, so the penalty is not scaled by it) and the gates' step;
* ``on_train_batch_end`` after a step: the controller's step, then ``sparsekern/sparsity`` (and
  ``sparsekern/flops_fraction``, ``sparsekern/lambda``) through ``pl_module.log``, every step;
* ``on_train_end``: ``finalize``, kept as ``final_model`` (the LightningModule stays sparse);
* ``state_dict`` / ``load_state_dict``: the controller and the gates' Adam go into Lightning's
  checkpoints, so ``fit(..., ckpt_path=...)`` resumes them.

Automatic optimization only (one optimizer). Precision with a loss scaler (``16-mixed`` on a GPU)
is refused: the scaler would not unscale the gates' gradients (``bf16-mixed`` is fine). The
structured methods (``l0_hc``, ``dep_l0``) need ``example=`` (a batch of the module's forward
inputs) for their FLOPs.
"""
from __future__ import annotations

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("sparsekern.integrations.lightning needs lightning: pip install 'sparsekern[lightning]'") from e

import math

from sparsekern.integrations.session import SparsitySession


class SparsityCallback(pl.Callback):
    """A Lightning ``Callback`` running one sparsekern method on the module it trains.

    ``method`` and the keyword options are ``SparsitySession``'s (targets, ``lam``, ``gate_lr``,
    ``num_samples``, ``example``, and ``sparsify`` options such as ``exclude`` or ``layers``).
    """

    def __init__(self, method: str, **options):
        self.session = SparsitySession(method, **options)
        self._stepped = False
        self.last_penalty = None
        self._resume: dict | None = None

    @property
    def final_model(self):
        """The finalized plain module once training ended (None before)."""
        return self.session.final_model

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.session.model is not None:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(f"SparsityCallback: precision {trainer.precision!r} with a loss scaler is not supported: "
                             "the gates' gradients would stay scaled; use 'bf16-mixed' or 32")
        if not pl_module.automatic_optimization:
            raise ValueError("SparsityCallback: needs automatic optimization (pl_module.automatic_optimization)")
        self.session.apply(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        # The optimizers exist now, and a resumed fit loads their saved state (saved without the
        # gates) right after this hook: the gates leave them here.
        self.session.exclude_gates(trainer.optimizers)

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("SparsityCallback: the run length is unknown; set max_epochs or max_steps")
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        num_samples = len(dataset) if hasattr(dataset, "__len__") else None
        self.session.start(trainer.optimizers, int(total), num_samples=num_samples)
        if self._resume is not None:  # a checkpoint's state, loaded before the session could take it
            self.session.load_state_dict(self._resume)
            self._resume = None

    def state_dict(self) -> dict:  # saved in Lightning's checkpoints
        return self.session.state_dict() if self._resume is None else self._resume

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.last_penalty = self.session.before_optimizer_step()
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._stepped:  # an accumulating micro-batch
            return
        self._stepped = False
        self.session.after_optimizer_step()
        logs = {f"sparsekern/{k}": v for k, v in self.session.metrics().items()}
        if self.last_penalty is not None:
            logs["sparsekern/penalty"] = float(self.last_penalty)
        pl_module.log_dict(logs, on_step=True, on_epoch=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.session.finalize()
