"""The models behind the Segment tab: SAM without and with the adapter, and a detector.

One SAM is loaded. With an adapter (LoRA), "plain SAM" is the same model with the
adapter switched off (:meth:`co2sam.sam.Segmenter.adapters_disabled`), so the
before/after switch compares the two on the same boxes at no extra memory. Each view is
a function ``(image, boxes, num_classes) -> label map``; a model that needs no boxes
(the distilled segmenter of ``co2sam distill``) becomes one more entry of
:attr:`AppModels.views`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from co2sam.app.paths import short_path
from co2sam.records import Boxes

PLAIN = "plain SAM"
ADAPTED = "adapted (Co2SAM)"

LabelFn = Callable[[np.ndarray, Boxes, int], np.ndarray]
"""(H, W, 3) uint8 image, boxes in its pixel frame, number of classes -> (H, W) uint8."""


class AppModels:
    """The Segment tab's models (see the module docstring).

    segmenter: a :class:`co2sam.sam.Segmenter` (plain SAM, or SAM with LoRA).
    adapter: the adapter folder loaded into it, or None.
    base: the SAM it was built from (shown on the page).
    detect: ``(image, class names) -> Boxes`` (open mode: all classes at once), or None.
    """

    def __init__(
        self,
        segmenter: Any,
        *,
        base: str,
        adapter: str | None = None,
        detect: Callable[[np.ndarray, Sequence[str]], Boxes] | None = None,
        detector_name: str | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.base = base
        self.adapter = adapter
        self.detect = detect
        self.detector_name = detector_name
        self.views: dict[str, LabelFn] = {PLAIN: self._plain}
        if adapter is not None:
            self.views[ADAPTED] = self._adapted

    @classmethod
    def load(
        cls,
        *,
        sam: str | None,
        adapter: str | None,
        device: str = "auto",
        detector: str | None = None,
        prompt_config: Any = None,
    ) -> AppModels:
        """SAM (``sam``, else the adapter's base, else the demo SAM) with the adapter.

        detector: a Grounding DINO hub id or folder, loaded on first use per class list.
        prompt_config: a :class:`co2sam.config.Co2SamConfig` for the detector's thresholds.
        """
        from co2sam.sam import load_adapter, load_sam, segmenter_for

        if adapter is not None:
            model = load_adapter(sam, adapter)
            base = sam or _adapter_base(adapter)
        else:
            base = sam or "demo"
            model = load_sam(base)
        segmenter = segmenter_for(model).to(_device(device)).eval()
        detect = None
        if detector is not None:
            detect = DetectorCache(detector, prompt_config)
        return cls(segmenter, base=base, adapter=adapter, detect=detect, detector_name=detector)

    def label_maps(self, image: np.ndarray, boxes: Boxes, num_classes: int) -> dict[str, Any]:
        """Every view's (H, W) uint8 label map of one image (open mode, same boxes)."""
        return {name: view(image, boxes, num_classes) for name, view in self.views.items()}

    def _plain(self, image: np.ndarray, boxes: Boxes, num_classes: int) -> np.ndarray:
        with self.segmenter.adapters_disabled():
            return self._segment(image, boxes, num_classes)

    def _adapted(self, image: np.ndarray, boxes: Boxes, num_classes: int) -> np.ndarray:
        return self._segment(image, boxes, num_classes)

    def _segment(self, image: np.ndarray, boxes: Boxes, num_classes: int) -> np.ndarray:
        from co2sam.predict import box_mask_logits, label_map_of

        if not len(boxes):
            return np.zeros(image.shape[:2], np.uint8)
        with torch.inference_mode():
            logits = box_mask_logits(self.segmenter, [image], [boxes])[0]
            label = label_map_of(logits, boxes, num_classes)
        return label.cpu().numpy().astype(np.uint8)

    def describe(self) -> str:
        """One line for the page: which SAM, adapter and detector are loaded."""
        parts = [f"SAM: {short_path(self.base, 1)}"]
        adapter = (
            f"adapter: {short_path(self.adapter)}" if self.adapter else "no adapter (--adapter)"
        )
        parts.append(adapter)
        parts.append(
            f"detector: {self.detector_name}" if self.detector_name else "boxes drawn by hand"
        )
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
