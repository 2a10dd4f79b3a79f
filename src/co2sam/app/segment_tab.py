"""The Segment tab: draw boxes (or take the detector's), segment, compare, download.

The handlers are plain methods (the unit tests call them without a browser); the work
itself is in :mod:`co2sam.app.segment`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from co2sam.app import segment as segmenting
from co2sam.app.gradio_env import import_gradio
from co2sam.app.models import ADAPTED, SEGMENTER

gr = import_gradio()


class SegmentTab:
    """Handlers and components of the Segment tab (``context``: an ``AppContext``)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    # ------------------------------------------------------------------ handlers
    def class_list(self, text: str) -> tuple[str, ...]:
        """The typed class names (background first); none are needed with the segmenter."""
        box_free = bool(self.context.models.box_free_views())
        try:
            return segmenting.parse_class_names(text, allow_empty=box_free)
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
            label=drawing_label(names),
        )

    def on_preset(self, preset: str) -> str:
        return ", ".join(self.context.class_presets.get(preset, ()))

    def on_example(self, name: str) -> tuple[Any, Any]:
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
        typed = self.class_list(class_text)
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

        models = self.context.models
        try:
            outcomes = segmenting.segment_images(
                models, inputs, typed, max_pixels=self.context.max_pixels, progress=report
            )
        except segmenting.SegmentError as error:
            raise gr.Error(str(error)) from None
        class_names, shown = models.class_lists(typed)
        state = {"outcomes": outcomes, "class_names": class_names, "shown": shown, "selected": 0}
        views = list(models.views)
        view = view if view in views else default_view(views)
        return (state, gr.update(choices=views, value=view), *self.show(state, view))

    def show(self, state: dict[str, Any] | None, view: str) -> tuple[Any, ...]:
        """The selected result in ``view``: overlay + legend, areas, gallery, files, notes."""
        if not state or not state.get("outcomes"):
            return None, None, [], None, "", ""
        outcomes = state["outcomes"]
        names = state["class_names"]
        shown = state.get("shown", {}).get(view)
        selected = outcomes[min(state.get("selected", 0), len(outcomes) - 1)]
        colours = segmenting.class_colours(names)
        problem = selected.problem(view)
        if problem is None:
            result = gr.update(
                value=segmenting.annotated_view(selected, view, names, shown),
                color_map={name: colours[name] for name in names[1:]},
                label=f"{selected.name}: {view}",
            )
            areas = segmenting.area_rows(selected, view, names, shown)
            used = (
                "no boxes, no class names (the segmenter takes none)"
                if view in selected.box_free
                else f"{len(selected.boxes)} {selected.box_origin} box(es)"
            )
            note = f"**{selected.name}** · {view} · open mode · {used}"
        else:
            result = gr.update(value=None, label=f"{selected.name}: error")
            areas = None
            note = f"**{selected.name}**: error: {escape(problem)}"
        gallery = [
            (segmenting.thumbnail(outcome, view), segmenting.caption(outcome, view, names, shown))
            for outcome in outcomes
        ]
        folder = Path(tempfile.mkdtemp(prefix="downloads-", dir=self.context.work_dir))
        files = segmenting.write_downloads(
            outcomes, view, names, folder, models_line=self.context.models.describe()
        )
        failed = [outcome for outcome in outcomes if outcome.problem(view) is not None]
        status = f"{len(outcomes) - len(failed)} of {len(outcomes)} image(s) segmented ({view})"
        if failed:
            status += "; failed: " + "; ".join(
                f"**{outcome.name}**: {escape(outcome.problem(view) or '')}" for outcome in failed
            )
        return result, areas, gallery, [str(path) for path in files] or None, note, status

    def select_result(self, state: dict[str, Any] | None, view: str, index: int) -> tuple:
        """A result thumbnail clicked: show that image above."""
        if state and state.get("outcomes"):
            state = {**state, "selected": max(0, min(int(index), len(state["outcomes"]) - 1))}
        return (state, *self.show(state, view))

    # ------------------------------------------------------------------ components
    def build(self) -> None:
        """The tab's components and events (inside a ``gr.Blocks`` and a ``gr.Tab``)."""
        from gradio_image_annotation import image_annotator

        context = self.context
        colours = segmenting.class_colours(("background", *context.class_names))
        state = gr.State(None)
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
                    label=drawing_label(context.class_names),
                    label_list=list(context.class_names),
                    label_colors=[colours[n] for n in context.class_names],
                    use_default_label=True,
                    sources=["upload"],
                    image_type="filepath",
                    show_share_button=False,
                    height=420,
                    elem_id="annot",
                )
                example = None
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
                button = gr.Button("Segment", variant="primary", elem_id="segment-btn")
                help_text = (
                    "Open mode: every box counts. Images without drawn boxes take the "
                    "detector's (start the app with `--detector`)."
                )
                if SEGMENTER in context.models.views:
                    help_text += (
                        " The distilled segmenter needs no boxes and no class names: it "
                        "segments every image into its own classes."
                    )
                gr.Markdown(help_text, elem_id="segment-help")
            with gr.Column(scale=1):
                views = list(context.models.views)
                view = gr.Radio(
                    choices=views,
                    value=default_view(views),
                    label=view_switch_label(views),
                    elem_id="view",
                )
                # PNG, not Gradio's default WebP: lossless (the image as segmented, boxes
                # drawn only where a view used them) and no 16,383-pixel side limit
                result = gr.AnnotatedImage(label="Result", format="png", elem_id="result")
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

        shown = [result, areas, gallery, downloads, note, status]
        classes.change(self.on_classes, classes, drawing)
        preset.change(self.on_preset, preset, classes)
        if example is not None:
            example.change(self.on_example, example, [drawing, classes])

        def segment(drawing_value, batch_value, text, chosen, progress=gr.Progress()):
            return self.segment(drawing_value, batch_value, text, chosen, progress)

        def select(current, chosen, event: gr.SelectData):
            return self.select_result(current, chosen, event.index)

        button.click(segment, [drawing, batch, classes, view], [state, view, *shown])
        view.change(self.show, [state, view], shown)
        gallery.select(select, [state, view], [state, *shown])


def default_view(views: Sequence[str]) -> str:
    """The view shown first: the adapted SAM when there is one."""
    return ADAPTED if ADAPTED in views else views[0]


def view_switch_label(views: Sequence[str]) -> str:
    """The model switch's title (the SAM views share the boxes; the segmenter takes none)."""
    if SEGMENTER in views:
        return "Model: before / after adaptation (same boxes), or the distilled segmenter"
    return "Model (same boxes): before / after adaptation"


def drawing_label(names: Sequence[str]) -> str:
    """The drawing panel's title, naming the classes a new box can take."""
    return f"Image: draw boxes ({', '.join(names)})" if names else "Image: draw boxes"
