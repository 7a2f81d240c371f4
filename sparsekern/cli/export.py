"""`sparsekern export RUN_DIR --out FILE`: the finalized model's state_dict as plain tensors."""
from __future__ import annotations

import os

from sparsekern.cli.common import CLIError, read_json, require_run_dir, say
from sparsekern.models import build_model
from sparsekern.pruning.train.checkpoint import atomic_torch_save, load_state_dict_file


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a finished run directory written by `sparsekern prune`")
    p.add_argument("--out", required=True, help="file to write (torch.save of {name: tensor})")


def finalized_architecture(run_dir: str):
    """A fresh plain model of the run's architecture (what the exported state_dict loads into); a run
    whose export was shrunk records the kept ``widths`` in summary.json."""
    config = read_json(run_dir, "config.json")
    widths = read_json(run_dir, "summary.json").get("widths")
    try:
        info = config["dataset"]
        return build_model(config["model"], info["num_classes"], info["in_channels"], tuple(info["image_size"]),
                           widths=widths)
    except KeyError as e:
        raise CLIError(f"{os.path.join(run_dir, 'config.json')!r} lacks {e}") from e


def run(args) -> int:
    run_dir = require_run_dir(args.run_dir)
    weights = os.path.join(run_dir, "model.pt")
    if not os.path.isfile(weights):
        raise CLIError(f"run directory {run_dir!r} has no model.pt (unfinished run? finish it with --resume)")
    state = load_state_dict_file(weights)
    try:
        finalized_architecture(run_dir).load_state_dict(state)
    except RuntimeError as e:
        raise CLIError(f"{weights!r} does not fit the run's architecture: {str(e).splitlines()[0]}") from e
    if os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} is a directory; give a file name such as {args.out.rstrip('/')}/model.pt")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise CLIError(f"--out {args.out!r}: directory {out_dir!r} does not exist")
    atomic_torch_save(state, args.out)
    nonzero = sum(int(t.count_nonzero()) for t in state.values() if t.is_floating_point())
    total = sum(t.numel() for t in state.values() if t.is_floating_point())
    say(f"wrote {args.out}: {len(state)} tensors, {nonzero}/{total} nonzero values")
    return 0
