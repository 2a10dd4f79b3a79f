"""What a training run shows and writes: a rich progress bar, TensorBoard and CSV logs.

Logs go under the run folder: ``RUN_DIR/tensorboard`` (``tensorboard --logdir``) and
``RUN_DIR/csv/from-step-<k>/metrics.csv`` (one file per session, so resuming never
overwrites what an earlier session wrote). Keys: ``train/<loss>``, ``train/lr``,
``train/images_per_s``, ``train/template_cache_hit_rate`` and ``..._gib`` (this
process's T-teacher cache), ``val/<mode>/miou`` ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.progress import Progress, TextColumn

from co2sam.progress import progress_bar


def make_loggers(run_dir: Path, start_step: int) -> list:
    """Fabric loggers (TensorBoard, CSV) writing under ``run_dir``; rank-zero only."""
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    return [
        TensorBoardLogger(root_dir=str(run_dir), name="", version="tensorboard"),
        CSVLogger(root_dir=str(run_dir), name="csv", version=f"from-step-{start_step}"),
    ]


def log_metrics(loggers: list, metrics: dict[str, float], step: int) -> None:
    """``metrics`` at ``step`` to every logger of :func:`make_loggers`."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def close_monitors(bar: TrainProgress, loggers: list) -> None:
    """At the end of a run (finished, stopped or failed): the bar stops, the logs flush."""
    bar.close()
    for logger in loggers:
        logger.finalize("success")


class RunningMeans:
    """Exponential moving averages of the logged losses (for the progress bar)."""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.values: dict[str, float] = {}

    def update(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            old = self.values.get(name)
            self.values[name] = (
                value if old is None else self.momentum * old + (1 - self.momentum) * value
            )

    def summary(self, names: tuple[str, ...]) -> str:
        return " ".join(f"{n} {self.values[n]:.3f}" for n in names if n in self.values)


def new_epoch_losses(first_step: int, *, complete: bool = True) -> dict[str, Any]:
    """The running sums of one epoch's losses, from ``first_step`` on (a plain dict: it
    travels in the checkpoint, so an epoch cut by a stop and resumed reports the means
    an uninterrupted one does). ``complete`` False: the steps before ``first_step`` of
    this epoch are not in it (a checkpoint written before co2sam kept the sums)."""
    return {"steps": 0, "sums": {}, "first_step": first_step, "complete": complete}


def add_epoch_losses(record: dict[str, Any], losses: Mapping[str, float]) -> None:
    """Add one optimizer step's losses to ``record`` (:func:`new_epoch_losses`)."""
    record["steps"] += 1
    for name, value in losses.items():
        record["sums"][name] = record["sums"].get(name, 0.0) + float(value)


def epoch_mean_losses(record: dict[str, Any], names: tuple[str, ...], last_step: int) -> str:
    """``total 8.605 focal 0.173 ...``: the means over the epoch's steps (or, when the
    record is not complete, over the steps it holds, saying which)."""
    steps = max(record["steps"], 1)
    summary = " ".join(
        f"{name} {record['sums'][name] / steps:.3f}" for name in names if name in record["sums"]
    )
    if summary and not record["complete"]:
        summary += (
            f" (mean of steps {record['first_step']}..{last_step} only: resumed from a "
            "checkpoint without this epoch's earlier losses)"
        )
    return summary


class TrainProgress:
    """A rich progress bar over optimizer steps with ETA, images/s and running losses.

    enabled: False turns the bar off (``--no-progress``, other ranks, tests).
    lines: with the bar off, still write what :meth:`print` gets as plain lines on
        stderr (the main process of a run without a bar, e.g. a batch job's log);
        otherwise, with the bar off, every method is a no-op.
    """

    SHOWN = ("total", "focal", "dice", "template", "contrastive", "iou", "entropy")

    def __init__(
        self, total_steps: int, start_step: int, *, enabled: bool = True, lines: bool = False
    ) -> None:
        self.enabled = enabled
        self.lines = lines
        self.means = RunningMeans()
        self._images = 0
        self._since = time.perf_counter()
        self.images_per_s = 0.0
        self._period_images, self._period_start = 0, self._since
        self._progress: Progress | None = None
        if not enabled:
            return
        self._progress = progress_bar(
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[losses]}")
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_step, rate="", losses=""
        )
        self._progress.start()

    def advance(self, step: int, images: int, losses: Mapping[str, float], note: str = "") -> None:
        """Record one optimizer step that used ``images`` images (summed over processes).

        ``note`` is shown after the rate (e.g. the template cache's hit rate).
        """
        self._images += images
        self._period_images += images
        self.means.update(losses)
        elapsed = time.perf_counter() - self._since
        if elapsed >= 1.0:
            self.images_per_s = self._images / elapsed
            self._images, self._since = 0, time.perf_counter()
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=step,
                rate=f"{self.images_per_s:.2f} img/s" + (f" {note}" if note else ""),
                losses=self.means.summary(self.SHOWN),
            )

    def period_rate(self) -> float:
        """Images per second since the last call (or the start); starts a new period."""
        now = time.perf_counter()
        rate = self._period_images / max(now - self._period_start, 1e-9)
        self._period_images, self._period_start = 0, now
        return rate

    def print(self, message: str) -> None:
        """A line above the bar (or a plain line, see ``lines``)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        elif self.lines:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
