"""Resumable training checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint (``RUN_DIR/checkpoints/last.pt``, plus ``epoch-XXX.pt`` at epoch ends)
holds only plain containers, numbers, strings and tensors, so it loads without
unpickling arbitrary objects:

- ``format_version``, ``step`` (optimizer steps), ``epoch`` (epochs completed) and
  ``seen_in_epoch`` (images of the current epoch's order already used, over all
  processes; older checkpoints have ``batch_in_epoch``, batches per process);
- the session's geometry: ``world_size`` (processes), ``batch_size`` (per process),
  ``epoch_size`` (training images) and ``step_images`` (images the optimizer steps
  covered, what ``optim.schedule_unit: image`` counts), so a run resumed with other
  ones continues exactly (co2sam.train.resume);
- ``lora``: the LoRA tensors, selected by parameter NAME (state-dict tensors are
  detached, so ``requires_grad`` cannot tell them apart);
- ``optimizer``, ``scheduler``: their state dicts;
- ``rng``: torch (CPU and CUDA), numpy's legacy global state and python ``random``;
- ``config``: the resolved config; ``best``: the best validation result so far.

Files are written to a temporary name in the same folder (``.<name>.<random>.tmp``) and
renamed (:func:`co2sam.atomic_files.write_atomically`): a crash while saving never leaves
a half-written ``last.pt``, at most a temporary file that the next start removes
(``run_dir.tidy_run_dir``); a full disk is an ``OSError`` naming the checkpoint.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from co2sam.atomic_files import write_atomically
from co2sam.models.lora import is_lora_name

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
EPOCH_PATTERN = "epoch-*.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (missing, unreadable, or from another model)."""


class UnreadableCheckpointError(CheckpointError):
    """The file is not a checkpoint torch can read (truncated, corrupt, not a checkpoint)."""


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` (names as in ``model.named_parameters``), on CPU."""
    return {
        name: param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if is_lora_name(name)
    }


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved LoRA tensors into ``model``; the names must match exactly."""
    params = {name: p for name, p in model.named_parameters() if is_lora_name(name)}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint LoRA weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} (was it trained with another model.sam or lora_rank?)"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def rng_state() -> dict[str, Any]:
    """The process's RNG states as weights-only-loadable values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(item) for item in value]
    return value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    return write_atomically(
        path, lambda file: torch.save({"format_version": FORMAT_VERSION, **state}, file)
    )


def copy_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint file atomically (``epoch-XXX.pt`` from ``last.pt``)."""
    with open(source, "rb") as reader:
        return write_atomically(target, lambda file: shutil.copyfileobj(reader, file))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableCheckpointError(
            f"cannot read checkpoint {path} ({reason}): truncated by a crash, or not a checkpoint"
        ) from error
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state.get('format_version')!r}, "
            f"this co2sam reads {FORMAT_VERSION}"
        )
    return state


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """Where the most recent checkpoint of a run lives."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST


def epoch_checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """The copy of the state at the end of ``epoch`` (1-based: epochs completed)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch-{epoch:03d}.pt"


def epoch_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's ``epoch-XXX.pt`` files, newest (highest epoch) first."""
    paths = (Path(run_dir) / CHECKPOINT_DIR).glob(EPOCH_PATTERN)
    numbered = [(int(p.stem.split("-", 1)[1]), p) for p in paths if p.stem[6:].isdigit()]
    return [path for _, path in sorted(numbered, reverse=True)]
