"""The demo's simulated detector: ground-truth boxes degraded like a real detector's output.

A real run asks Grounding DINO for boxes of each class name. The demo has no detector:
it reads the exact box of every ground-truth *instance mask*
(:func:`co2sam.prompts.oracle_boxes`) and degrades it with
:func:`co2sam.prompts.perturb_boxes`: jittered corners, missed objects, and false boxes
with lower confidence. The training boxes are therefore built from the target's
ground-truth instance masks, which a real weakly supervised run never sees; this is
the demo's supervision, stated in ``report.json`` (``supervision``). Clean oracle boxes
are never used for training or evaluation.

Two settings (:data:`DETECTORS`): ``default`` errs about as a good detector does;
``harder`` is worse (larger jitter, more misses, more false boxes with confidences
overlapping the true ones'). :func:`box_quality` measures how good a setting's boxes are.

- training (``per-class`` queries, as in Co2SAM): false boxes carry one of the image's
  own labels, since the detector is asked only for the labelled classes;
- evaluation (``all`` classes queried at once, as at test time): false boxes carry any
  class, so open mode pays for them and label-guided mode filters them out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from co2sam.prompts.oracle import dataset_instance_mask, oracle_boxes
from co2sam.prompts.simulate import perturb_boxes
from co2sam.records import Boxes, Sample


@dataclass
class DetectorSettings:
    """How much the simulated detector errs (see :func:`co2sam.prompts.perturb_boxes`)."""

    jitter: float = 0.08
    """Std of each box corner's displacement, as a fraction of the box side."""
    miss_rate: float = 0.1
    """Probability that an object gets no box."""
    false_rate: float = 0.3
    """False boxes per object (on average)."""
    true_score_range: tuple[float, float] = (0.5, 0.9)
    false_score_range: tuple[float, float] = (0.3, 0.5)
    seed: int = 0


DETECTORS: dict[str, DetectorSettings] = {
    "default": DetectorSettings(),
    "harder": DetectorSettings(
        jitter=0.18,
        miss_rate=0.3,
        false_rate=0.8,
        true_score_range=(0.35, 0.85),
        false_score_range=(0.3, 0.7),
    ),
}
"""The demo's detector settings by name; ``seed`` is set per run."""


def detector_settings(name: str, seed: int) -> DetectorSettings:
    """The named setting of :data:`DETECTORS` with this run's seed."""
    if name not in DETECTORS:
        raise ValueError(f"unknown simulated detector {name!r}; known: {', '.join(DETECTORS)}")
    return replace(DETECTORS[name], seed=seed)


def supervision_record(settings: DetectorSettings) -> dict[str, Any]:
    """What the demo's training and evaluation boxes are, in words and numbers."""
    return {
        "image_level_labels": "the classes present in each target training image",
        "training_boxes": (
            "simulated detector built on the target's ground-truth instance masks: the exact "
            "box of every instance, corners jittered, some objects missed, false boxes added "
            "(classes from the image's labels); no real detector is run"
        ),
        "evaluation_boxes": (
            "the same simulated detector on the validation images, false boxes of any class"
        ),
        "pixel_labels": "none used in training (masks only score the results)",
        "detector": {
            "jitter": settings.jitter,
            "miss_rate": settings.miss_rate,
            "false_rate": settings.false_rate,
            "true_score_range": list(settings.true_score_range),
            "false_score_range": list(settings.false_score_range),
            "seed": settings.seed,
        },
    }


class BoxTable:
    """``Sample -> Boxes`` from a precomputed table (picklable, for DataLoader workers)."""

    def __init__(self, boxes: dict[str, Boxes]) -> None:
        self.boxes = boxes

    def __call__(self, sample: Sample) -> Boxes:
        try:
            return self.boxes[sample.id]
        except KeyError:
            raise KeyError(f"the simulated detector has no boxes for image {sample.id!r}") from None

    def __len__(self) -> int:
        return len(self.boxes)

    def count(self) -> int:
        """Total number of boxes over all images."""
        return sum(len(boxes) for boxes in self.boxes.values())


def simulated_boxes(dataset: Any, settings: DetectorSettings, *, all_classes: bool) -> BoxTable:
    """Boxes for every image of ``dataset`` (VOC layout with instance masks).

    all_classes: False for training (false boxes take the image's labels), True for
        evaluation (false boxes take any class). Each image's boxes depend only on
        ``settings`` and the image id.
    """
    num_classes = len(dataset.class_names) - 1
    table = {}
    for index in range(len(dataset)):
        sample = dataset[index]
        exact = oracle_boxes(sample, dataset_instance_mask(dataset, sample.id))
        rng = np.random.default_rng([settings.seed, zlib.crc32(sample.id.encode())])
        labels = range(1, num_classes + 1) if all_classes else sample.labels
        table[sample.id] = perturb_boxes(
            exact,
            sample.image.shape[:2],
            rng,
            jitter=settings.jitter,
            miss_rate=settings.miss_rate,
            false_rate=settings.false_rate,
            true_score_range=settings.true_score_range,
            false_score_range=settings.false_score_range,
            labels=list(labels),
        )
    return BoxTable(table)


def box_quality(dataset: Any, table: BoxTable, *, match_iou: float = 0.5) -> dict[str, float]:
    """How good a table's boxes are against the exact ground-truth boxes of ``dataset``.

    Returns ``recall`` (objects with a box of their class at IoU >= ``match_iou``),
    ``mean_best_iou`` (per object, the best IoU of a box of its class; 0 if none),
    ``false_per_image`` (boxes matching no object of their class at ``match_iou``) and
    ``boxes_per_image``.
    """
    objects = matched = false = total_boxes = 0
    best_ious: list[float] = []
    for index in range(len(dataset)):
        sample = dataset[index]
        exact = oracle_boxes(sample, dataset_instance_mask(dataset, sample.id))
        found = table(sample)
        ious = _pairwise_iou(exact.xyxy, found.xyxy)
        same_class = exact.classes[:, None] == found.classes[None, :]
        ious = np.where(same_class, ious, 0.0)
        best = ious.max(axis=1) if found.xyxy.size else np.zeros(len(exact))
        objects += len(exact)
        matched += int((best >= match_iou).sum())
        best_ious.extend(best.tolist())
        total_boxes += len(found)
        hits = ious.max(axis=0) if exact.xyxy.size else np.zeros(len(found))
        false += int((hits < match_iou).sum())
    images = max(len(dataset), 1)
    return {
        "recall": matched / max(objects, 1),
        "mean_best_iou": float(np.mean(best_ious)) if best_ious else 0.0,
        "false_per_image": false / images,
        "boxes_per_image": total_boxes / images,
    }


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
