"""Files written whole or not at all: a temporary file beside the target, then a rename.

:func:`write_atomically` is how checkpoints and adapter files reach the disk:

- a crash while writing leaves the old file (or none), never a half-written one; at
  most a ``.<name>.<random>.tmp`` file beside it, which its owner tidies later;
- the file gets the permissions ``open()`` would give it (0666 minus the umask), not
  the owner-only 0600 of :func:`tempfile.mkstemp`, so a shared group can read it;
- a failed write (full disk, quota, I/O error) raises an :class:`OSError` naming the
  target file, also when the writer hides the cause: ``torch.save`` turns a failed write
  into ``RuntimeError: ... unexpected pos 64 vs 0``, so the file object handed to the
  writer remembers the error of the write underneath.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, sync it, rename it to ``path``.

    Raises :class:`OSError` (``filename`` = ``path``) when writing fails for a system
    reason; other errors of ``write`` pass through unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _chmod_as_open_would(handle)
        with os.fdopen(handle, "wb") as file:
            watched = _WatchedFile(file)
            try:
                write(watched)  # type: ignore[arg-type]
                file.flush()
                os.fsync(file.fileno())
            except OSError as error:
                raise _naming(error, path) from error
            except Exception as error:
                if watched.error is None:
                    raise
                raise _naming(watched.error, path) from error
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def _chmod_as_open_would(handle: int) -> None:
    """mkstemp makes 0600; give the file what ``open()`` would (0666 minus the umask)."""
    if not hasattr(os, "fchmod"):
        return
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(handle, 0o666 & ~umask)


def _naming(error: OSError, path: Path) -> OSError:
    """The same error, naming the file the caller meant to write (not its temporary)."""
    if error.errno is None:
        return OSError(f"cannot write {path}: {error}")
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


class _WatchedFile:
    """A binary file that remembers the :class:`OSError` of a failed ``write``."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
