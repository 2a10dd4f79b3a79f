"""Restarting from an older checkpoint: the later history is set aside, never mixed in.

``co2sam train --resume RUN/checkpoints/epoch-001.pt`` starts a new branch of the run at
the end of epoch 1. What the old branch wrote after that point would otherwise stay in
the folder and pass for the new branch's: ``epoch-002.pt`` ... (a damaged ``last.pt``
later would fall back to them), its ``last.pt``, a ``best/`` adapter chosen on an epoch
the new branch has not trained, a ``last/`` adapter of its final step.
:func:`set_aside_abandoned` moves them, keeping their places, into
``RUN/abandoned-<time>/`` (nothing is deleted), and :func:`rebuild_best` writes ``best/``
again from the kept history's best epoch, so that ``best/`` and the validation history
of the checkpoint agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from co2sam.train.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    epoch_checkpoint_path,
    epoch_checkpoints,
    last_checkpoint_path,
    load_checkpoint,
    load_lora_state_dict,
)
from co2sam.train.run_dir import ResumePoint, move_aside, save_adapter_folder


def set_aside_abandoned(run_dir: Path, point: ResumePoint) -> tuple[list[str], bool]:
    """Move what came after ``point`` in ``run_dir`` into ``abandoned-<time>/`` (main
    process only); returns notes for the log, and whether ``best/`` was moved."""
    state = point.state
    step, epoch = int(state["step"]), int(state["epoch"])
    moved: list[str] = []
    last = last_checkpoint_path(run_dir)
    if last.is_file() and point.path.resolve() != last.resolve() and _step_of(last) != step:
        moved.append(f"{CHECKPOINT_DIR}/{last.name}")
    for path in reversed(epoch_checkpoints(run_dir)):  # oldest first
        if int(path.stem.split("-", 1)[1]) > epoch:
            moved.append(f"{CHECKPOINT_DIR}/{path.name}")
    best = (state.get("best") or {}).get("step")
    best_moved = (run_dir / "best").is_dir() and _adapter_step(run_dir / "best") != best
    if best_moved:
        moved.append("best")
    last_step = _adapter_step(run_dir / "last")
    if last_step is not None and last_step > step:
        moved.append("last")
    if not moved:
        return [], False
    aside = move_aside(run_dir, moved)
    note = (
        f"restarting the run at step {step} (end of epoch {epoch}) from {point.path.name}: "
        f"what came after it moved to {aside} ({', '.join(moved)})"
    )
    return [note], best_moved


def rebuild_best(run_dir: Path, segmenter: Any, config: Any, state: dict[str, Any]) -> list[str]:
    """Write ``best/`` from the checkpoint of the kept history's best epoch (main process).

    The segmenter's LoRA weights are overwritten: call this before loading the weights to
    resume from. Returns notes for the log.
    """
    best = state.get("best")
    if best is None:
        return []
    source = epoch_checkpoint_path(run_dir, int(best["epoch"]))
    try:
        saved = load_checkpoint(source)
    except CheckpointError as error:
        return [
            f"best/ (epoch {best['epoch']}) could not be written again ({error}); it is "
            "written at the next validation that beats it"
        ]
    load_lora_state_dict(segmenter.model, saved["lora"])
    save_adapter_folder(segmenter, run_dir / "best", config, {**state, **best}, best)
    return [f"best/ written again from {source.name} (epoch {best['epoch']}, the kept best)"]


def _step_of(checkpoint: Path) -> int | None:
    try:
        return int(load_checkpoint(checkpoint)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _adapter_step(folder: Path) -> int | None:
    """The training step recorded in an adapter folder written by a run (None if unknown)."""
    try:
        metadata = json.loads((folder / "co2sam_adapter.json").read_text())
        return int(metadata["extra"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
