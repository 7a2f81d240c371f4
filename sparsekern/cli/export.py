"""`sparsekern export RUN_DIR --out FILE [--format F]`: the run's finalized model as a file.

Formats: ``state_dict`` (torch.save of plain tensors; load into ``finalized_architecture``),
``safetensors`` (+ architecture metadata), ``onnx`` (checked with onnxruntime before it is
written), ``sparse`` (CSR weights where they time faster, per layer). All but ``state_dict`` reload
with ``sparsekern.pruning.surgery.export.load.load_exported(FILE)``.
"""
from __future__ import annotations

import os

from sparsekern.cli.common import CLIError, read_json, require_run_dir, say
from sparsekern.models.hf import is_hf_name
from sparsekern.pruning.train.checkpoint import atomic_torch_save, load_state_dict_file
from sparsekern.pruning.train.run_dir import PRETRAINED_DIR

FORMATS = ("state_dict", "safetensors", "onnx", "sparse")
CHECK_SEED = 0  # the random inputs the ONNX graph is checked on


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a finished run directory written by `sparsekern prune`")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--format", choices=FORMATS, default="state_dict",
                   help="state_dict: torch.save of {name: tensor}; safetensors: the same with the architecture "
                        "in its metadata; onnx: the (shrunk) graph, checked with onnxruntime; sparse: CSR weights "
                        "for the layers where they time faster")
    p.add_argument("--onnx-exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter for --format onnx (dynamo needs onnxscript)")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size the sparse format times each layer at (and the ONNX check runs)")


def finalized_architecture(run_dir: str):
    """A fresh plain model of the run's architecture (what the exported state_dict loads into): the
    export metadata's (a shrunk run records the kept ``widths`` in summary.json; a Hugging Face run,
    the config its save_pretrained wrote to RUN_DIR/hf_model, so the original config may be gone)."""
    from sparsekern.pruning.surgery.export.files import build_architecture

    return build_architecture(_metadata(run_dir), repr(run_dir))


def _metadata(run_dir: str) -> dict:
    from sparsekern.pruning.surgery.export.files import architecture

    try:
        meta = architecture(read_json(run_dir, "config.json"), read_json(run_dir, "summary.json"))
    except KeyError as e:
        raise CLIError(f"{os.path.join(run_dir, 'config.json')!r} lacks {e}") from e
    if "task" in meta and is_hf_name(meta["model"]):  # the config save_pretrained wrote (shrunk shapes included)
        meta["hf_config"] = read_json(os.path.join(run_dir, PRETRAINED_DIR), "config.json")
    return meta


def _examples(meta: dict, batch: int):
    """Random standardized inputs of the run's shape: the export example and the ONNX check batches."""
    import torch

    gen = torch.Generator().manual_seed(CHECK_SEED)
    shape = (meta["in_channels"], *meta["image_size"])
    return [torch.randn(b, *shape, generator=gen) for b in (batch, 1, 3)]


def _write(fmt: str, args, state: dict, model, run_dir: str) -> str:
    """Writes ``args.out`` in ``fmt``; the line to report."""
    if fmt == "state_dict":
        atomic_torch_save(state, args.out)
        nonzero = sum(int(t.count_nonzero()) for t in state.values() if t.is_floating_point())
        total = sum(t.numel() for t in state.values() if t.is_floating_point())
        return f"{len(state)} tensors, {nonzero}/{total} nonzero values"
    meta = _metadata(run_dir)
    if "task" in meta and fmt in ("onnx", "sparse"):
        raise CLIError(f"--format {fmt} is not supported for token-sequence models yet; use state_dict or "
                       f"safetensors (a Hugging Face run also has {os.path.join(run_dir, PRETRAINED_DIR)!r} "
                       "for from_pretrained)")
    try:
        if fmt == "safetensors":
            from sparsekern.pruning.surgery.export.safetensors_file import save_safetensors
            save_safetensors(state, meta, args.out)
            return f"{len(state)} tensors with the architecture ({meta['model']}) in the metadata"
        example, *checks = _examples(meta, args.batch)
        if fmt == "onnx":
            from sparsekern.pruning.surgery.export.onnx_file import export_onnx
            worst = export_onnx(model, example, meta, args.out, args.onnx_exporter, [example] + checks)
            return f"ONNX graph ({args.onnx_exporter} exporter), onnxruntime matches PyTorch (max |diff| {worst:.2g})"
        from sparsekern.pruning.surgery.export.format_choice import choose_formats
        from sparsekern.pruning.surgery.export.sparse_file import save_sparse
        sparse_model, layers = choose_formats(model, example)
        save_sparse(sparse_model, {**meta, "timing_batch": args.batch}, layers, args.out)
        csr = [name for name, rec in layers.items() if rec["format"] == "csr"]
        return (f"{len(csr)}/{len(layers)} layers CSR, the rest dense (timed at batch {args.batch})"
                + (f": {', '.join(csr)}" if csr else ""))
    except ImportError as e:
        raise CLIError(f"--format {fmt}: {e}") from e


def run(args) -> int:
    run_dir = require_run_dir(args.run_dir)
    if args.batch < 1:
        raise CLIError(f"--batch must be a positive int, got {args.batch}")
    weights = os.path.join(run_dir, "model.pt")
    if not os.path.isfile(weights):
        raise CLIError(f"run directory {run_dir!r} has no model.pt (unfinished run? finish it with --resume)")
    state = load_state_dict_file(weights)
    model = finalized_architecture(run_dir)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CLIError(f"{weights!r} does not fit the run's architecture: {str(e).splitlines()[0]}") from e
    if os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} is a directory; give a file name such as {args.out.rstrip('/')}/model.pt")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise CLIError(f"--out {args.out!r}: directory {out_dir!r} does not exist")
    what = _write(args.format, args, state, model.eval(), run_dir)
    say(f"wrote {args.out}: {what}")
    return 0
