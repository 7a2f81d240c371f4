"""Progress of the training loop: a tqdm bar on a terminal, one line per epoch elsewhere (a log file
or a pipe, where a bar's carriage-return redraws pile up into lines of several KB)."""
from __future__ import annotations

import sys


class EpochLine:
    """The bar's interface (update, set_postfix, close); prints the last postfix once, at close."""

    live = False  # the loop skips its per-step postfix (the sparsity count) for a line nobody sees

    def __init__(self, desc: str):
        self.desc, self.postfix = desc, {}

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def close(self) -> None:
        values = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {values}", file=sys.stderr, flush=True)


def progress(show: bool, total: int, desc: str):
    """A tqdm bar when stderr is a terminal, else an ``EpochLine``; None when not shown."""
    if not show:
        return None
    if not sys.stderr.isatty():
        return EpochLine(desc)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return EpochLine(desc)
    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)
