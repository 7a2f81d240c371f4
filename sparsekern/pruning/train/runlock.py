"""One run per directory: a lock file holding the owner's PID, taken for the whole run.

The lock is created with O_EXCL, so of two runs started at once only one gets it. A lock
whose PID no longer exists on this machine (a killed run) is stale and taken over.
"""
from __future__ import annotations

import os

LOCK_NAME = ".lock"


class RunLockError(ValueError):
    """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or -1)
    except (OSError, ValueError):
        return None


class RunLock:
    """Context manager: ``with RunLock(run_dir): ...``; raises RunLockError if a live run holds it."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _owner(self.path)
                if pid is not None and pid > 0 and pid != os.getpid() and _alive(pid):
                    raise RunLockError(f"run directory {os.path.dirname(self.path)!r} is in use by another run "
                                       f"(PID {pid}, lock {self.path!r}); wait for it or choose another --out")
                try:  # stale (dead PID or unreadable): take it over
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise RunLockError(f"could not take the lock {self.path!r} (another run raced for it)")

    def release(self) -> None:
        if self.held and _owner(self.path) == os.getpid():
            os.unlink(self.path)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
