"""Evaluate a predictor on a split: label maps -> one confusion matrix -> metrics.

:func:`evaluate_predictor` takes any :class:`co2sam.inference.base.Predictor` (SAM with
box prompts, or a trained segmenter alone); :func:`evaluate_model` is its SAM form,
called by the ``evaluate`` and ``pseudo-labels`` commands and by training's per-epoch
validation. Each image is segmented once; with SAM the label map is assembled for every
requested mode from the same mask logits (SPEC.md, Inference):

- ``label-guided``: only boxes of the image's ground-truth classes (the published
  protocol, and the one for pseudo-labels);
- ``open``: every box (true test-time segmentation).

``compat="reference"`` (``eval.compat``) assembles SAM's label maps as the published
evaluation does instead (:func:`co2sam.semantic.reference_semantic_map`); the metrics
are computed the same way in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from co2sam.inference.base import (
    MODES,
    autocast_context,
    check_modes,
    eval_mode,
    model_device,
    progress_bar,
)
from co2sam.inference.sam import SamPredictor
from co2sam.lifetime import WorkerGuard
from co2sam.metrics import ConfusionMatrix
from co2sam.records import Boxes, Sample

__all__ = [
    "MODES",
    "Prediction",
    "autocast_context",
    "evaluate_model",
    "evaluate_predictor",
    "modes_of",
    "progress_bar",
]


@dataclass
class Prediction:
    """One image's label map in one mode, handed to ``on_prediction``.

    label_map: (H, W) int64 on the segmenter's device, original image frame.
    boxes: the image's boxes (original frame), all of them (before label filtering);
        empty for a segmenter.
    confidence: (H, W) float32 in [0, 1] per-pixel confidence, when asked for.
    """

    sample: Sample
    mode: str
    label_map: torch.Tensor
    boxes: Boxes
    confidence: torch.Tensor | None = None


def modes_of(mode: str) -> tuple[str, ...]:
    """``both`` -> both modes; a single mode -> itself (config ``eval.mode`` values)."""
    if mode == "both":
        return MODES
    if mode not in MODES:
        raise ValueError(f"mode must be one of label-guided, open, both; got {mode!r}")
    return (mode,)


def evaluate_model(
    segmenter: Any,
    dataset: Any,
    boxes_fn: Callable[[Sample], Boxes],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_prediction: Callable[[Prediction], None] | None = None,
    autocast: bool = True,
    num_workers: int = 0,
    reduce_across_processes: bool = False,
    confidence: bool = False,
    compat: str = "paper",
) -> dict[str, dict[str, Any]]:
    """Segment the images of ``dataset`` with SAM and box prompts; score them against masks.

    Args:
        segmenter: a :class:`co2sam.sam.Segmenter` (plain SAM or with LoRA). Put in eval
            mode for the call; its training flag is restored afterwards.
        dataset: a torch Dataset of :class:`Sample` with ``class_names`` (background first);
            samples with ``problem`` set (unreadable files) are skipped.
        boxes_fn: Sample -> Boxes (XYXY, original frame), e.g. ``prompts.box_source(...)``.
        modes: any of ``label-guided`` and ``open``.
        batch_size: images encoded at once.
        device: move the segmenter there first; None keeps it where it is.
        limit: only the first ``limit`` images.
        on_prediction: called with a :class:`Prediction` per image and mode (to save PNGs).
        autocast: bf16 autocast when the segmenter is on a GPU.
        num_workers: DataLoader workers reading images.
        reduce_across_processes: with torch.distributed initialised, sum the confusion
            matrices of all processes (each must evaluate its own shard of the split, and
            every process must call this).
        confidence: also compute each pixel's confidence (``Prediction.confidence``).
        compat: ``paper`` (co2sam's assembly) or ``reference`` (the published one).

    Returns:
        ``{mode: metrics}``; metrics as in :func:`co2sam.metrics.metrics_from_matrix`
        plus ``mode``, ``compat`` and ``num_images`` (images with a ground-truth mask).
        Without any mask the numbers are None.
    """
    if device is not None:
        segmenter.to(device)
    predictor = SamPredictor(
        segmenter, boxes_fn, len(dataset.class_names), autocast=autocast, compat=compat
    )
    return evaluate_predictor(
        predictor,
        dataset,
        modes=modes,
        batch_size=batch_size,
        limit=limit,
        progress=progress,
        on_prediction=on_prediction,
        num_workers=num_workers,
        reduce_across_processes=reduce_across_processes,
        confidence=confidence,
    )


def evaluate_predictor(
    predictor: Any,
    dataset: Any,
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 4,
    limit: int | None = None,
    progress: bool = True,
    on_prediction: Callable[[Prediction], None] | None = None,
    num_workers: int = 0,
    reduce_across_processes: bool = False,
    confidence: bool = False,
) -> dict[str, dict[str, Any]]:
    """Segment the images of ``dataset`` with any predictor and score them (one matrix).

    predictor: a :class:`co2sam.inference.base.Predictor` (SAM with boxes, or a
        segmenter); its model is put in eval mode for the call.
    confidence: ask the predictor for per-pixel confidences (``Prediction.confidence``).
    Other arguments and the result as in :func:`evaluate_model`.
    """
    modes = check_modes(modes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(predictor.model)
    num_classes = len(dataset.class_names)
    confusions = {mode: ConfusionMatrix(num_classes, device=device) for mode in modes}
    num_images = torch.zeros((), dtype=torch.int64, device=device)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=list,
        # Workers die with this process (even on kill -9) and leave Ctrl-C to it.
        worker_init_fn=WorkerGuard() if num_workers > 0 else None,
    )
    with eval_mode(predictor.model), progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("evaluate", total=len(dataset))
        for batch in loader:
            bar.advance(task, len(batch))
            # Placeholders of unreadable files (co2sam.data.preflight) are skipped.
            samples = [sample for sample in batch if sample.problem is None]
            if not samples:
                continue
            outputs = predictor.predict(samples, modes, confidence=confidence)
            for sample, output in zip(samples, outputs, strict=True):
                target = None
                if sample.mask is not None:
                    target = torch.from_numpy(sample.mask).to(device)
                    num_images += 1
                for mode in modes:
                    label_map = output.label_maps[mode]
                    if target is not None:
                        confusions[mode].update(label_map, target)
                    if on_prediction is not None:
                        score = None if output.confidences is None else output.confidences[mode]
                        boxes = Boxes() if output.boxes is None else output.boxes
                        on_prediction(Prediction(sample, mode, label_map, boxes, score))
    if reduce_across_processes:
        for confusion in confusions.values():
            confusion.all_reduce()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_images)
    compat = getattr(predictor, "compat", "paper")
    return {
        mode: {
            **confusion.compute(),
            "mode": mode,
            "compat": compat,
            "num_images": int(num_images),
        }
        for mode, confusion in confusions.items()
    }
