"""Per-epoch validation during training: evaluate, log, keep the best adapter."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from co2sam.records import Sample
from co2sam.train.run_dir import save_adapter_folder


def validate(fabric, config, segmenter, dataset, boxes_fn, state, bar, signals=None) -> None:
    """Evaluate (label-guided and open) on every process, record it, keep the best adapter.

    Process ``r`` of ``W`` segments images ``r, r + W, ...`` of the validation split
    (``train.limit_val`` is applied when the split is loaded); the confusion matrices
    are summed over the processes, so all of them see the same numbers and agree on the
    best epoch, and none waits for one process to score the whole split.

    signals: the run's :class:`co2sam.train.interrupt.StopSignals`. Before each batch the
    processes agree on them (one small all-reduce, as a training step does) and stop at
    once with :class:`co2sam.train.interrupt.StopRequested`: a validation of 40,000 COCO
    images must not outlast the scheduler's grace period. Nothing is recorded then; the
    resumed run validates first. Validation leaves the global RNGs as it found them.
    """
    from co2sam.data.preflight import SplitSubset
    from co2sam.evaluate import evaluate_model
    from co2sam.parallel import from_fabric

    processes = from_fabric(fabric)
    shard = SplitSubset(dataset, processes.shard(range(len(dataset))))
    if signals is not None:
        per_process = math.ceil(len(dataset) / processes.world_size)
        shard = StopBetweenBatches(shard, per_process, _stop_check(fabric, signals))
    record: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"], "metrics": {}}
    cuda = [fabric.device] if fabric.device.type == "cuda" else []
    phase = contextlib.nullcontext() if signals is None else signals.during("validation")
    with phase, torch.no_grad(), torch.random.fork_rng(devices=cuda):
        record["metrics"] = evaluate_model(
            segmenter,
            shard,
            boxes_fn,
            modes=("label-guided", "open"),
            batch_size=config.eval.batch_size,
            device=fabric.device,
            progress=False,
            reduce_across_processes=processes.distributed,
            compat=config.eval.compat,
        )
    guided = record["metrics"].get("label-guided", {}).get("miou")
    opened = record["metrics"].get("open", {}).get("miou")
    bar.print(
        f"epoch {state['epoch']} step {state['step']}: val mIoU "
        f"label-guided {_pct(guided)}, open {_pct(opened)}"
    )
    best = state["best"]
    if guided is not None and (best is None or guided > best["miou"]):
        state["best"] = {
            "epoch": state["epoch"],
            "step": state["step"],
            "miou": float(guided),
            "open_miou": None if opened is None else float(opened),
        }
        if processes.is_main:
            save_adapter_folder(
                segmenter, Path(config.train.out_dir) / "best", config, state, state["best"]
            )
    state["history"].append(_plain(record))
    fabric.barrier()


class StopBetweenBatches(Dataset):
    """A process's share of the validation split that checks for a stop before each batch.

    Every process's share is padded to ``length`` items with placeholders (skipped by
    evaluation, like unreadable files), so all processes load as many batches and make
    the check's all-reduce together. ``check`` raises to stop.
    """

    def __init__(self, dataset: Any, length: int, check: Callable[[], None]) -> None:
        self.dataset, self.length, self.check = dataset, length, check

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if index < len(self.dataset):
            return self.dataset[index]
        return Sample(np.zeros((1, 1, 3), np.uint8), None, [], "", problem="padding")

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        """A batch (what the DataLoader asks for): check, then load it."""
        self.check()
        return [self[index] for index in indices]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "length", "check"):  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _stop_check(fabric: Any, signals: Any) -> Callable[[], None]:
    from co2sam.train.interrupt import StopRequested

    def check() -> None:
        flags = torch.tensor(signals.flags, device=fabric.device)
        if fabric.world_size > 1:
            flags = fabric.all_reduce(flags, reduce_op="sum")
        signum = signals.agreed(flags.tolist())
        if signum is not None:
            raise StopRequested(signum)

    return check


def check_validation_split(train_dataset: Any, val_dataset: Any) -> None:
    """Refuse to pick ``best/`` on training images (the custom-folder trap).

    A folder dataset without ``<val_split>.txt`` puts every image in the validation
    split, one without ``<train_split>.txt`` every image in the training split, and a
    validation split made only of training images measures nothing; each raises
    :class:`co2sam.data.DatasetError` naming the missing list and the fix.
    """
    from co2sam.data import DatasetError
    from co2sam.data.preflight import split_items

    split, _ = split_items(val_dataset)
    fix = (
        "write the validation images' names to {root}/{name}.txt (and the training images' to "
        "its train list), point --set data.val_split=NAME at an existing NAME.txt, or train "
        "without validation (no best/ adapter) with --set train.val_every=0"
    )
    if getattr(split, "split_listed", True) is False:
        root = getattr(split, "root", "?")
        raise DatasetError(
            f"the folder dataset at {root} has no {split.split}.txt, so the validation split "
            "would be every image, training images included, and best/ would be chosen on "
            "them; " + fix.format(root=root, name=split.split)
        )
    train_split, _ = split_items(train_dataset)
    if getattr(train_split, "split_listed", True) is False:
        root, name = getattr(train_split, "root", "?"), train_split.split
        # The VOC default train_aug falls back to a folder's train.txt: name that file.
        neither = ("neither train.txt nor train_aug.txt", "train")
        missing, write = neither if name == "train_aug" else (f"no {name}.txt", name)
        raise DatasetError(
            f"the folder dataset at {root} has {missing}, so the training split {name!r} "
            f"would be every image, the validation images ({split.split}.txt) included; "
            f"write the training images' names to {root}/{write}.txt, or point --set "
            "data.train_split=NAME at an existing NAME.txt"
        )
    train_ids = set(getattr(train_dataset, "ids", ()))
    val_ids = list(getattr(val_dataset, "ids", ()))
    if train_ids and val_ids and all(image_id in train_ids for image_id in val_ids):
        root = getattr(split, "root", "?")
        raise DatasetError(
            f"every validation image ({len(val_ids)}, split {getattr(split, 'split', '?')!r}) "
            "is also a training image, so best/ would be chosen on training images; "
            + fix.format(root=root, name=getattr(split, "split", "val"))
        )


def val_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {}
    for mode, values in record["metrics"].items():
        for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"):
            value = values.get(key)
            if isinstance(value, int | float) and not math.isnan(value):
                metrics[f"val/{mode}/{key}"] = float(value)
    return metrics


def _plain(value: Any) -> Any:
    """Metrics as plain Python (dicts, lists, floats, str, None): weights-only loadable."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"
