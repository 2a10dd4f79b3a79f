"""Evaluate a segmenter on a split: boxes -> masks -> label maps -> one confusion matrix.

:func:`evaluate_model` is a plain library function: the ``evaluate`` and
``pseudo-labels`` commands call it, and so does training's per-epoch validation.
Each image is segmented once; the label map is assembled for every requested mode
from the same mask logits (SPEC.md, Inference):

- ``label-guided``: only boxes of the image's ground-truth classes (the published
  protocol, and the one for pseudo-labels);
- ``open``: every box (true test-time segmentation).

``compat="reference"`` (``eval.compat``) assembles the label maps as the published
evaluation does instead (:func:`co2sam.semantic.reference_semantic_map`); the metrics
are computed the same way in both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from co2sam.metrics import ConfusionMatrix
from co2sam.predict import autocast_context, box_mask_logits, label_map_of
from co2sam.records import Boxes, Sample

MODES = ("label-guided", "open")


@dataclass
class Prediction:
    """One image's label map in one mode, handed to ``on_prediction``.

    label_map: (H, W) int64 on the segmenter's device, original image frame.
    boxes: the image's boxes (original frame), all of them (before label filtering).
    """

    sample: Sample
    mode: str
    label_map: torch.Tensor
    boxes: Boxes


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
    compat: str = "paper",
) -> dict[str, dict[str, Any]]:
    """Segment the images of ``dataset`` and score them against their masks.

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
        compat: ``paper`` (co2sam's assembly) or ``reference`` (the published one).

    Returns:
        ``{mode: metrics}``; metrics as in :func:`co2sam.metrics.metrics_from_matrix`
        plus ``mode``, ``compat`` and ``num_images`` (images with a ground-truth mask).
        Without any mask the numbers are None.
    """
    if compat not in ("paper", "reference"):
        raise ValueError(f"compat must be paper or reference, got {compat!r}")
    frame = "resized" if compat == "reference" else "original"
    modes = tuple(modes)
    for mode in modes:
        modes_of(mode)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        segmenter.to(device)
    num_classes = len(dataset.class_names)
    confusions = {mode: ConfusionMatrix(num_classes, device=segmenter.device) for mode in modes}
    num_images = torch.zeros((), dtype=torch.int64, device=segmenter.device)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
    was_training = segmenter.training
    segmenter.eval()
    try:
        with progress_bar(progress) as bar, torch.inference_mode():
            task = bar.add_task("evaluate", total=len(dataset))
            for batch in loader:
                bar.advance(task, len(batch))
                # Placeholders of unreadable files (co2sam.data.preflight) are skipped.
                samples = [sample for sample in batch if sample.problem is None]
                if not samples:
                    continue
                boxes = [boxes_fn(sample) for sample in samples]
                with autocast_context(segmenter.device, autocast):
                    logits = box_mask_logits(
                        segmenter, [s.image for s in samples], boxes, frame=frame
                    )
                for sample, image_logits, image_boxes in zip(samples, logits, boxes, strict=True):
                    target = None
                    if sample.mask is not None:
                        target = torch.from_numpy(sample.mask).to(segmenter.device)
                        num_images += 1
                    size = sample.image.shape[:2] if compat == "reference" else None
                    for mode in modes:
                        allowed = sample.labels if mode == "label-guided" else None
                        label_map = label_map_of(
                            image_logits, image_boxes, num_classes, allowed, reference_size=size
                        )
                        if target is not None:
                            confusions[mode].update(label_map, target)
                        if on_prediction is not None:
                            on_prediction(Prediction(sample, mode, label_map, image_boxes))
    finally:
        segmenter.train(was_training)
    if reduce_across_processes:
        for confusion in confusions.values():
            confusion.all_reduce()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_images)
    return {
        mode: {
            **confusion.compute(),
            "mode": mode,
            "compat": compat,
            "num_images": int(num_images),
        }
        for mode, confusion in confusions.items()
    }


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr (a silent one when disabled)."""
    from co2sam.progress import progress_bar as make_bar

    with make_bar(enabled=enabled, transient=True) as bar:
        yield bar
