"""The one small interface every predictor implements, and what inference loops share.

A predictor turns images into label maps. Two implementations:

- :class:`co2sam.inference.sam.SamPredictor`: box prompts -> SAM (+ LoRA) masks ->
  label map (needs a box source; label-guided and open mode from the same logits);
- :class:`co2sam.inference.segmenter.SegmenterPredictor`: a trained semantic
  segmentation network alone (no detector, no prompts; open mode, or label-guided by
  keeping only the image's classes).

Evaluation (``co2sam.evaluate``), prediction (``co2sam.predict``), pseudo-labels and
training's validation take any :class:`Predictor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from co2sam.records import Boxes, Sample

MODES = ("label-guided", "open")


@dataclass
class ImageOutput:
    """What a predictor returns for one image.

    label_maps: mode -> (H, W) int64 label map in 0..C (original image frame, the
        predictor's device).
    boxes: the image's box prompts (original frame) for SAM; None for a segmenter.
    confidences: mode -> (H, W) float32 in [0, 1], how sure the predictor is of each
        pixel's label (only when asked for).
    """

    label_maps: dict[str, torch.Tensor]
    boxes: Boxes | None = None
    confidences: dict[str, torch.Tensor] | None = None


class Predictor(Protocol):
    """Images -> label maps. ``model`` is the torch module (for eval mode and device)."""

    name: str
    """What reports say produced the label maps (e.g. ``sam`` or ``segmenter``)."""
    model: torch.nn.Module

    def predict(
        self, samples: Sequence[Sample], modes: Sequence[str], *, confidence: bool = False
    ) -> list[ImageOutput]:
        """One :class:`ImageOutput` per sample. Run under ``torch.inference_mode``.

        ``label-guided`` uses ``sample.labels`` (image-level classes); ``open`` does not.
        """
        ...


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    """The modes as a tuple; raises ValueError on anything but label-guided / open."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of label-guided, open; got {mode!r}")
    return tuple(modes)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def autocast_context(
    device: torch.device | str, enabled: bool = True
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled, otherwise nothing (CPU runs in float32)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The module in eval mode for the block; its training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr (a silent one when disabled)."""
    from co2sam.progress import progress_bar as make_bar

    with make_bar(enabled=enabled, transient=True) as bar:
        yield bar
