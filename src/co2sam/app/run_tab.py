"""The Run tab: a training run's loss terms and validation mIoU over steps, and one
validation's per-class IoU and confusion matrix (from :class:`co2sam.app.runs.RunFolder`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from co2sam.app.gradio_env import import_gradio
from co2sam.app.paths import short_path
from co2sam.app.runs import RunFolder

gr = import_gradio()


class RunTab:
    """Handlers and components of the Run tab (``context``: an ``AppContext``)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self._folders: dict[str, RunFolder] = {}

    def folder(self, key: str) -> RunFolder:
        """One of the run folders the app was started with (refused otherwise)."""
        if key not in self.context.runs:
            raise gr.Error(f"{key!r} is not one of the run folders the app was started with")
        if key not in self._folders:
            try:
                self._folders[key] = RunFolder(key)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        return self._folders[key]

    def open(self, key: str | None) -> tuple[Any, ...]:
        """A run's summary, loss and mIoU curves, and its best validation's details."""
        import pandas as pd

        if not key:
            message = "no run folder: start the app with --run RUN (or --adapter RUN/best)"
            empty = pd.DataFrame({"step": [], "term": [], "value": []})
            return message, empty, None, gr.update(choices=[], value=None), None, None
        run = self.folder(key)
        losses = pd.DataFrame(run.loss_points(), columns=["step", "term", "value"])
        mious = pd.DataFrame(run.miou_points(), columns=["step", "mode", "mIoU"])
        best = run.best_epoch()
        bars, confusion = self.validation(key, best, "label-guided")
        choices = [
            (f"epoch {entry['epoch']}" + (" (best)" if entry["epoch"] == best else ""),
             entry["epoch"])
            for entry in run.validations()
        ]  # fmt: skip
        return (
            run.summary(),
            losses,
            mious if len(mious) else None,
            gr.update(choices=choices, value=best),
            bars,
            confusion,
        )

    def validation(self, key: str | None, epoch: int | None, mode: str) -> tuple[Any, Any]:
        """Per-class IoU bars and the confusion matrix of one validation, in one mode."""
        import pandas as pd

        if not key or epoch is None:
            return None, None
        run = self.folder(key)
        try:
            rows = run.per_class_iou(int(epoch), mode)
            figure = Path(tempfile.mkdtemp(prefix="figure-", dir=self.context.work_dir))
            confusion = run.confusion_figure(int(epoch), mode, figure / "confusion_matrix.png")
        except ValueError as error:
            raise gr.Error(str(error)) from None
        bars = pd.DataFrame(rows, columns=["class", "IoU"])
        return gr.update(value=bars, sort=[row["class"] for row in rows]), str(confusion)

    def build(self, page: Any) -> None:
        """The tab's components and events; ``page`` opens the first run when it loads."""
        run = gr.Dropdown(
            choices=[(short_path(f), f) for f in self.context.runs],
            value=self.context.runs[0] if self.context.runs else None,
            label="Training run folder",
            elem_id="run-folder",
        )
        summary = gr.Markdown(elem_id="run-summary")
        with gr.Row():
            losses = gr.LinePlot(
                x="step", y="value", color="term", title="Loss terms", height=320,
                elem_id="loss-plot",
            )  # fmt: skip
            mious = gr.LinePlot(
                x="step", y="mIoU", color="mode", title="Validation mIoU (%)", y_lim=[0, 100],
                height=320, elem_id="miou-plot",
            )  # fmt: skip
        with gr.Row():
            epoch = gr.Dropdown(choices=[], label="Validation", elem_id="run-epoch")
            mode = gr.Radio(
                choices=["label-guided", "open"],
                value="label-guided",
                label="Mode",
                elem_id="run-mode",
            )
        with gr.Row():
            bars = gr.BarPlot(
                x="class", y="IoU", title="Per-class IoU (%)", y_lim=[0, 100], height=320,
                elem_id="iou-bars",
            )  # fmt: skip
            confusion = gr.Image(
                label="Confusion matrix (rows: ground truth)",
                interactive=False,
                elem_id="confusion",
            )
        opened = [summary, losses, mious, epoch, bars, confusion]
        run.change(self.open, run, opened)
        epoch.input(self.validation, [run, epoch, mode], [bars, confusion])
        mode.input(self.validation, [run, epoch, mode], [bars, confusion])
        page.load(self.open, run, opened)
