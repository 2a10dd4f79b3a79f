"""The models behind the Segment tab: SAM without and with the adapter, a distilled
segmenter, and a detector.

One SAM is loaded. With an adapter (LoRA), "plain SAM" is the same model with the
adapter switched off (:meth:`co2sam.sam.Segmenter.adapters_disabled`), so the
before/after switch compares the two on the same boxes at no extra memory. The
segmenter of ``co2sam distill`` (``--segmenter``) is a third view: image in, label map
out, no boxes, no detector, no class names (open mode), in its own classes.

Each :class:`View` is a function ``(image, boxes, class_names) -> label map`` whose
label map indexes ``class_names`` (the page's list: the typed names, then the
segmenter's other classes, see :func:`merged_class_names`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from co2sam.app.paths import short_path
from co2sam.records import Boxes, Sample

PLAIN = "plain SAM"
ADAPTED = "adapted (Co2SAM)"
SEGMENTER = "distilled segmenter (no boxes)"

LabelFn = Callable[[np.ndarray, Boxes, Sequence[str]], np.ndarray]
"""(H, W, 3) uint8 image, boxes in its pixel frame (classes index the class names), the
class names (background first) -> (H, W) uint8 label map indexing those names."""


@dataclass(frozen=True)
class View:
    """One choice of the Segment tab's model switch.

    label_map: see :data:`LabelFn`.
    class_names: the classes the view can output (background first) when it has its own
        (the segmenter's); None: the class names typed on the page (SAM with boxes).
    needs_boxes: False for a view that segments an image without box prompts.
    """

    label_map: LabelFn
    class_names: tuple[str, ...] | None = None
    needs_boxes: bool = True


def class_key(name: str) -> str:
    """A class name for matching: lower case, letters and digits only
    (``"Dining table"`` and ``"diningtable"`` match)."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def merged_class_names(typed: Sequence[str], own: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """``typed`` (background first), then the classes of ``own`` lists not typed (matched
    by :func:`class_key`), in their order: one index space for every view, so a class has
    one colour and one label-PNG value whichever view shows it."""
    names = list(typed)
    keys = {class_key(name) for name in names}
    for names_of_view in own:
        for name in names_of_view[1:]:
            if class_key(name) not in keys:
                names.append(name)
                keys.add(class_key(name))
    return tuple(names)


def index_map(own: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """(len(own),) uint8: index in ``class_names`` of each of ``own`` (matched by
    :func:`class_key`); background (0) for a class not in ``class_names``."""
    where = {class_key(name): index for index, name in enumerate(class_names)}
    table = np.zeros(len(own), np.uint8)
    for index, name in enumerate(own[1:], start=1):
        table[index] = where.get(class_key(name), 0)
    return table


class AppModels:
    """The Segment tab's models (see the module docstring).

    segmenter: a :class:`co2sam.sam.Segmenter` (plain SAM, or SAM with LoRA).
    adapter: the adapter folder loaded into it, or None.
    base: the SAM it was built from (shown on the page).
    detect: ``(image, class names) -> Boxes`` (open mode: all classes at once), or None.
    distilled: a :class:`co2sam.inference.segmenter.SegmenterPredictor` (the
        :data:`SEGMENTER` view), or None; ``distilled_folder``: where it was loaded from.
    """

    def __init__(
        self,
        segmenter: Any,
        *,
        base: str,
        adapter: str | None = None,
        detect: Callable[[np.ndarray, Sequence[str]], Boxes] | None = None,
        detector_name: str | None = None,
        distilled: Any = None,
        distilled_folder: str | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.base = base
        self.adapter = adapter
        self.detect = detect
        self.detector_name = detector_name
        self.distilled = distilled
        self.distilled_folder = distilled_folder
        self.views: dict[str, View] = {PLAIN: View(self._plain)}
        if adapter is not None:
            self.views[ADAPTED] = View(self._adapted)
        if distilled is not None:
            own = tuple(distilled.model.class_names)
            self.views[SEGMENTER] = View(self._distilled, class_names=own, needs_boxes=False)

    @classmethod
    def load(
        cls,
        *,
        sam: str | None,
        adapter: str | None,
        device: str = "auto",
        detector: str | None = None,
        prompt_config: Any = None,
        segmenter: str | None = None,
    ) -> AppModels:
        """SAM (``sam``, else the adapter's base, else the demo SAM) with the adapter.

        detector: a Grounding DINO hub id or folder, loaded on first use per class list.
        prompt_config: a :class:`co2sam.config.Co2SamConfig` for the detector's thresholds.
        segmenter: a ``co2sam distill`` segmenter folder (``RUN/best``), or None.
        """
        from co2sam.inference.segmenter import load_segmenter_predictor
        from co2sam.sam import load_adapter, load_sam, segmenter_for

        if adapter is not None:
            model = load_adapter(sam, adapter)
            base = sam or _adapter_base(adapter)
        else:
            base = sam or "demo"
            model = load_sam(base)
        sam_model = segmenter_for(model).to(_device(device)).eval()
        detect = None
        if detector is not None:
            detect = DetectorCache(detector, prompt_config)
        distilled = None
        if segmenter is not None:
            distilled, _ = load_segmenter_predictor(segmenter, _device(device))
        return cls(
            sam_model,
            base=base,
            adapter=adapter,
            detect=detect,
            detector_name=detector,
            distilled=distilled,
            distilled_folder=segmenter,
        )

    def box_free_views(self) -> list[str]:
        """The views that need no boxes (the segmenter's)."""
        return [name for name, view in self.views.items() if not view.needs_boxes]

    def class_lists(
        self, typed: Sequence[str]
    ) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """The page's class names for ``typed`` (background first; :func:`merged_class_names`)
        and, per view, the classes its legend and areas list (without background): the
        typed ones for SAM, the segmenter's own (spelt as on the page) for it."""
        own = [view.class_names for view in self.views.values() if view.class_names]
        names = merged_class_names(typed, own)
        shown = {}
        for name, view in self.views.items():
            if view.class_names is None:
                shown[name] = tuple(typed[1:])
            else:
                shown[name] = tuple(names[i] for i in index_map(view.class_names, names)[1:])
        return names, shown

    def label_maps(
        self,
        image: np.ndarray,
        boxes: Boxes,
        class_names: Sequence[str],
        views: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """The (H, W) uint8 label maps of one image (open mode, same boxes), indexing
        ``class_names``, of ``views`` (default: every view)."""
        names = self.views if views is None else views
        return {name: self.views[name].label_map(image, boxes, class_names) for name in names}

    def _plain(self, image: np.ndarray, boxes: Boxes, class_names: Sequence[str]) -> np.ndarray:
        with self.segmenter.adapters_disabled():
            return self._segment(image, boxes, len(class_names))

    def _adapted(self, image: np.ndarray, boxes: Boxes, class_names: Sequence[str]) -> np.ndarray:
        return self._segment(image, boxes, len(class_names))

    def _segment(self, image: np.ndarray, boxes: Boxes, num_classes: int) -> np.ndarray:
        from co2sam.predict import box_mask_logits, label_map_of

        if not len(boxes):
            return np.zeros(image.shape[:2], np.uint8)
        with torch.inference_mode():
            logits = box_mask_logits(self.segmenter, [image], [boxes])[0]
            label = label_map_of(logits, boxes, num_classes)
        return label.cpu().numpy().astype(np.uint8)

    def _distilled(self, image: np.ndarray, boxes: Boxes, class_names: Sequence[str]) -> np.ndarray:
        """The segmenter's open-mode label map (``boxes`` unused), in ``class_names``."""
        with torch.inference_mode():
            (output,) = self.distilled.predict([Sample(image, None, [], "upload")], ("open",))
        own = output.label_maps["open"].cpu().numpy()
        return index_map(self.distilled.model.class_names, class_names)[own]

    def describe(self) -> str:
        """One line for the page: which SAM, adapter, detector and segmenter are loaded."""
        parts = [f"SAM: {short_path(self.base, 1)}"]
        adapter = (
            f"adapter: {short_path(self.adapter)}" if self.adapter else "no adapter (--adapter)"
        )
        parts.append(adapter)
        parts.append(
            f"detector: {self.detector_name}" if self.detector_name else "boxes drawn by hand"
        )
        if self.distilled is not None:
            where = short_path(self.distilled_folder) if self.distilled_folder else "given"
            parts.append(f"segmenter: {where} ({self.distilled.model.architecture})")
        return " · ".join(parts)


class DetectorCache:
    """The detector (Grounding DINO, SAM 3: ``co2sam.prompts.build_prompter``) for the last
    class list asked for (loading it takes seconds)."""

    def __init__(self, detector: str, config: Any = None) -> None:
        from co2sam.config import load_config

        self.config = config if config is not None else load_config(None)
        self.config.prompts.detector = detector
        self._names: tuple[str, ...] | None = None
        self._prompter: Any = None

    def __call__(self, image: np.ndarray, class_names: Sequence[str]) -> Boxes:
        from co2sam.prompts import build_prompter

        names = tuple(class_names)
        if names != self._names:
            self._prompter = build_prompter(self.config, names)
            self._names = names
        return self._prompter(image, None).top_k(self.config.prompts.max_boxes)


def _adapter_base(adapter: str) -> str:
    from co2sam.models.adapter_io import read_adapter_metadata

    return str(read_adapter_metadata(adapter).get("base", "?"))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
