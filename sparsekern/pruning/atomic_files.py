"""Files written so that a crash or a full disk never leaves a partial one: a temp file in the
target's directory, fsynced and renamed over the target. Every run file, checkpoint and export
goes through ``atomic_write``; a failed write is a ``WriteError`` naming the target."""
from __future__ import annotations

import os
import secrets
from typing import BinaryIO, Callable


class WriteError(OSError):
    """A file could not be written (disk full, read-only file system, ...); the file it was to
    replace is unchanged. ``errno`` is the operating system's (ENOSPC, EROFS) when known."""

    def __str__(self) -> str:
        return f"cannot write {self.filename!r}: {self.strerror}"


def write_failure(e: BaseException, path: str) -> WriteError | None:
    """``e`` as a WriteError naming ``path`` if it is a failed write, else None. torch.save reports a
    failed write of its stream as a RuntimeError ("[enforce fail at inline_container.cc] unexpected
    pos") whose context is the OSError (e.g. ENOSPC)."""
    if isinstance(e, WriteError):
        return e
    os_error = e if isinstance(e, OSError) else e.__context__ if isinstance(e.__context__, OSError) else None
    if os_error is not None:
        return WriteError(os_error.errno, os_error.strerror or str(os_error), path)
    if isinstance(e, RuntimeError) and "inline_container" in str(e):  # torch's writer, cause unknown
        return WriteError(None, "the write failed (disk full?)", path)
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temp file, fsync, rename over ``path``, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # Not mkstemp: its files are mode 0600; 0666 here lets the umask decide, as for every other run file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise write_failure(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = write_failure(e, path)
        if failure is None:
            raise
        raise failure from e
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Makes a rename in ``directory`` durable; not possible on every platform (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
