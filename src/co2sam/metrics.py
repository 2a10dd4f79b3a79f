"""One confusion matrix over a split, and the numbers and report made from it.

Conventions (SPEC.md, Evaluation):

- rows = ground truth, columns = prediction; ground-truth pixels equal to the
  ignore value (255) are skipped.
- ``miou``: mean IoU over the classes that occur in the ground truth of the split
  (the WSSS convention behind published VOC/COCO numbers). A class that is
  predicted but never occurs in the ground truth does not enter this mean; it
  still lowers the precision of the classes it was confused with.
- ``miou_macro``: torchmetrics' ``MulticlassJaccardIndex(average="macro")``, the
  mean over classes that occur in the ground truth *or* the prediction (a class
  predicted but absent from the ground truth counts as IoU 0). On a full VOC/COCO
  val split every class occurs and both means agree.
- per-class precision (TP / predicted) and recall (TP / ground truth): leaking a
  class into its co-occurring neighbour shows as low precision.
- ``pixel_accuracy`` (TP / valid pixels), ``mean_accuracy`` (mean recall over the
  classes present), ``fw_iou`` (IoU weighted by ground-truth pixel frequency).

Undefined per-class values (division by zero) are NaN in tensors and ``None`` in
the JSON dict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from co2sam.classes import IGNORE_INDEX


class ConfusionMatrix:
    """A (C, C) int64 confusion matrix accumulated image by image.

    ``matrix[g, p]`` counts the pixels of ground-truth class g predicted as p.
    Distributed runs: call :meth:`all_reduce` (or sum ``.matrix`` yourself) once
    before :meth:`compute`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(
        self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
    ) -> None:
        """Add one image (or a batch) of the same shape: prediction and target class maps.

        prediction: (...) integer labels in 0..C-1. target: (...) integer labels in
        0..C-1 or the ignore value.
        """
        prediction = torch.as_tensor(prediction, device=self.matrix.device).long()
        target = torch.as_tensor(target, device=self.matrix.device).long()
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
            )
        valid = target != self.ignore_index
        prediction, target = prediction[valid], target[valid]
        if target.numel() == 0:
            return
        for name, values in (("target", target), ("prediction", prediction)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"{name} labels must be in 0..{self.num_classes - 1} "
                    f"(or {self.ignore_index} = ignore in the target), got {low}..{high}"
                )
        counts = torch.bincount(
            target * self.num_classes + prediction, minlength=self.num_classes**2
        )
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another process) in place; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes when torch.distributed is initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def entries(self) -> list[list[int]]:
        """The non-zero cells as ``[ground truth, prediction, count]`` (compact, JSON)."""
        cells = torch.nonzero(self.matrix).tolist()
        return [[row, column, int(self.matrix[row, column])] for row, column in cells]

    def add_entries(self, entries: Sequence[Sequence[int]]) -> ConfusionMatrix:
        """Add cells given as ``[ground truth, prediction, count]``; returns self."""
        for row, column, count in entries:
            self.matrix[int(row), int(column)] += int(count)
        return self

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python values (see the module docstring)."""
        return metrics_from_matrix(self.matrix)


def metrics_from_matrix(matrix: torch.Tensor) -> dict[str, Any]:
    """Metrics of a (C, C) confusion matrix (rows ground truth, columns prediction).

    Returns a dict with ``miou``, ``miou_macro``, ``iou_per_class``, ``precision``,
    ``recall`` (lists of length C, None where undefined), ``pixel_accuracy``,
    ``mean_accuracy``, ``fw_iou``, ``classes_present`` (ground-truth classes),
    ``num_pixels`` and ``confusion_matrix`` (nested lists).
    """
    counts = matrix.detach().double().cpu()
    true_positive = counts.diagonal()
    ground_truth = counts.sum(dim=1)
    predicted = counts.sum(dim=0)
    union = ground_truth + predicted - true_positive
    iou = _divide(true_positive, union)
    precision = _divide(true_positive, predicted)
    recall = _divide(true_positive, ground_truth)
    present = ground_truth > 0
    total = ground_truth.sum()
    frequency = ground_truth / total if total > 0 else ground_truth
    return {
        "miou": _mean(iou[present]),
        "miou_macro": _mean(iou[union > 0]),
        "iou_per_class": _as_list(iou),
        "precision": _as_list(precision),
        "recall": _as_list(recall),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else None,
        "mean_accuracy": _mean(recall[present]),
        "fw_iou": float((frequency[present] * iou[present]).sum()) if total > 0 else None,
        "classes_present": torch.nonzero(present).flatten().tolist(),
        "num_pixels": int(total),
        "confusion_matrix": matrix.detach().cpu().long().tolist(),
    }


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a JSON report atomically (NaN-free: undefined values are null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def metrics_table(metrics: dict[str, Any], class_names: Sequence[str], title: str) -> Any:
    """A rich Table of per-class IoU / precision / recall and the summary numbers.

    Classes that occur neither in the ground truth nor in the prediction are left out.
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("class")
    for column in ("IoU", "precision", "recall"):
        table.add_column(column, justify="right")
    present = set(metrics["classes_present"])
    for index, name in enumerate(class_names):
        values = [metrics[key][index] for key in ("iou_per_class", "precision", "recall")]
        if all(value is None for value in values):
            continue
        marker = "" if index in present else " (not in GT)"
        table.add_row(f"{index} {name}{marker}", *(_percent(value) for value in values))
    table.add_section()
    table.add_row(f"mIoU ({len(present)} GT classes)", _percent(metrics["miou"]), "", "")
    table.add_row("mIoU (torchmetrics macro)", _percent(metrics["miou_macro"]), "", "")
    table.add_row("pixel accuracy", _percent(metrics["pixel_accuracy"]), "", "")
    table.add_row("mean accuracy", _percent(metrics["mean_accuracy"]), "", "")
    table.add_row("fw IoU", _percent(metrics["fw_iou"]), "", "")
    return table


def _divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(
        denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, math.nan)
    )


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def _as_list(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(value) else value for value in values.tolist()]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
