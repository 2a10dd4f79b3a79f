"""The demo's simulated detector: ground-truth boxes degraded like a real detector's output.

A real run asks Grounding DINO for boxes of each class name; the demo has no detector,
so it reads the exact boxes off the ground-truth instance masks
(:func:`co2sam.prompts.oracle_boxes`) and degrades them with
:func:`co2sam.prompts.perturb_boxes`: jittered corners, missed objects and false boxes
with low confidence. Clean oracle boxes are never used for training or evaluation.

- training (``per-class`` queries, as in Co2SAM): false boxes carry one of the image's
  own labels, since the detector is asked only for the labelled classes;
- evaluation (``all`` classes queried at once, as at test time): false boxes carry any
  class, so open mode pays for them and label-guided mode filters them out.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
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
    false_rate: float = 0.3
    seed: int = 0


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
            labels=list(labels),
        )
    return BoxTable(table)
