"""Hugging Face ``Trainer`` integration: ``SparsityCallback`` (``pip install sparsekern[hf]``).

    trainer = Trainer(model=model, args=args, train_dataset=train)
    sparsity = SparsityCallback.attach(trainer, "str", target_sparsity=0.9)
    trainer.train()
    sparsity.final_model.save_pretrained("out")     # a plain PreTrainedModel, zeros baked in

``attach`` sparsifies ``trainer.model`` in place (before ``train()`` builds the optimizer), makes
the trainer's ``create_optimizer`` leave the gates out (they get their own Adam) and adds the callback, which keeps the trainer to log through ``Trainer.log`` (so the values reach
every logger the user set in ``report_to`` and ``state.log_history``). The callback drives a
``SparsitySession`` (``integrations.session``) at the Trainer's events:

* ``on_train_begin``: controller over ``state.max_steps`` optimizer steps; the gates leave the
  Trainer's optimizer for their own Adam; the training-set size and (structured methods) the
  first training batch as the FLOPs example, unless given;
* ``on_pre_optimizer_step`` (after the last micro-batch's backward and gradient clipping):
  ``penalty.backward()``, once per optimizer step, so gradient accumulation (the Trainer divides
  each micro-batch's loss) does not scale it; the penalty is not clipped;
* ``on_step_end``: the controller's step; ``sparsekern/sparsity`` (and ``flops_fraction``,
  ``lambda``, ``penalty``) through ``Trainer.log`` as the ``logging_strategy`` says (every
  ``logging_steps``, or at epoch ends);
* ``on_train_end``: ``finalize``, kept as ``final_model`` (the model's own class, so
  ``save_pretrained`` / ``from_pretrained`` work; the trainer's model stays sparse);
* ``on_save``: the controller and the gates' Adam into the checkpoint folder
  (``sparsekern_session.pt``), which ``on_train_begin`` reads back when ``train(resume_from_checkpoint=...)``
  resumes from a checkpoint of ``args.output_dir``.

fp16 mixed precision is refused: its loss scaler unscales only the Trainer's optimizer's gradients,
not the gates' (stepped by their own Adam); bf16 is fine.
"""
from __future__ import annotations

import os

import torch

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("sparsekern.integrations.hf needs transformers: pip install 'sparsekern[hf]'") from e

from sparsekern.integrations.session import SparsitySession

SESSION_FILE = "sparsekern_session.pt"


class SparsityCallback(TrainerCallback):
    """A ``TrainerCallback`` running one sparsekern method; build it with ``attach(trainer, ...)``.

    ``method`` and the keyword options are ``SparsitySession``'s (targets, ``lam``, ``gate_lr``,
    ``num_samples``, ``example``, and ``sparsify`` options such as ``exclude`` or ``layers``).
    """

    def __init__(self, method: str, **options):
        self.session = SparsitySession(method, **options)
        self.trainer: Trainer | None = None
        self.last_penalty = None

    @classmethod
    def attach(cls, trainer: Trainer, method: str, **options) -> "SparsityCallback":
        """Sparsify ``trainer.model`` in place and add the callback to ``trainer``; returns the callback."""
        if not isinstance(trainer, Trainer):
            raise TypeError(f"SparsityCallback.attach: trainer must be a transformers.Trainer, "
                            f"got {type(trainer).__name__}")
        if trainer.args.fp16:
            raise ValueError("SparsityCallback.attach: fp16 (a loss scaler) is not supported: the gates, stepped by "
                             "their own Adam, would get scaled gradients; use bf16=True")
        if getattr(trainer, "optimizer", None) is not None:
            raise ValueError("SparsityCallback.attach: the trainer already has an optimizer; attach before it is "
                             "built (the sparse layers add parameters)")
        callback = cls(method, **options)
        callback.session.apply(trainer.model)
        callback.trainer = trainer
        build = trainer.create_optimizer

        def create_optimizer(*args, **kwargs):
            # The one Trainer hook: the gates leave the optimizer as it is built, before a resumed
            # run loads its saved state (which was saved without them).
            optimizer = build(*args, **kwargs)
            callback.session.exclude_gates([optimizer])
            return optimizer

        trainer.create_optimizer = create_optimizer
        trainer.add_callback(callback)
        return callback

    @property
    def final_model(self):
        """The finalized plain model once training ended (None before)."""
        return self.session.final_model

    def on_train_begin(self, args, state, control, optimizer=None, train_dataloader=None, **kwargs):
        if self.trainer is None:
            raise RuntimeError("SparsityCallback: build it with SparsityCallback.attach(trainer, ...)")
        dataset = getattr(train_dataloader, "dataset", None)
        num_samples = len(dataset) if hasattr(dataset, "__len__") else None
        example = None
        if self.session.example is None and _needs_example(self.session) and train_dataloader is not None:
            example = {k: v for k, v in next(iter(train_dataloader)).items() if k != "labels"}
        self.session.start([optimizer] if optimizer is not None else [], state.max_steps,
                           num_samples=num_samples, example=example)
        if state.global_step > 0:  # resumed from a checkpoint: what on_save wrote there
            path = _session_file(args, state)
            if not os.path.exists(path):
                raise RuntimeError(f"SparsityCallback: resumed at step {state.global_step} but {path} is missing "
                                   "(resume from a checkpoint of args.output_dir written with this callback)")
            self.session.load_state_dict(torch.load(path, weights_only=True))

    def on_save(self, args, state, control, **kwargs):
        path = _session_file(args, state)
        if os.path.isdir(os.path.dirname(path)):  # the Trainer wrote its checkpoint there just before
            torch.save(self.session.state_dict(), path)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.last_penalty = self.session.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.session.after_optimizer_step()
        if args.logging_strategy == "steps" and state.global_step % _every(args, state) == 0:
            self._log()

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            self._log()

    def _log(self) -> None:
        logs = {f"sparsekern/{k}": v for k, v in self.session.metrics().items()}
        if self.last_penalty is not None:
            logs["sparsekern/penalty"] = float(self.last_penalty)
        self.trainer.log(logs)

    def on_train_end(self, args, state, control, **kwargs):
        self.session.finalize()


def _session_file(args, state) -> str:
    """The controller and gate optimizer's file inside the Trainer's checkpoint of this step."""
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", SESSION_FILE)


def _needs_example(session: SparsitySession) -> bool:
    return session.config.method in ("l0_hc", "dep_l0")


def _every(args, state) -> int:
    """``logging_steps`` in steps (a float below 1 is a fraction of the run, as the Trainer reads it)."""
    steps = args.logging_steps or 1
    return max(1, int(steps * state.max_steps) if steps < 1 else int(steps))
