"""The Gradio page of ``co2sam app``: the Segment, Review and Run tabs.

:class:`Page` holds the handlers (plain methods: the unit tests call them without a
browser) and :meth:`Page.build` wires them to components. Elements carry ``elem_id``s,
which the browser tests use. The page never takes a file path from the browser: folders
are chosen from the lists the app was started with, images by index in a list the server
made, and what is shown is pixels decoded here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.app import review as reviewing
from co2sam.app import segment as segmenting
from co2sam.app.gradio_env import import_gradio
from co2sam.app.models import ADAPTED, AppModels
from co2sam.app.paths import short_path
from co2sam.app.review import ReviewFolder
from co2sam.app.runs import RunFolder

gr = import_gradio()

THUMBNAILS_PER_PAGE = 24
REVIEW_THUMBNAIL = 160

KEYBOARD_JS = """
() => {
  const keys = {ArrowRight: "review-next", ArrowLeft: "review-prev",
                j: "review-next", k: "review-prev", f: "review-flag"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (target.isContentEditable ||
        ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const id = keys[event.key];
    const button = id && document.getElementById(id);
    if (!button || button.offsetParent === null) return;  // the Review tab is not shown
    event.preventDefault();
    button.click();
  });
}
"""

CSS = """
#review-legend .swatch {display: inline-block; width: 0.9em; height: 0.9em;
  margin: 0 0.3em 0 0.8em; vertical-align: middle; border: 1px solid #0003;}
"""


@dataclass
class AppContext:
    """What the page works with (made by :func:`co2sam.app.server.build_context`)."""

    models: AppModels
    class_names: tuple[str, ...] = ()
    """Default class names of the Segment tab (without background)."""
    class_presets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Named class lists to pick from (the dataset's, VOC, COCO)."""
    reviews: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    data_root: str | None = None
    max_pixels: int = 40_000_000
    examples: list[dict[str, Any]] = field(default_factory=list)
    title: str = "co2sam"
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="co2sam-app-")))
    """Where downloads and figures are written before Gradio serves them."""


class Page:
    """The handlers of the three tabs and the page that wires them."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self._reviews: dict[str, ReviewFolder] = {}
        self._runs: dict[str, RunFolder] = {}

    # ================================================================== Segment
    def class_list(self, text: str) -> tuple[str, ...]:
        try:
            return segmenting.parse_class_names(text)
        except segmenting.SegmentError as error:
            raise gr.Error(str(error)) from None

    def on_classes(self, text: str) -> Any:
        """New class names: the drawing panel's labels and colours follow."""
        try:
            names = segmenting.parse_class_names(text)[1:]
        except segmenting.SegmentError:
            return gr.update()
        colours = segmenting.class_colours(("background", *names))
        return gr.update(
            label_list=list(names),
            label_colors=[colours[n] for n in names],
            label=_drawing_label(names),
        )

    def on_preset(self, preset: str) -> str:
        return ", ".join(self.context.class_presets.get(preset, ()))

    def on_example(self, name: str) -> tuple[Any, str]:
        """A demo image with its simulated-detector boxes into the drawing panel."""
        from co2sam.data.image_io import read_image

        for example in self.context.examples:
            if Path(example["image"]).stem == name:
                value = {"image": read_image(example["image"]), "boxes": example["boxes"]}
                return value, ", ".join(self.context.class_names)
        return gr.update(), gr.update()

    def segment(
        self,
        drawing: dict[str, Any] | None,
        batch: Sequence[Any] | None,
        class_text: str,
        view: str | None,
        progress: Any = None,
    ) -> tuple[Any, ...]:
        """Segment the drawing panel's image (its boxes) and the batch (detector boxes)."""
        class_names = self.class_list(class_text)
        taken: set[str] = set()
        inputs = []
        if drawing and drawing.get("image"):
            if not isinstance(drawing["image"], str):
                raise gr.Error("the drawing panel holds no image file; upload the image again")
            inputs.append(
                segmenting.InputImage(
                    segmenting.unique_name(drawing["image"], taken),
                    drawing["image"],
                    drawn=list(drawing.get("boxes") or []),
                    orientation=int(drawing.get("orientation") or 0),
                )
            )
        for item in batch or []:
            path = str(getattr(item, "name", item))
            inputs.append(segmenting.InputImage(segmenting.unique_name(path, taken), path))
        if not inputs:
            raise gr.Error("upload an image in the drawing panel (or several below) first")

        def report(done: int, total: int, name: str) -> None:
            if progress is not None:
                progress((done, total), desc=f"segmenting {name}" if name else "done")

        outcomes = segmenting.segment_images(
            self.context.models,
            inputs,
            class_names,
            max_pixels=self.context.max_pixels,
            progress=report,
        )
        state = {"outcomes": outcomes, "class_names": class_names, "selected": 0}
        views = list(self.context.models.views)
        view = view if view in views else views[-1]
        return (state, gr.update(choices=views, value=view), *self.show(state, view))

    def show(self, state: dict[str, Any] | None, view: str) -> tuple[Any, ...]:
        """The selected result in ``view``: overlay + legend, areas, gallery, files, notes."""
        if not state or not state.get("outcomes"):
            return None, None, [], None, "", ""
        outcomes = state["outcomes"]
        names = state["class_names"]
        selected = outcomes[min(state.get("selected", 0), len(outcomes) - 1)]
        colours = segmenting.class_colours(names)
        if selected.error is None:
            result = gr.update(
                value=segmenting.annotated_view(selected, view, names),
                color_map={name: colours[name] for name in names[1:]},
                label=f"{selected.name}: {view}",
            )
            areas = segmenting.area_rows(selected, view, names)
            note = (
                f"**{selected.name}** · {view} · open mode · "
                f"{len(selected.boxes)} {selected.box_origin} box(es)"
            )
        else:
            result = gr.update(value=None, label=f"{selected.name}: error")
            areas = None
            note = f"**{selected.name}**: error: {escape(selected.error)}"
        gallery = [
            (segmenting.thumbnail(outcome, view), segmenting.caption(outcome, view, names))
            for outcome in outcomes
        ]
        folder = Path(tempfile.mkdtemp(prefix="downloads-", dir=self.context.work_dir))
        files = segmenting.write_downloads(
            outcomes, view, names, folder, models_line=self.context.models.describe()
        )
        failed = [outcome for outcome in outcomes if outcome.error is not None]
        status = f"{len(outcomes) - len(failed)} of {len(outcomes)} image(s) segmented"
        if failed:
            status += "; failed: " + "; ".join(
                f"**{outcome.name}**: {escape(outcome.error or '')}" for outcome in failed
            )
        return result, areas, gallery, [str(path) for path in files] or None, note, status

    def select_result(self, state: dict[str, Any] | None, view: str, index: int) -> tuple:
        if state and state.get("outcomes"):
            state = {**state, "selected": max(0, min(int(index), len(state["outcomes"]) - 1))}
        return (state, *self.show(state, view))

    # ================================================================== Review
    def review_folder(self, key: str) -> ReviewFolder:
        if key not in self.context.reviews:
            raise gr.Error(f"{key!r} is not one of the folders the app was started with")
        if key not in self._reviews:
            try:
                self._reviews[key] = ReviewFolder(key, data_root=self.context.data_root)
            except reviewing.ReviewError as error:
                raise gr.Error(str(error)) from None
        return self._reviews[key]

    def review_open(
        self, key: str | None, mode: str | None, sort: str | None, progress: Any = None
    ) -> tuple[Any, ...]:
        """Open a folder (and mode, sort): the order of its images, the first one shown."""
        if not key:
            return (None, gr.update(), gr.update(), "no folder to review: start the app "
                    "with --review DIR", *self._review_empty())  # fmt: skip
        folder = self.review_folder(key)
        mode = mode if mode in folder.modes else folder.modes[0]
        sort = sort if sort in reviewing.SORTS else folder.default_sort(mode)

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="scoring images")

        order = folder.order(mode, sort, report)
        state = {"folder": key, "mode": mode, "sort": sort, "order": order, "index": 0}
        return (
            state,
            gr.update(choices=folder.modes, value=mode),
            gr.update(value=sort),
            folder.describe(),
            *self.review_show(state),
        )

    def review_show(self, state: dict[str, Any] | None) -> tuple[Any, ...]:
        """Thumbnails of the page around the current image, the three views, info, flag."""
        if not state or not state.get("order"):
            return self._review_empty()
        folder = self.review_folder(state["folder"])
        mode, order, index = state["mode"], state["order"], state["index"]
        image_id = order[index]
        views = folder.views(mode, image_id)
        label, truth = _overlays(views)
        return (
            gr.update(
                value=self._thumbnails(folder, state),
                selected_index=index % THUMBNAILS_PER_PAGE,
            ),
            _enlarged(views.image),
            _enlarged(label),
            _enlarged(truth),
            self._review_info(folder, state, views),
            _legend(folder.class_names, views),
            gr.update(value="Unflag" if image_id in folder.flagged() else "Flag"),
        )

    def review_step(self, state: dict[str, Any] | None, delta: int) -> tuple[Any, ...]:
        if not state or not state.get("order"):
            return (state, *self._review_empty())
        index = (state["index"] + delta) % len(state["order"])
        state = {**state, "index": index}
        return (state, *self.review_show(state))

    def review_select(self, state: dict[str, Any] | None, position: int) -> tuple[Any, ...]:
        """A thumbnail clicked: ``position`` within the page shown."""
        if not state or not state.get("order"):
            return (state, *self._review_empty())
        start = state["index"] // THUMBNAILS_PER_PAGE * THUMBNAILS_PER_PAGE
        index = min(start + int(position), len(state["order"]) - 1)
        state = {**state, "index": index}
        return (state, *self.review_show(state))

    def review_flag(self, state: dict[str, Any] | None) -> tuple[Any, ...]:
        """Flag the current image (append it to flagged.txt), or unflag a flagged one."""
        if not state or not state.get("order"):
            raise gr.Error("no image to flag")
        folder = self.review_folder(state["folder"])
        image_id = state["order"][state["index"]]
        if image_id in folder.flagged():
            folder.unflag(state["mode"], image_id)
        else:
            folder.flag(state["mode"], image_id)
        return (state, *self.review_show(state))

    def _thumbnails(self, folder: ReviewFolder, state: dict[str, Any]) -> list:
        from PIL import Image

        mode, order = state["mode"], state["order"]
        start = state["index"] // THUMBNAILS_PER_PAGE * THUMBNAILS_PER_PAGE
        flagged = set(folder.flagged())
        ious = folder.ious(mode) if state["sort"] == reviewing.SORTS[0] else {}
        confidences = folder.confidences(mode) if state["sort"] == reviewing.SORTS[1] else {}
        items = []
        for image_id in order[start : start + THUMBNAILS_PER_PAGE]:
            views = folder.views(mode, image_id)
            picture = Image.fromarray(_overlays(views)[0])
            picture.thumbnail((REVIEW_THUMBNAIL, REVIEW_THUMBNAIL))
            score = ious.get(image_id) if ious else confidences.get(image_id)
            text = image_id if score is None else f"{100 * score:.0f}% · {image_id}"
            items.append((np.asarray(picture), ("⚑ " if image_id in flagged else "") + text))
        return items

    def _review_info(self, folder: ReviewFolder, state: dict[str, Any], views: Any) -> str:
        mode, image_id = state["mode"], views.image_id
        iou = folder.ious(mode).get(image_id) if state["sort"] == reviewing.SORTS[0] else None
        confidence = None
        if state["sort"] == reviewing.SORTS[1]:
            confidence = folder.confidences(mode).get(image_id)
        parts = [
            f"**{image_id}**",
            f"{state['index'] + 1} of {len(state['order'])}",
            f"{mode} mode",
        ]
        if iou is not None:
            parts.append(f"IoU {100 * iou:.1f}%")
        if confidence is not None:
            parts.append(f"confidence {100 * confidence:.1f}%")
        if image_id in folder.flagged():
            parts.append(f"flagged (in {folder.flagged_file.name})")
        if views.note:
            parts.append(escape(views.note))
        return " · ".join(parts)

    @staticmethod
    def _review_empty() -> tuple[Any, ...]:
        return [], None, None, None, "", "", gr.update(value="Flag")

    # ================================================================== Run
    def run_folder(self, key: str) -> RunFolder:
        if key not in self.context.runs:
            raise gr.Error(f"{key!r} is not one of the run folders the app was started with")
        if key not in self._runs:
            try:
                self._runs[key] = RunFolder(key)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        return self._runs[key]

    def run_open(self, key: str | None) -> tuple[Any, ...]:
        """A run's summary, loss and mIoU curves, and its best validation's details."""
        import pandas as pd

        if not key:
            empty = pd.DataFrame({"step": [], "value": [], "term": []})
            return ("no run folder: start the app with --run RUN (or --adapter RUN/best)",
                    empty, None, gr.update(choices=[], value=None), None, None)  # fmt: skip
        run = self.run_folder(key)
        losses = pd.DataFrame(run.loss_points(), columns=["step", "term", "value"])
        mious = pd.DataFrame(run.miou_points(), columns=["step", "mode", "mIoU"])
        epochs = [entry["epoch"] for entry in run.validations()]
        best = run.best_epoch()
        bars, confusion = self.run_validation(key, best, "label-guided")
        choices = [(f"epoch {e}" + (" (best)" if e == best else ""), e) for e in epochs]
        return (
            run.summary(),
            losses,
            mious if len(mious) else None,
            gr.update(choices=choices, value=best),
            bars,
            confusion,
        )

    def run_validation(self, key: str | None, epoch: int | None, mode: str) -> tuple[Any, Any]:
        """Per-class IoU bars and the confusion matrix of one validation, in one mode."""
        import pandas as pd

        if not key or epoch is None:
            return None, None
        run = self.run_folder(key)
        try:
            rows = run.per_class_iou(int(epoch), mode)
            bars = pd.DataFrame(rows, columns=["class", "IoU"])
            figure = Path(tempfile.mkdtemp(prefix="figure-", dir=self.context.work_dir))
            confusion = run.confusion_figure(int(epoch), mode, figure / "confusion_matrix.png")
        except ValueError as error:
            raise gr.Error(str(error)) from None
        return gr.update(value=bars, sort=[row["class"] for row in rows]), str(confusion)

    # ================================================================== the page
    def build(self) -> Any:
        """The ``gr.Blocks`` page (not launched)."""
        from gradio_image_annotation import image_annotator

        context = self.context
        names = ("background", *context.class_names)
        colours = segmenting.class_colours(names)
        with gr.Blocks(
            title=context.title, analytics_enabled=False, delete_cache=(3600, 86400)
        ) as page:
            gr.Markdown(f"## co2sam\n{escape(context.models.describe())}", elem_id="header")
            with gr.Tabs():
                with gr.Tab("Segment", id="segment", elem_id="tab-segment"):
                    segment_state = gr.State(None)
                    with gr.Row():
                        with gr.Column(scale=1):
                            classes = gr.Textbox(
                                value=", ".join(context.class_names),
                                label="Class names (comma-separated)",
                                placeholder="cat, dog",
                                elem_id="classes",
                            )
                            preset = gr.Dropdown(
                                choices=list(context.class_presets),
                                value=None,
                                label="… or the class names of a dataset",
                                elem_id="class-presets",
                            )
                            drawing = image_annotator(
                                label=_drawing_label(context.class_names),
                                label_list=list(context.class_names),
                                label_colors=[colours[n] for n in context.class_names],
                                use_default_label=True,
                                sources=["upload"],
                                image_type="filepath",
                                show_share_button=False,
                                height=420,
                                elem_id="annot",
                            )
                            if context.examples:
                                example = gr.Dropdown(
                                    choices=[Path(e["image"]).stem for e in context.examples],
                                    value=None,
                                    label="Demo images (with the simulated detector's boxes)",
                                    elem_id="examples",
                                )
                            batch = gr.File(
                                file_count="multiple",
                                file_types=["image"],
                                label="More images (boxes from the detector)",
                                elem_id="batch",
                            )
                            run_button = gr.Button(
                                "Segment", variant="primary", elem_id="segment-btn"
                            )
                            gr.Markdown(
                                "Open mode: every box counts. Images without drawn boxes take "
                                "the detector's (start the app with `--detector`).",
                                elem_id="segment-help",
                            )
                        with gr.Column(scale=1):
                            views = list(context.models.views)
                            view = gr.Radio(
                                choices=views,
                                value=ADAPTED if ADAPTED in views else views[0],
                                label="Model (same boxes): before / after adaptation",
                                elem_id="view",
                            )
                            result = gr.AnnotatedImage(
                                label="Result", color_map=None, elem_id="result"
                            )
                            note = gr.Markdown(elem_id="result-note")
                            areas = gr.Dataframe(
                                headers=["class", "pixels", "% of image"],
                                label="Per-class areas",
                                interactive=False,
                                elem_id="areas",
                            )
                            downloads = gr.File(
                                label="Label PNGs (VOC palette) and JSON",
                                file_count="multiple",
                                interactive=False,
                                elem_id="downloads",
                            )
                    status = gr.Markdown(elem_id="seg-status")
                    gallery = gr.Gallery(
                        label="All results (click one to show it above)",
                        columns=8,
                        fit_columns=False,
                        height=240,
                        object_fit="contain",
                        allow_preview=False,
                        elem_id="results",
                    )

                with gr.Tab("Review", id="review", elem_id="tab-review"):
                    review_state = gr.State(None)
                    with gr.Row():
                        folder = gr.Dropdown(
                            choices=[(short_path(f), f) for f in context.reviews],
                            value=context.reviews[0] if context.reviews else None,
                            label="Pseudo-label or evaluation folder",
                            elem_id="review-folder",
                            scale=3,
                        )
                        mode = gr.Radio(choices=[], label="Mode", elem_id="review-mode", scale=1)
                        sort = gr.Radio(
                            choices=list(reviewing.SORTS),
                            label="Sort",
                            elem_id="review-sort",
                            scale=2,
                        )
                    about = gr.Markdown(elem_id="review-about")
                    thumbs = gr.Gallery(
                        label="Images (a page of the sorted list; click one to show it)",
                        columns=12,
                        fit_columns=False,
                        height=260,
                        object_fit="contain",
                        allow_preview=False,
                        elem_id="review-thumbs",
                    )
                    with gr.Row():
                        image = gr.Image(
                            label="image", interactive=False, height=360, elem_id="review-image"
                        )
                        label = gr.Image(
                            label="label (folder)",
                            interactive=False,
                            height=360,
                            elem_id="review-label",
                        )
                        truth = gr.Image(
                            label="ground truth",
                            interactive=False,
                            height=360,
                            elem_id="review-truth",
                        )
                    info = gr.Markdown(elem_id="review-info")
                    legend = gr.HTML(elem_id="review-legend")
                    with gr.Row():
                        previous = gr.Button("◀ Previous (←)", elem_id="review-prev")
                        following = gr.Button("Next (→) ▶", elem_id="review-next")
                        flag = gr.Button("Flag", variant="stop", elem_id="review-flag")
                    gr.Markdown(
                        "Keys: ← / → (or k / j) previous / next, f flag. Flagged ids go to "
                        "`flagged.txt` in the folder: `co2sam train --exclude` leaves them out.",
                        elem_id="review-help",
                    )

                with gr.Tab("Run", id="run", elem_id="tab-run"):
                    run = gr.Dropdown(
                        choices=[(short_path(f), f) for f in context.runs],
                        value=context.runs[0] if context.runs else None,
                        label="Training run folder",
                        elem_id="run-folder",
                    )
                    summary = gr.Markdown(elem_id="run-summary")
                    with gr.Row():
                        losses = gr.LinePlot(
                            x="step",
                            y="value",
                            color="term",
                            title="Loss terms",
                            height=320,
                            elem_id="loss-plot",
                        )
                        mious = gr.LinePlot(
                            x="step",
                            y="mIoU",
                            color="mode",
                            title="Validation mIoU (%)",
                            y_lim=[0, 100],
                            height=320,
                            elem_id="miou-plot",
                        )
                    with gr.Row():
                        epoch = gr.Dropdown(choices=[], label="Validation", elem_id="run-epoch")
                        run_mode = gr.Radio(
                            choices=["label-guided", "open"],
                            value="label-guided",
                            label="Mode",
                            elem_id="run-mode",
                        )
                    with gr.Row():
                        bars = gr.BarPlot(
                            x="class",
                            y="IoU",
                            title="Per-class IoU (%)",
                            y_lim=[0, 100],
                            height=320,
                            elem_id="iou-bars",
                        )
                        confusion = gr.Image(
                            label="Confusion matrix (rows: ground truth)",
                            interactive=False,
                            elem_id="confusion",
                        )

            # ---------------------------------------------------------- Segment events
            shown = [result, areas, gallery, downloads, note, status]
            classes.change(self.on_classes, classes, drawing)
            preset.change(self.on_preset, preset, classes)
            if context.examples:
                example.change(self.on_example, example, [drawing, classes])

            def segment(drawing_value, batch_value, text, chosen, progress=gr.Progress()):
                return self.segment(drawing_value, batch_value, text, chosen, progress)

            run_button.click(
                segment, [drawing, batch, classes, view], [segment_state, view, *shown]
            )
            view.change(self.show, [segment_state, view], shown)

            def select_result(state, chosen, event: gr.SelectData):
                return self.select_result(state, chosen, event.index)

            gallery.select(select_result, [segment_state, view], [segment_state, *shown])

            # ---------------------------------------------------------- Review events
            shown_review = [thumbs, image, label, truth, info, legend, flag]

            def open_review(key, chosen_mode, chosen_sort, progress=gr.Progress()):
                return self.review_open(key, chosen_mode, chosen_sort, progress)

            opened = [review_state, mode, sort, about, *shown_review]
            folder.change(lambda key: open_review(key, None, None), folder, opened)
            mode.input(open_review, [folder, mode, sort], opened)
            sort.input(open_review, [folder, mode, sort], opened)
            previous.click(
                lambda state: self.review_step(state, -1),
                review_state,
                [review_state, *shown_review],
            )
            following.click(
                lambda state: self.review_step(state, 1),
                review_state,
                [review_state, *shown_review],
            )
            flag.click(self.review_flag, review_state, [review_state, *shown_review])

            def select_thumbnail(state, event: gr.SelectData):
                return self.review_select(state, event.index)

            thumbs.select(select_thumbnail, review_state, [review_state, *shown_review])

            # ---------------------------------------------------------- Run events
            run.change(self.run_open, run, [summary, losses, mious, epoch, bars, confusion])
            epoch.input(self.run_validation, [run, epoch, run_mode], [bars, confusion])
            run_mode.input(self.run_validation, [run, epoch, run_mode], [bars, confusion])

            page.load(lambda key: open_review(key, None, None), folder, opened)
            page.load(self.run_open, run, [summary, losses, mious, epoch, bars, confusion])
        return page


def _drawing_label(names: Sequence[str]) -> str:
    """The drawing panel's title, naming the classes a new box can take."""
    return f"Image: draw boxes ({', '.join(names)})" if names else "Image: draw boxes"


def _legend(class_names: Sequence[str], views: Any) -> str:
    """Colour swatches of the classes in the label map and the ground truth."""
    from co2sam.classes import voc_palette

    present = set(np.unique(views.label).tolist())
    if views.truth is not None:
        present |= set(np.unique(views.truth).tolist())
    palette = voc_palette()
    items = []
    for index in sorted(present - {255}):
        name = class_names[index] if index < len(class_names) else f"class {index}"
        colour = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[index]))
        items.append(f'<span class="swatch" style="background:{colour}"></span>{escape(name)}')
    return "".join(items)


def _overlays(views: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The folder's label and the ground truth drawn over the image (black if it is missing)."""
    from co2sam.visualize import overlay

    base = views.image if views.image is not None else np.zeros((*views.label.shape, 3), np.uint8)
    label = overlay(base, views.label, alpha=0.6)
    return label, overlay(base, views.truth, alpha=0.6) if views.truth is not None else None


def _enlarged(image: np.ndarray | None, side: int = 360) -> np.ndarray | None:
    """Small images scaled up by a whole factor (nearest pixel) to be seen; others as they are."""
    if image is None or max(image.shape[:2]) * 2 > side:
        return image
    factor = side // max(image.shape[:2])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
