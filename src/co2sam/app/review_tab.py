"""The Review tab: a pseudo-label or evaluation folder, worst images first, flagging.

The handlers are plain methods (the unit tests call them without a browser); the folder
itself is read by :class:`co2sam.app.review.ReviewFolder`. The browser sends a folder
chosen from the app's list, and positions in the list the server made: never a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

from co2sam.app import review as reviewing
from co2sam.app.gradio_env import import_gradio
from co2sam.app.paths import short_path
from co2sam.app.review import ReviewFolder

gr = import_gradio()

THUMBNAILS_PER_PAGE = 24
THUMBNAIL = 160
SHOWN_SIDE = 360


class ReviewTab:
    """Handlers and components of the Review tab (``context``: an ``AppContext``).

    The per-session state is ``{folder, mode, sort, order, index}``: the ids in the
    order shown and the position of the image shown.
    """

    def __init__(self, context: Any) -> None:
        self.context = context
        self._folders: dict[str, ReviewFolder] = {}

    def folder(self, key: str) -> ReviewFolder:
        """One of the folders the app was started with (refused otherwise)."""
        if key not in self.context.reviews:
            raise gr.Error(f"{key!r} is not one of the folders the app was started with")
        if key not in self._folders:
            try:
                self._folders[key] = ReviewFolder(key, data_root=self.context.data_root)
            except reviewing.ReviewError as error:
                raise gr.Error(str(error)) from None
        return self._folders[key]

    # ------------------------------------------------------------------ handlers
    def open(
        self, key: str | None, mode: str | None, sort: str | None, progress: Any = None
    ) -> tuple[Any, ...]:
        """Open a folder (and mode, sort): the order of its images, the first one shown."""
        if not key:
            message = "no folder to review: start the app with --review DIR"
            return (None, gr.update(), gr.update(), message, *_empty())
        folder = self.folder(key)
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
            *self.show(state),
        )

    def show(self, state: dict[str, Any] | None) -> tuple[Any, ...]:
        """Thumbnails of the page around the current image, the three views, info, flag."""
        if not state or not state.get("order"):
            return _empty()
        folder = self.folder(state["folder"])
        index = state["index"]
        image_id = state["order"][index]
        views = folder.views(state["mode"], image_id)
        label, truth = _overlays(views)
        return (
            gr.update(
                value=self._thumbnails(folder, state), selected_index=index % THUMBNAILS_PER_PAGE
            ),
            _enlarged(views.image),
            _enlarged(label),
            _enlarged(truth),
            self._info(folder, state, views),
            _legend(folder.class_names, views),
            gr.update(value="Unflag" if image_id in folder.flagged() else "Flag"),
        )

    def step(self, state: dict[str, Any] | None, delta: int) -> tuple[Any, ...]:
        """The next (``delta`` 1) or previous (-1) image, wrapping around."""
        if not state or not state.get("order"):
            return (state, *_empty())
        state = {**state, "index": (state["index"] + delta) % len(state["order"])}
        return (state, *self.show(state))

    def select(self, state: dict[str, Any] | None, position: int) -> tuple[Any, ...]:
        """A thumbnail clicked: ``position`` within the page shown."""
        if not state or not state.get("order"):
            return (state, *_empty())
        start = state["index"] // THUMBNAILS_PER_PAGE * THUMBNAILS_PER_PAGE
        state = {**state, "index": min(start + int(position), len(state["order"]) - 1)}
        return (state, *self.show(state))

    def flag(self, state: dict[str, Any] | None) -> tuple[Any, ...]:
        """Flag the current image (append it to flagged.txt), or unflag a flagged one."""
        if not state or not state.get("order"):
            raise gr.Error("no image to flag")
        folder = self.folder(state["folder"])
        image_id = state["order"][state["index"]]
        if image_id in folder.flagged():
            folder.unflag(state["mode"], image_id)
        else:
            folder.flag(state["mode"], image_id)
        return (state, *self.show(state))

    def _thumbnails(self, folder: ReviewFolder, state: dict[str, Any]) -> list:
        from PIL import Image

        mode, order = state["mode"], state["order"]
        start = state["index"] // THUMBNAILS_PER_PAGE * THUMBNAILS_PER_PAGE
        flagged = set(folder.flagged())
        scores = _scores(folder, state)
        items = []
        for image_id in order[start : start + THUMBNAILS_PER_PAGE]:
            picture = Image.fromarray(_overlays(folder.views(mode, image_id))[0])
            picture.thumbnail((THUMBNAIL, THUMBNAIL))
            score = scores.get(image_id)
            text = image_id if score is None else f"{100 * score:.0f}% · {image_id}"
            items.append((np.asarray(picture), ("⚑ " if image_id in flagged else "") + text))
        return items

    def _info(self, folder: ReviewFolder, state: dict[str, Any], views: Any) -> str:
        image_id = views.image_id
        parts = [
            f"**{image_id}**",
            f"{state['index'] + 1} of {len(state['order'])}",
            f"{state['mode']} mode",
        ]
        score = _scores(folder, state).get(image_id)
        if score is not None:
            what = "IoU" if state["sort"] == reviewing.SORTS[0] else "confidence"
            parts.append(f"{what} {100 * score:.1f}%")
        if image_id in folder.flagged():
            parts.append(f"flagged (in {folder.flagged_file.name})")
        if views.note:
            parts.append(escape(views.note))
        return " · ".join(parts)

    # ------------------------------------------------------------------ components
    def build(self, page: Any) -> None:
        """The tab's components and events; ``page`` (the ``gr.Blocks``) opens the first
        folder when the page loads."""
        state = gr.State(None)
        with gr.Row():
            folder = gr.Dropdown(
                choices=[(short_path(f), f) for f in self.context.reviews],
                value=self.context.reviews[0] if self.context.reviews else None,
                label="Pseudo-label or evaluation folder",
                elem_id="review-folder",
                scale=3,
            )
            mode = gr.Radio(choices=[], label="Mode", elem_id="review-mode", scale=1)
            sort = gr.Radio(
                choices=list(reviewing.SORTS), label="Sort", elem_id="review-sort", scale=2
            )
        about = gr.Markdown(elem_id="review-about")
        thumbs = gr.Gallery(
            label="Images (a page of the sorted list; click one to show it)",
            columns=12,
            fit_columns=False,
            height=210,
            object_fit="contain",
            allow_preview=False,
            elem_id="review-thumbs",
        )
        with gr.Row():
            image, label, truth = (
                gr.Image(label=title, interactive=False, height=SHOWN_SIDE, elem_id=elem_id)
                for title, elem_id in (
                    ("image", "review-image"),
                    ("label (folder)", "review-label"),
                    ("ground truth", "review-truth"),
                )
            )
        info = gr.Markdown(elem_id="review-info")
        legend = gr.HTML(elem_id="review-legend")
        with gr.Row():
            previous = gr.Button("◀ Previous (←)", elem_id="review-prev")
            following = gr.Button("Next (→) ▶", elem_id="review-next")
            flag = gr.Button("Flag", variant="stop", elem_id="review-flag")
        gr.Markdown(
            "Keys: ← / → (or k / j) previous / next, f flag. Flagged ids go to `flagged.txt` "
            "in the folder: `co2sam train --exclude` and `co2sam distill --exclude` leave "
            "them out.",
            elem_id="review-help",
        )

        shown = [thumbs, image, label, truth, info, legend, flag]
        opened = [state, mode, sort, about, *shown]

        def open_folder(key, chosen_mode, chosen_sort, progress=gr.Progress()):
            return self.open(key, chosen_mode, chosen_sort, progress)

        def first(key, progress=gr.Progress()):
            return self.open(key, None, None, progress)

        def select(current, event: gr.SelectData):
            return self.select(current, event.index)

        folder.change(first, folder, opened)
        mode.input(open_folder, [folder, mode, sort], opened)
        sort.input(open_folder, [folder, mode, sort], opened)
        previous.click(lambda current: self.step(current, -1), state, [state, *shown])
        following.click(lambda current: self.step(current, 1), state, [state, *shown])
        flag.click(self.flag, state, [state, *shown])
        thumbs.select(select, state, [state, *shown])
        page.load(first, folder, opened)


def _scores(folder: ReviewFolder, state: dict[str, Any]) -> dict[str, float | None]:
    """The scores the images are sorted by (none when sorted by id)."""
    if state["sort"] == reviewing.SORTS[0]:
        return folder.ious(state["mode"])
    if state["sort"] == reviewing.SORTS[1]:
        return folder.confidences(state["mode"])
    return {}


def _empty() -> tuple[Any, ...]:
    return [], None, None, None, "", "", gr.update(value="Flag")


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


def _enlarged(image: np.ndarray | None, side: int = SHOWN_SIDE) -> np.ndarray | None:
    """Small images scaled up by a whole factor (nearest pixel) to be seen; others as they are."""
    if image is None or max(image.shape[:2]) * 2 > side:
        return image
    factor = side // max(image.shape[:2])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
