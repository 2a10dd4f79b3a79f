"""What the long commands share around their work: the pre-flight and its table, the
processes of a sharded run, and one-line errors for output folders that cannot be written."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer

from co2sam.commands.common import console, fail

SkipBadOption = typer.Option(
    False,
    "--skip-bad",
    help="Leave out images whose files fail the pre-flight check (listed in skipped.txt) "
    "instead of stopping (data.skip_bad).",
)
DevicesOption = typer.Option(
    None,
    "--devices",
    help="Processes on this machine, one per GPU (Lightning Fabric, DDP).  [default: 1]",
)
NumNodesOption = typer.Option(
    None, "--num-nodes", help="Machines running the same command (NODE_RANK, MASTER_ADDR)."
)
LEVEL_STYLES = {"error": "red", "warning": "yellow", "converted": "cyan"}


def problems_table(problems: Sequence[Any], title: str) -> Any:
    """The rich table of ``check-data`` (level, split, file, problem, handling)."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("level", "split", "file", "problem", "handling"):
        table.add_column(column, overflow="fold")
    for problem in problems:
        level = f"[{LEVEL_STYLES[problem.level]}]{problem.level}[/]"
        table.add_row(level, problem.split, problem.file, problem.problem, problem.handling)
    return table


def launch(devices: int | None, num_nodes: int | None, device: str) -> Any:
    """The :class:`co2sam.parallel.Processes` of this command (Fabric launches the rest)."""
    from co2sam.parallel import launch_processes

    try:
        return launch_processes(
            1 if devices is None else devices,
            1 if num_nodes is None else num_nodes,
            device=device,
            say=lambda line: console.print(line, markup=False, highlight=False),
        )
    except ValueError as error:
        fail(str(error))
        raise


def checked_dataset(
    cfg: Any, dataset: Any, *, skipped: Path | None, processes: Any, masks: bool = True
) -> Any:
    """``dataset`` after the pre-flight (see co2sam.data.preflight), ready to run on.

    masks: whether the command needs the ground-truth masks (else they are not checked).
    On bad files without ``--skip-bad``: the main process prints check-data's table and
    every process exits with status 1 before any work.
    """
    from co2sam.data.preflight import PreflightError, SkipLog, checked_split

    try:
        return checked_split(
            dataset, cfg.data, log=SkipLog(skipped), processes=processes, masks=masks
        )
    except PreflightError as error:
        print_preflight_problems(error)
        fail(str(error), code=1)
        raise


def print_preflight_problems(error: Any) -> None:
    """check-data's table of a :class:`PreflightError` (on the main process only)."""
    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_rank() != 0:
        return
    from rich.console import Console

    wide = Console(stderr=True, width=None if console.is_terminal else 200)
    wide.print(problems_table(error.problems, f"pre-flight of {error.where}"))


@contextlib.contextmanager
def ctrl_c_resumable(command: str) -> Iterator[None]:
    """Ctrl-C ends the block with one line saying how to continue, and exit status 130.

    For the resumable per-image commands: what was finished is kept. The other processes
    of a sharded run ignore Ctrl-C; the ones this process started are stopped here, at
    once, not at its (slow) exit (co2sam.lifetime).
    """
    try:
        yield
    except KeyboardInterrupt:
        from co2sam.lifetime import stop_launched

        stop_launched()
        console.print(
            f"[yellow]interrupted[/] (Ctrl-C): the finished images are kept; run the same "
            f"`co2sam {command}` command again to continue"
        )
        raise typer.Exit(130) from None


@contextlib.contextmanager
def output_errors(folder: str | Path | None = None) -> Iterator[None]:
    """Turn a failed write (read-only or full disk, a file in the way) into one line."""
    try:
        yield
    except OSError as error:
        fail(describe_write_error(error, folder))
    except Exception as error:
        if not _is_failed_write(error):
            raise
        where = f" in {folder}" if folder else ""
        if folder is not None and _nearly_full(Path(folder)):
            fail(f"cannot write{where}: No space left on device; {_HINTS[errno.ENOSPC]}")
        fail(f"cannot write{where}: {' '.join(str(error).split())}; is the disk full?")


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free where ``folder`` (or its nearest existing parent) lives."""
    import shutil

    for place in (folder, *folder.parents):
        if place.exists():
            try:
                return shutil.disk_usage(place).free < 2**20
            except OSError:
                return False
    return False


def _is_failed_write(error: Exception) -> bool:
    """torch.save and safetensors report a failed write without an OSError."""
    text = str(error)
    if isinstance(error, RuntimeError) and ("inline_container" in text or "StreamWriter" in text):
        return True
    return type(error).__name__ == "SafetensorError" and "I/O error" in text


_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere (--out)",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere (--out)",
    errno.EROFS: "the file system is read-only: write elsewhere (--out)",
    errno.EACCES: "permission denied: choose a folder you can write to (--out)",
    errno.EPERM: "permission denied: choose a folder you can write to (--out)",
    errno.ENOTDIR: "a file is in the way of a folder: choose another --out",
    errno.EEXIST: "a file is in the way of a folder: choose another --out",
    errno.EISDIR: "a folder is in the way of a file: choose another --out",
}


def describe_write_error(error: OSError, folder: str | Path | None = None) -> str:
    """``cannot write PATH: REASON; FIX`` for a failed write, the error itself otherwise."""
    hint = _HINTS.get(error.errno or -1)
    if hint is None:
        return str(error)
    where = error.filename or folder or "the output"
    return f"cannot write {where}: {error.strerror or error}; {hint}"
