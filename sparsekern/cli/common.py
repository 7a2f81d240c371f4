"""What the subcommands share: one-line usage errors and reading a run directory."""
from __future__ import annotations

import argparse
import json
import os
import sys


class CLIError(Exception):
    """A user mistake: printed as one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def read_json(run_dir: str, name: str) -> dict:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise CLIError(f"run directory {run_dir!r} has no {name} (not a finished sparsekern run?)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CLIError(f"{path!r} is unreadable or not JSON ({e})") from e


def read_history(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise CLIError(f"run directory {run_dir!r} has no log.jsonl")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise CLIError(f"{path!r} is unreadable or not JSON lines ({e})") from e


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
