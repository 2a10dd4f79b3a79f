"""The run folder: refuse to overwrite a run, write resumable state and adapter folders.

Every write is atomic (checkpoints: temp file + rename; adapter folders: written beside
the old one, then swapped), and only rank 0 writes: the adapters are identical on every
process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from co2sam.train.checkpoint import (
    find_last_checkpoint,
    last_checkpoint_path,
    load_checkpoint,
    lora_state_dict,
    rng_state,
    save_checkpoint,
)


class RunDirError(RuntimeError):
    """The run folder cannot be used (it already holds a run, or has nothing to resume)."""


def open_run_dir(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a fresh run); refuses to overwrite a run."""
    if resume:
        return load_checkpoint(find_last_checkpoint(run_dir))
    if last_checkpoint_path(run_dir).exists():
        raise RunDirError(
            f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
            "or choose another folder with --out"
        )
    return None


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
