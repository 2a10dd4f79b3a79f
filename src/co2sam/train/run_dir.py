"""The run folder: claim it for one run, find where to resume, write state and adapters.

:class:`RunFolder` claims a folder for the life of one run (rank 0 of it): a file lock
(``RUN_DIR/.co2sam/lock``, released by the system if the process dies) refuses a second
run in the same folder at the same time (a double-submitted job, a requeue while the
old job lives); a fresh run takes only an empty or new folder, never one holding files
of its own (a user's ``config.yaml``) or an earlier run (continue that with
``--resume``). The one exception is a run that was killed before its first checkpoint
(it marked the folder, ``RUN_DIR/.co2sam/training-run``, and wrote nothing to resume):
starting it again moves its logs and config into ``abandoned-<time>/``.

Every write is atomic (checkpoints: temp file + rename; adapter folders: written beside
the old one, then swapped), and only rank 0 writes: the adapters are identical on every
process. What a write killed half-way leaves behind, :func:`tidy_run_dir` removes (or
swaps back) at the next start; an unreadable ``last.pt`` makes :func:`open_run_dir`
fall back to the newest readable ``epoch-XXX.pt``, saying so.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from co2sam.config import SETTINGS_CHANGES
from co2sam.train.checkpoint import (
    CHECKPOINT_DIR,
    EPOCH_PATTERN,
    LAST,
    CheckpointError,
    UnreadableCheckpointError,
    epoch_checkpoints,
    last_checkpoint_path,
    load_checkpoint,
    lora_state_dict,
    rng_state,
    save_checkpoint,
)

ADAPTER_FOLDERS = ("best", "last")
STATE_DIR = ".co2sam"
LOCK_FILE = "lock"
MARKER_FILE = "training-run"
"""Written into ``STATE_DIR`` when a fresh run claims a folder."""
BEFORE_FIRST_CHECKPOINT = ("config.yaml", "skipped.txt", "csv", "tensorboard", CHECKPOINT_DIR)
"""What a run writes before its first checkpoint."""
ABANDONED_PREFIX = "abandoned-"


class RunDirError(RuntimeError):
    """The run folder cannot be used (it holds a run or other files, another run is using
    it now, or it has nothing to resume)."""


class RunFolder:
    """A training run's folder, claimed by the main process for the life of one run.

    ``claim(resume)`` locks the folder and checks it: a fresh run needs an empty or new
    folder; a resumed one a checkpoint (and what an interrupted save left is tidied). ``release``
    (always call it, also after an error) frees the lock.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: Any = None

    def claim(self, resume: bool | str | Path) -> tuple[ResumePoint | None, list[str]]:
        """Lock and check the folder; the checkpoint to resume from (None: a fresh run) and
        what was done or noticed on the way (for the log)."""
        self.lock()
        if resume is False:
            notes, point = _check_fresh(self.path), None
        else:
            notes = tidy_run_dir(self.path)
            point = open_run_dir(self.path, resume)
            notes += point.notes
        marker = self.path / STATE_DIR / MARKER_FILE
        if not marker.is_file():
            marker.write_text("a co2sam training run (co2sam train) claimed this folder\n")
        return point, notes

    def lock(self) -> None:
        """Hold ``.co2sam/lock``; :class:`RunDirError` if another process holds it."""
        from filelock import FileLock, Timeout

        (self.path / STATE_DIR).mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / STATE_DIR / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirError(
                f"another co2sam run is training in {self.path} now (it holds "
                f"{self.path / STATE_DIR / LOCK_FILE}); wait for it to end, or choose another "
                "folder with --out"
            ) from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _check_fresh(run_dir: Path) -> list[str]:
    """Refuse a folder that is not empty, unless it holds a run killed before its first
    checkpoint (then its files are moved aside); returns notes."""
    if not run_dir.is_dir():
        return []
    entries = sorted(entry.name for entry in run_dir.iterdir() if entry.name != STATE_DIR)
    if not entries:
        return []
    checkpoints = run_dir / CHECKPOINT_DIR
    saved = (checkpoints / LAST).exists() or any(checkpoints.glob(EPOCH_PATTERN))
    if saved or any((run_dir / name).exists() for name in ADAPTER_FOLDERS):
        raise RunDirError(
            f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
            "or choose another folder with --out"
        )
    started = (run_dir / STATE_DIR / MARKER_FILE).is_file()
    own = [name for name in entries if name not in BEFORE_FIRST_CHECKPOINT]
    if not started or any(not name.startswith(ABANDONED_PREFIX) for name in own):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(
            f"{run_dir} is not empty ({shown}) and holds no co2sam training run: a new run "
            "needs an empty or new folder; choose one with --out"
        )
    moved = [name for name in BEFORE_FIRST_CHECKPOINT if (run_dir / name).exists()]
    aside = move_aside(run_dir, moved)
    return [
        f"{run_dir} holds a run that stopped before its first checkpoint: starting afresh, "
        f"its files ({', '.join(moved)}) moved to {aside}"
    ]


def move_aside(run_dir: Path, names: list[str]) -> Path:
    """Move ``names`` (relative paths in ``run_dir``) into a new ``abandoned-<time>/``,
    keeping their places inside it; returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir / f"{ABANDONED_PREFIX}{stamp}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = run_dir / f"{ABANDONED_PREFIX}{stamp}-{suffix}"
    for name in names:
        target = aside / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).rename(target)
    return aside


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and what was noticed finding it."""

    path: Path
    state: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def open_run_dir(run_dir: Path, resume: bool | str | Path) -> ResumePoint | None:
    """Where to resume (None for a fresh run, which refuses a folder holding a run).

    resume: False (fresh run), True (``last.pt``, or the newest readable ``epoch-XXX.pt``
    when it is missing or unreadable), or the path of one checkpoint file to restart from.
    """
    if resume is True:
        return _newest_readable(run_dir)
    if resume is not False:
        path = Path(resume)
        return ResumePoint(path, load_checkpoint(path))
    if last_checkpoint_path(run_dir).exists():
        raise RunDirError(
            f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
            "or choose another folder with --out"
        )
    return None


def _newest_readable(run_dir: Path) -> ResumePoint:
    last = last_checkpoint_path(run_dir)
    candidates = ([last] if last.is_file() else []) + epoch_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(
            f"{run_dir} has no checkpoint to resume from ({last} is missing); "
            "start a new run without --resume"
        )
    unreadable: list[str] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except UnreadableCheckpointError as error:
            unreadable.append(str(error))
            continue
        notes = list(unreadable)
        if path != last:
            reason = "unreadable" if last.is_file() else "missing"
            notes.append(
                f"{last} is {reason}: resuming from {path} instead "
                f"(step {state['step']}, epoch {state['epoch']})"
            )
        return ResumePoint(path, state, notes)
    raise CheckpointError(
        f"no readable checkpoint in {last.parent}: "
        + "; ".join(unreadable)
        + ". Start a new run in another folder (--out) without --resume"
    )


def tidy_run_dir(run_dir: Path) -> list[str]:
    """Undo what a save killed half-way left behind; returns what was done, for the log.

    Removes ``checkpoints/.*.tmp`` files, and for the ``best``/``last`` adapter folders
    puts an old folder back when the swap was cut between its two renames.
    """
    notes = []
    temporary = sorted((Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp"))
    for path in temporary:
        path.unlink(missing_ok=True)
    if temporary:
        names = ", ".join(path.name for path in temporary)
        notes.append(f"removed {len(temporary)} temporary file(s) of an interrupted save: {names}")
    for name in ADAPTER_FOLDERS:
        folder = Path(run_dir) / name
        old, temp = folder.with_name(f".{name}.old"), folder.with_name(f".{name}.tmp")
        if old.is_dir() and not folder.exists():
            old.rename(folder)
            notes.append(f"restored {folder} from {old.name} (a save was interrupted)")
        for path in (old, temp):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
                notes.append(f"removed {path.name} (a save was interrupted)")
    return notes


def save_state(fabric, run_dir, segmenter, optimizer, scheduler, config, state) -> None:
    """Write checkpoints/last.pt (rank 0; the adapters are identical on every process)."""
    if fabric.global_rank != 0:
        return
    save_checkpoint(
        last_checkpoint_path(run_dir),
        {
            "lora": lora_state_dict(segmenter.model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "config": config.to_dict(),
            **state,
        },
    )


def save_adapter_folder(segmenter, folder: Path, config, state, best) -> None:
    """Write an adapter folder next to the old one, then swap (never half-written)."""
    from co2sam.sam import save_adapter

    temp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for path in (temp, old):
        shutil.rmtree(path, ignore_errors=True)
    extra = {
        "checkpoint": folder.name,  # best: chosen on data.val_split; last: the final weights
        "selected_on": {"split": config.data.val_split, "metric": "label-guided mIoU"},
        "step": state["step"],
        "epoch": state["epoch"],
        "best": best,
        "config": config.to_dict(),
        # Settings changed when the run was resumed (config is the latest): step, old, new.
        SETTINGS_CHANGES: state.get(SETTINGS_CHANGES, []),
    }
    save_adapter(segmenter.model, temp, base=config.model.sam, extra=extra)
    if folder.exists():
        folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def finish_run(
    fabric: Any, run_dir: Path, save: Callable[[], None], write_last: Callable[[Path], None]
) -> tuple[Path, Path | None]:
    """The end of a finished run: ``last.pt`` (``save``), then the main process writes the
    ``last/`` folder (``write_last(folder)``) while the others wait. Returns ``last/`` and
    ``best/`` (None when no validation kept one)."""
    save()
    last = run_dir / "last"
    if fabric.global_rank == 0:
        write_last(last)
    fabric.barrier()
    best = run_dir / "best"
    return last, best if best.is_dir() else None
