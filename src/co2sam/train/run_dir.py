"""The run folder: refuse to overwrite a run, find where to resume, write state and adapters.

Every write is atomic (checkpoints: temp file + rename; adapter folders: written beside
the old one, then swapped), and only rank 0 writes: the adapters are identical on every
process. What a write killed half-way leaves behind, :func:`tidy_run_dir` removes (or
swaps back) at the next start; an unreadable ``last.pt`` makes :func:`open_run_dir`
fall back to the newest readable ``epoch-XXX.pt``, saying so.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from co2sam.train.checkpoint import (
    CHECKPOINT_DIR,
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


class RunDirError(RuntimeError):
    """The run folder cannot be used (it already holds a run, or has nothing to resume)."""


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
    }
    save_adapter(segmenter.model, temp, base=config.model.sam, extra=extra)
    if folder.exists():
        folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
