"""A resumed run: what it keeps from its checkpoint, what it takes from the config now.

A resumed run uses the config it is given (the run's ``config.yaml`` plus ``--set`` and
flags), field by field against the config stored in the checkpoint:

- **honoured**: everything below not refused. Most fields simply apply from the next step
  (``loss.*``, ``prompts.*``, ``eval.*``, ``train.epochs``, ``train.max_steps``,
  ``train.val_every``, ``data.root`` for data that moved, ...). Some need work, done here:
  ``optim.lr`` and ``optim.weight_decay`` are written into the restored optimizer (a
  restored optimizer would keep the old ones), the schedule (warm-up, milestones,
  ``optim.schedule_unit``) is re-read, and a new number of processes or batch size deals
  out the rest of the interrupted epoch exactly (``co2sam.train.data.EpochSampler``).
  Every change is listed in one log line and kept in the run's record
  (:func:`settings_history`: ``settings_changes`` in ``config.yaml``, the checkpoints
  and the adapter folders' ``co2sam_adapter.json``).
- **refused** (:class:`co2sam.train.run_dir.RunDirError` naming the field and the fix):
  ``model.lora_rank``, ``model.lora_alpha`` and ``model.adapter`` (the checkpoint's LoRA
  weights are what the run continues from), and, in the middle of an epoch, the fields
  that choose the epoch's images and order (``train.seed``, ``data.dataset``,
  ``data.train_split``, ``data.exclude``, ``train.limit_train``), or a training split
  that changed size: the rest of that epoch would not be the rest of the same epoch.
  From a checkpoint at an epoch's end (``epoch-NNN.pt``) they are honoured.

A run's config records absolute paths (:func:`absolute_paths`), so a run resumes from
any working directory.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from co2sam.config import SETTINGS_CHANGES, Co2SamConfig
from co2sam.train.checkpoint import CheckpointError
from co2sam.train.run_dir import RunDirError

FIXED = {
    "model.lora_rank": "the checkpoint's LoRA weights have the rank they were trained with",
    "model.lora_alpha": "the checkpoint's LoRA weights were trained with its scaling",
    "model.adapter": "a resumed run continues from its checkpoint's LoRA weights",
}
EPOCH_ORDER = (
    "train.seed",
    "data.dataset",
    "data.train_split",
    "data.exclude",
    "train.limit_train",
)
PATH_FIELDS = ("data.root", "data.exclude", "prompts.cache_dir", "model.adapter")
"""Always paths (when set); ``model.sam`` and ``prompts.detector`` only when a local one."""


def absolute_paths(config: Co2SamConfig) -> Co2SamConfig:
    """``config`` with its local paths absolute (data root, box caches, adapter, the
    excluded-ids file, and ``model.sam`` / ``prompts.detector`` when they name a local
    file or folder rather than a hub id or a registered architecture)."""
    from co2sam.models.families import variant_family

    changes: dict[str, dict[str, Any]] = {}
    for key in PATH_FIELDS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value:
            changes.setdefault(section, {})[name] = _absolute(value)
    sam = config.model.sam
    if variant_family(sam.partition(":")[0]) is None and sam != "demo" and _local(sam):
        changes.setdefault("model", {})["sam"] = _absolute(sam)
    if _local(config.prompts.detector):
        changes.setdefault("prompts", {})["detector"] = _absolute(config.prompts.detector)
    sections = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in changes.items()
    }
    return dataclasses.replace(config, **sections)


def check_checkpoint_kind(state: dict[str, Any], path: Path) -> None:
    if state.get("kind", "train") != "train":
        raise CheckpointError(
            f"{path} is a checkpoint of `co2sam {state['kind']}`, not of `co2sam train`; "
            f"resume it with `co2sam {state['kind']} --resume`"
        )


def epoch_position(saved: dict[str, Any]) -> int:
    """Images of the current epoch's order used when ``saved`` was written (all processes).

    Checkpoints written before co2sam recorded it give it as batches per process, with the
    batch size and processes of their config.
    """
    if "seen_in_epoch" in saved:
        return int(saved["seen_in_epoch"])
    return int(saved.get("batch_in_epoch", 0)) * images_per_step(saved)


def images_per_step(saved: dict[str, Any]) -> int:
    """The effective batch of the session that wrote ``saved`` (batch x processes)."""
    if "batch_size" in saved and "world_size" in saved:
        return int(saved["batch_size"]) * int(saved["world_size"])
    train = saved["config"]["train"]
    return int(train["batch_size"]) * int(train["devices"]) * int(train["num_nodes"])


def scheduled_images(saved: dict[str, Any]) -> int:
    """Images the optimizer steps so far covered (what ``schedule_unit: image`` counts)."""
    if "step_images" in saved:
        return int(saved["step_images"])
    return int(saved["step"]) * images_per_step(saved)


def changed_settings(saved: dict[str, Any], config: Any) -> list[dict[str, Any]]:
    """The settings of ``config`` that differ from the checkpoint's, as entries of the
    run's record (:data:`co2sam.config.SETTINGS_CHANGES`), from the step after ``saved``'s."""
    before, now = _flat(saved.get("config", {})), _flat(config.to_dict())
    return [
        {"from_step": int(saved["step"]) + 1, "key": key, "old": before[key], "new": now[key]}
        for key in now
        if key in before and not _same(key, before[key], now[key])
    ]


def settings_history(saved: dict[str, Any], config: Any) -> list[dict[str, Any]]:
    """The run's record of changed settings: the checkpoint's, then this resume's."""
    return [*saved.get(SETTINGS_CHANGES, []), *changed_settings(saved, config)]


def check_changes(saved: dict[str, Any], config: Co2SamConfig, *, path: Path) -> list[str]:
    """Refuse the config changes a resumed run cannot honour (see the module); notes for
    the rest. Cheap: call it before loading models and data."""
    before, now = _flat(saved.get("config", {})), _flat(config.to_dict())
    changed = [change["key"] for change in changed_settings(saved, config)]
    seen = epoch_position(saved)
    for key in changed:
        if key in FIXED:
            raise RunDirError(
                f"{key} cannot change when resuming ({before[key]!r} in {path}, {now[key]!r} "
                f"now): {FIXED[key]}. Keep it, or start a new run in another folder (--out)"
            )
    for key in changed if seen else ():
        if key in EPOCH_ORDER:
            raise RunDirError(
                f"{key} cannot change in the middle of an epoch ({before[key]!r} before, "
                f"{now[key]!r} now: the rest of the epoch would be another epoch's): "
                + _mid_epoch(saved, path)
            )
    notes = []
    if changed:
        listed = "; ".join(f"{key} {before[key]!r} -> {now[key]!r}" for key in changed)
        notes.append(f"settings changed since {path.name} (applied from step "
                     f"{saved['step'] + 1}): {listed}")  # fmt: skip
    return notes


def check_epoch_size(saved: dict[str, Any], epoch_size: int, *, path: Path) -> None:
    """Refuse to continue an epoch of a training split that has changed size since."""
    if epoch_position(saved) and saved.get("epoch_size", epoch_size) != epoch_size:
        raise RunDirError(
            f"the training split has {epoch_size} image(s) now, {saved['epoch_size']} when "
            "the checkpoint was written, so its place in the epoch is lost: "
            + _mid_epoch(saved, path)
        )


def _mid_epoch(saved: dict[str, Any], path: Path) -> str:
    return (
        f"{path} stopped {epoch_position(saved)} image(s) into epoch {saved['epoch'] + 1}; "
        "resume from the end of an epoch (RUN/checkpoints/epoch-NNN.pt), or keep it as it was"
    )


def reapply_optim(optimizer: Any, scheduler: Any, optim: Any) -> None:
    """Put ``optim.lr`` and ``optim.weight_decay`` into a restored optimizer and scheduler
    (their state dicts carry the old values), at the schedule's current factor."""
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["weight_decay"] = optim.weight_decay
        group["initial_lr"] = optim.lr
        group["lr"] = optim.lr * factor(scheduler.last_epoch)
    scheduler.base_lrs = [optim.lr for _ in optimizer.param_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def epoch_steps_left(epoch_size: int, seen: int, world_size: int, batch_size: int) -> int:
    """Batches (steps) each process still runs in an epoch with ``seen`` images used."""
    return math.ceil(math.ceil((epoch_size - seen) / world_size) / batch_size)


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{name}": value
        for section, values in config.items()
        if isinstance(values, dict)
        for name, value in values.items()
    }


def _same(key: str, before: Any, now: Any) -> bool:
    if before == now:
        return True
    if isinstance(before, str) and isinstance(now, str) and (key in PATH_FIELDS or _local(now)):
        return _absolute(before) == _absolute(now)  # a relative path from older runs
    return False


def _local(value: str | None) -> bool:
    return bool(value) and Path(str(value)).expanduser().exists()


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve())
