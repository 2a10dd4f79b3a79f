"""File access confined to the folders the app was given.

The page never sends a path: it sends an index or an id chosen from a list the server
made. Still, every file the app reads for the Review and Run tabs goes through
:func:`inside`, so an id such as ``../../etc/passwd`` (or a split list pointing outside
the dataset, or a symbolic link leading out) is refused rather than read. Files reach the
browser only as pixels the app decoded, copied by Gradio into its own upload folder; the
folders themselves are never served (``allowed_paths`` stays empty).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class UnsafePathError(ValueError):
    """A path would leave the folder it must stay in."""


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts`` resolved, refused unless it stays under ``root``.

    Each part must be a relative name without ``..`` (and no NUL byte); the resolved
    path (symbolic links followed) must be ``root`` or below it.
    Raises :class:`UnsafePathError` naming the part.
    """
    base = Path(root).resolve()
    for part in parts:
        pieces = Path(part).parts
        if not part or "\x00" in part or Path(part).is_absolute() or ".." in pieces:
            raise UnsafePathError(f"refused {part!r}: not a plain name inside {base}")
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise UnsafePathError(f"refused {'/'.join(parts)!r}: it leads outside {base}")
    return path


def ensure_inside(path: str | Path, roots: Iterable[str | Path]) -> Path:
    """``path`` resolved, refused unless it lies under one of ``roots``."""
    resolved = Path(path).resolve()
    allowed = [Path(root).resolve() for root in roots]
    if not any(resolved.is_relative_to(root) for root in allowed):
        where = ", ".join(str(root) for root in allowed)
        raise UnsafePathError(f"refused {path}: it is not inside {where}")
    return resolved


def short_path(path: str | Path, parts: int = 3) -> str:
    """The last ``parts`` parts of a path (``…/run/best``), for labels on the page."""
    pieces = Path(path).parts
    if len(pieces) <= parts:
        return str(path)
    return "…/" + "/".join(pieces[-parts:])
