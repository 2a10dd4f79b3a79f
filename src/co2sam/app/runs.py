"""The Run tab's folder: a training run's logs and validations, as points to plot.

Read from the run folder ``co2sam train`` writes (:mod:`co2sam.train.loop`):

- ``csv/from-step-<k>/metrics.csv``: one file per session (a resumed run starts a new
  one at its checkpoint's step k). Merged so that each step has its latest values: a
  session starting at step k replaces what earlier sessions logged after step k (the
  steps a killed session did after its last checkpoint were done again).
- ``checkpoints/last.pt`` (``weights_only``; else the newest readable ``epoch-XXX.pt``):
  the validation history, each entry with the full metrics per mode (per-class IoU,
  confusion matrix).
- ``config.yaml``: the dataset (for class names) and the validation box source.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from co2sam.app.paths import inside, short_path

HIDDEN_TERMS = ("lr", "images_per_s", "template_cache_hit_rate", "template_cache_gib")
"""``train/*`` columns that are not loss terms."""


class RunFolderError(ValueError):
    """The folder is not a training run (the message names the fix)."""


class RunFolder:
    """A ``co2sam train`` run folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if not (self.path / "config.yaml").is_file() and not (self.path / "csv").is_dir():
            raise RunFolderError(
                f"{path} is not a training run folder (no config.yaml or csv/): give the "
                "folder passed to `co2sam train --out`"
            )
        self.config = _read_yaml(self.path / "config.yaml")
        self._history: list[dict[str, Any]] | None = None
        self._class_names: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ CSV logs
    def log_rows(self) -> list[dict[str, float]]:
        """Logged rows by step (sessions merged, see the module docstring)."""
        sessions = []
        csv_root = self.path / "csv"
        if csv_root.is_dir():
            for folder in csv_root.iterdir():
                start = folder.name.removeprefix("from-step-")
                if folder.is_dir() and start.isdigit() and (folder / "metrics.csv").is_file():
                    sessions.append((int(start), inside(folder, "metrics.csv")))
        rows: dict[int, dict[str, float]] = {}
        for start, path in sorted(sessions):
            rows = {step: row for step, row in rows.items() if step <= start}
            for row in _read_csv(path):
                step = int(row.pop("step"))
                rows.setdefault(step, {}).update(row)
        return [{"step": step, **rows[step]} for step in sorted(rows)]

    def loss_points(self) -> list[dict[str, Any]]:
        """``{step, term, value}`` for every logged loss term (``train/<term>``)."""
        points = []
        for row in self.log_rows():
            for key, value in row.items():
                if key.startswith("train/") and key[6:] not in HIDDEN_TERMS:
                    points.append({"step": row["step"], "term": key[6:], "value": value})
        return points

    def miou_points(self) -> list[dict[str, Any]]:
        """``{step, mode, mIoU}`` (percent) for every validation logged."""
        points = []
        for row in self.log_rows():
            for mode in ("label-guided", "open"):
                value = row.get(f"val/{mode}/miou")
                if value is not None:
                    points.append({"step": row["step"], "mode": mode, "mIoU": 100 * value})
        return points

    # ------------------------------------------------------------------ validations
    def validations(self) -> list[dict[str, Any]]:
        """The validation history (``{epoch, step, metrics: {mode: metrics}}``), oldest first."""
        if self._history is None:
            self._history = self._read_history()
        return self._history

    def best_epoch(self) -> int | None:
        """The epoch with the best label-guided mIoU (as training chose ``best/``)."""
        scored = [
            (entry["metrics"].get("label-guided", {}).get("miou"), entry["epoch"])
            for entry in self.validations()
        ]
        scored = [(miou, epoch) for miou, epoch in scored if miou is not None]
        return max(scored)[1] if scored else None

    def validation(self, epoch: int) -> dict[str, Any]:
        for entry in self.validations():
            if entry["epoch"] == epoch:
                return entry
        raise RunFolderError(f"{self.path} has no validation at epoch {epoch}")

    def class_names(self) -> tuple[str, ...]:
        """The run's class names, background first (numbered when they cannot be found)."""
        if self._class_names is None:
            self._class_names = self._find_class_names()
        return self._class_names

    def per_class_iou(self, epoch: int, mode: str) -> list[dict[str, Any]]:
        """``{class, IoU}`` (percent) of one validation, classes with a defined IoU."""
        metrics = self.validation(epoch)["metrics"].get(mode)
        if metrics is None:
            raise RunFolderError(f"the validation at epoch {epoch} has no {mode} results")
        names = self.class_names()
        return [
            {"class": names[index] if index < len(names) else f"class {index}", "IoU": 100 * iou}
            for index, iou in enumerate(metrics["iou_per_class"])
            if iou is not None
        ]

    def confusion_figure(self, epoch: int, mode: str, path: str | Path) -> Path:
        """The validation's row-normalised confusion matrix as a PNG at ``path``."""
        from co2sam.visualize import confusion_matrix_figure

        metrics = self.validation(epoch)["metrics"].get(mode)
        if metrics is None:
            raise RunFolderError(f"the validation at epoch {epoch} has no {mode} results")
        matrix = metrics["confusion_matrix"]
        names = list(self.class_names())
        names += [f"class {index}" for index in range(len(names), len(matrix))]
        return confusion_matrix_figure(
            matrix, names[: len(matrix)], path, title=f"epoch {epoch}, {mode} mode"
        )

    def summary(self) -> str:
        """A few lines of Markdown: steps, epochs, best validation, validation boxes."""
        rows = self.log_rows()
        lines = [f"**{short_path(self.path)}**"]
        if rows:
            lines.append(f"{rows[-1]['step']} optimizer steps logged")
        validations = self.validations()
        best = self.best_epoch()
        if best is not None:
            metrics = self.validation(best)["metrics"]
            shown = ", ".join(
                f"{mode} {100 * metrics[mode]['miou']:.1f}"
                for mode in ("label-guided", "open")
                if metrics.get(mode, {}).get("miou") is not None
            )
            lines.append(
                f"{len(validations)} validation(s); best epoch {best}: mIoU {shown} "
                f"(validation boxes: {self._validation_boxes()})"
            )
        elif not validations:
            lines.append("no validation in this run (train.val_every = 0, or not reached yet)")
        return "  \n".join(lines)

    # ------------------------------------------------------------------ internals
    def _read_history(self) -> list[dict[str, Any]]:
        from co2sam.train.checkpoint import (
            CheckpointError,
            epoch_checkpoints,
            last_checkpoint_path,
            load_checkpoint,
        )

        candidates = [last_checkpoint_path(self.path)] + epoch_checkpoints(self.path)
        for path in candidates:
            if path.is_file():
                try:
                    return list(load_checkpoint(inside(path.parent, path.name))["history"])
                except (CheckpointError, KeyError):
                    continue
        return []

    def _find_class_names(self) -> tuple[str, ...]:
        from co2sam.classes import dataset_classes
        from co2sam.config import ConfigError, DataConfig
        from co2sam.data import DatasetError, build_dataset

        data = self.config.get("data", {})
        try:
            config = DataConfig(**data)
            return tuple(build_dataset(config, config.val_split, check_masks=False).class_names)
        except (ConfigError, DatasetError, OSError, TypeError, ValueError):
            pass
        try:
            return dataset_classes(str(data.get("dataset", "")))
        except ValueError:
            count = max((len(e["metrics"].get("label-guided", {}).get("iou_per_class", []))
                         for e in self.validations()), default=0)  # fmt: skip
            return ("background", *(f"class {index}" for index in range(1, count)))

    def _validation_boxes(self) -> str:
        source = self.config.get("prompts", {}).get("source", "?")
        return {
            "oracle": "oracle (ground-truth boxes, an upper bound)",
            "simulated": "the demo's simulated detector",
        }.get(source, source)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values: dict[str, Any] = {}
            for key, value in row.items():
                if key and value not in (None, ""):
                    try:
                        values[key] = float(value)
                    except ValueError:
                        continue
            if "step" in values:
                rows.append(values)
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
