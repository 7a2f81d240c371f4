"""`sparsekern report RUN_DIR`: the per-layer sparsity table and PNG plots of a finished run."""
from __future__ import annotations

import os

from sparsekern.cli.common import CLIError, read_history, read_json, require_run_dir, say
from sparsekern.pruning.atomic_files import atomic_write

BUDGET_PNG = "sparsity_budget.png"
CURVES_PNG = "curves.png"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run directory written by `sparsekern prune`")


def sparsity_table(summary: dict) -> str:
    from sparsekern.pruning import format_report

    table = format_report({"layers": summary["layers"], "total": summary["total"],
                           "left_dense": summary.get("left_dense", [])})  # (runs before it had no list)
    return (f"{table}\n\nmethod {summary['method']}, model {summary['model']}, data {summary['data']}: "
            f"test accuracy {summary['accuracy']:.4f}, sparsity of sparsified layers {summary['sparsity']:.4f}, "
            f"FLOPs {summary['flops'] / max(summary['dense_flops'], 1):.2%} of dense{sequence_note(summary)}")


def sequence_note(summary: dict) -> str:
    """Token-sequence runs: what the numbers are per (FLOPs per sequence, accuracy per token for LM)."""
    if not summary.get("task"):
        return ""
    note = f"\n{summary['task']} on sequences of {summary['seq_len']} tokens (FLOPs per sequence"
    if summary["task"] == "causal_lm":
        return note + f"; accuracy is next-token accuracy; test perplexity {summary['test_perplexity']:.3f})"
    return note + ")"


def plot(run_dir: str, summary: dict, history: list[dict]) -> list[str]:
    """The per-layer budget chart (sparse runs only: a dense run has no budget) and the curves."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise CLIError("plots need matplotlib (pip install matplotlib)") from e
    written = []
    layers = summary["layers"]
    if summary["method"] != "dense" and layers:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(layers) + 2), 4.5))
        bars = ax.bar(range(len(layers)), [100 * r["sparsity"] for r in layers], color="tab:blue")
        ax.bar_label(bars, fmt="%.1f", fontsize=9, padding=2)
        many = len(layers) > 8
        ax.set_xticks(range(len(layers)), [r["name"] for r in layers], rotation=45 if many else 0,
                      ha="right" if many else "center", fontsize=9)
        ax.set_ylabel("sparsity (% zero weights)")
        ax.set_ylim(0, 110)
        ax.set_title(f"per-layer sparsity ({summary['method']}, {summary['model']}; "
                     f"overall {100 * summary['sparsity']:.1f}%)")
        fig.tight_layout()
        written.append(os.path.join(run_dir, BUDGET_PNG))
        atomic_write(written[-1], lambda f: fig.savefig(f, dpi=100, format="png"))
        plt.close(fig)

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(epochs, [100 * r["test_acc"] for r in history], "o-", color="tab:green", label="test accuracy")
    ax.plot(epochs, [100 * r["train_acc"] for r in history], ".--", color="tab:olive", label="train accuracy")
    ax.plot(epochs, [100 * r["sparsity"] for r in history], "s-", color="tab:red", label="weight sparsity")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)  # below: never on a line
    ax.set_title("accuracy and sparsity over training")
    fig.tight_layout()
    written.append(os.path.join(run_dir, CURVES_PNG))
    atomic_write(written[-1], lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return written


def run(args) -> int:
    run_dir = require_run_dir(args.run_dir)
    summary = read_json(run_dir, "summary.json")
    history = read_history(run_dir)
    missing = {"layers", "total", "accuracy", "sparsity", "flops", "dense_flops", "method", "model", "data"} - summary.keys()
    if missing:
        raise CLIError(f"{os.path.join(run_dir, 'summary.json')!r} lacks {', '.join(sorted(missing))}")
    say(sparsity_table(summary))
    for path in plot(run_dir, summary, history):
        say(f"wrote {path}")
    return 0
