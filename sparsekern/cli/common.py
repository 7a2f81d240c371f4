"""What the subcommands share: one-line usage errors and reading a run directory."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

# Small models (LeNet, digits) run fastest on one thread: their matrices are too small to split,
# so more threads only add synchronisation and fight other processes for the cores.
SMALL_MODELS = ("lenet300", "lenet5")


class CLIError(Exception):
    """A user mistake: printed as one line on stderr, exit code 2."""


def one_line(e: BaseException) -> str:
    """An error as one line: an OSError as "what: path" without its "[Errno N]" prefix."""
    if isinstance(e, OSError) and type(e).__str__ is OSError.__str__ and e.strerror:
        text = f"{e.strerror}: {e.filename!r}" if e.filename is not None else e.strerror
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; an option whose default is None says it in its own help."""

    def _get_help_string(self, action):
        if action.default is None or action.required or action.default == argparse.SUPPRESS:
            return action.help
        help_text = action.help or ""
        return help_text + ("" if "%(default)" in help_text else " (default: %(default)s)")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2, and shows
    the defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


@contextlib.contextmanager
def small_model_threads(model: str = "lenet300", data: str = "digits"):
    """One torch thread for a small model on small data, torch's default (all cores) otherwise;
    SPARSEKERN_THREADS=N overrides both. Restores the previous count on exit."""
    import torch

    previous = torch.get_num_threads()
    chosen = os.environ.get("SPARSEKERN_THREADS")
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise CLIError(f"SPARSEKERN_THREADS must be a positive int, got {chosen!r}")
        torch.set_num_threads(int(chosen))
    elif model in SMALL_MODELS and data in ("digits", "synthetic"):
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def read_json(run_dir: str, name: str) -> dict:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise CLIError(f"run directory {run_dir!r} has no {name} (not a finished sparsekern run?)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CLIError(f"{path!r} is unreadable or not JSON{_where(e)}") from e


def read_history(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise CLIError(f"run directory {run_dir!r} has no log.jsonl")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise CLIError(f"{path!r} is unreadable or not JSON lines{_where(e)}") from e


def _where(e: Exception) -> str:
    """Where a JSON file went wrong, in words (the parser's "(char 101)" and a codec's byte positions
    told users nothing)."""
    if isinstance(e, json.JSONDecodeError):
        return f" (line {e.lineno}: {e.msg.lower()})"
    if isinstance(e, UnicodeDecodeError):
        return " (binary data, not text)"
    return f" ({e.strerror})" if isinstance(e, OSError) and e.strerror else ""


def require_run_dir(run_dir: str) -> str:
    if not os.path.isdir(run_dir):
        raise CLIError(f"run directory {run_dir!r} does not exist")
    return run_dir


def say(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def format_table(header: list[str], rows: list[list], aligns: str | None = None) -> str:
    """A plain-text table; aligns is one of 'l'/'r' per column (default: first left, rest right)."""
    aligns = aligns or "l" + "r" * (len(header) - 1)
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
