"""The Gradio page of ``co2sam app``: the Segment, Review and Run tabs in one ``gr.Blocks``.

Each tab is a class with plain handler methods (the unit tests call them without a
browser) and a ``build`` that makes its components and wires them
(:mod:`co2sam.app.segment_tab`, :mod:`co2sam.app.review_tab`, :mod:`co2sam.app.run_tab`).
Elements carry ``elem_id``s, which the browser tests use. The page never takes a file
path from the browser: folders are chosen from the lists the app was started with, images
by position in a list the server made, and what is shown is pixels decoded here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from co2sam.app.gradio_env import import_gradio
from co2sam.app.models import AppModels
from co2sam.app.review_tab import ReviewTab
from co2sam.app.run_tab import RunTab
from co2sam.app.segment_tab import SegmentTab

gr = import_gradio()

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
"""Review keys: ← / → (or k / j) previous / next, f flag; not while typing in a field."""

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
    """Named class lists to pick from (the adapter's data, VOC, COCO)."""
    reviews: list[str] = field(default_factory=list)
    """Folders of the Review tab (resolved paths): the only ones it reads."""
    runs: list[str] = field(default_factory=list)
    """Folders of the Run tab (resolved paths): the only ones it reads."""
    data_root: str | None = None
    max_pixels: int = 40_000_000
    examples: list[dict[str, Any]] = field(default_factory=list)
    """Demo images with their boxes, ``{"image": path, "boxes": [...]}``."""
    title: str = "co2sam"
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="co2sam-app-")))
    """Where downloads and figures are written before Gradio serves them."""


class Page:
    """The three tabs (``segment``, ``review``, ``run``) and the page that holds them."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.segment = SegmentTab(context)
        self.review = ReviewTab(context)
        self.run = RunTab(context)

    def build(self) -> Any:
        """The ``gr.Blocks`` page (not launched: :func:`co2sam.app.server.launch`)."""
        with gr.Blocks(
            title=self.context.title, analytics_enabled=False, delete_cache=(3600, 86400)
        ) as page:
            gr.Markdown(f"## co2sam\n{escape(self.context.models.describe())}", elem_id="header")
            with gr.Tabs():
                with gr.Tab("Segment", id="segment", elem_id="tab-segment"):
                    self.segment.build()
                with gr.Tab("Review", id="review", elem_id="tab-review"):
                    self.review.build(page)
                with gr.Tab("Run", id="run", elem_id="tab-run"):
                    self.run.build(page)
        return page
