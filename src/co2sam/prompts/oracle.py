"""Oracle boxes: box prompts read off ground-truth masks (debugging, upper bound).

Reports must say when numbers come from oracle boxes: caches made from them record
``origin: oracle`` in their settings.

Box convention: a box encloses whole pixels, so an object covering columns
``x0..x1`` and rows ``y0..y1`` (inclusive) gets XYXY ``(x0, y0, x1 + 1, y1 + 1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from co2sam.classes import BACKGROUND, IGNORE_INDEX
from co2sam.records import Boxes, Sample


def oracle_boxes(
    sample: Sample, instance_mask: np.ndarray | None = None, *, min_area: int = 10
) -> Boxes:
    """Boxes around the ground-truth objects of a sample, score 1.0.

    instance_mask: (H, W) integer instance ids (VOC ``SegmentationObject``: 0 background,
        255 void, 1..K instances). Each instance becomes one box, labelled with the
        most frequent class of ``sample.mask`` under it.
    Without it, each 8-connected component of each class of ``sample.mask`` becomes a
    box (touching objects of one class merge into one box).
    min_area: components / instances with fewer pixels are dropped (mask noise).
    Returns Boxes in the original image frame, ordered by class then position.
    """
    if sample.mask is None:
        raise ValueError(
            f"oracle boxes need a ground-truth mask, and image {sample.id!r} has none "
            "(use prompts.source=cache or detector for splits without masks)"
        )
    semantic = np.asarray(sample.mask)
    if instance_mask is not None:
        return _from_instances(semantic, np.asarray(instance_mask), min_area)
    return _from_components(semantic, min_area)


def dataset_instance_mask(dataset: Any, image_id: str) -> np.ndarray | None:
    """The (H, W) instance-id mask of an image, if the dataset has one.

    Uses ``dataset.instance_mask(image_id)`` when the dataset defines it, else the VOC
    layout's ``<dataset.root>/SegmentationObject/<id>.png`` when that file exists.
    """
    reader = getattr(dataset, "instance_mask", None)
    if callable(reader):
        return reader(image_id)
    root = getattr(dataset, "root", None)
    path = Path(root) / "SegmentationObject" / f"{image_id}.png" if root else None
    if path is None or not path.is_file():
        return None
    from co2sam.data.image_io import read_label_png

    return read_label_png(path)


def _from_instances(semantic: np.ndarray, instances: np.ndarray, min_area: int) -> Boxes:
    if instances.shape != semantic.shape:
        raise ValueError(
            f"instance mask {instances.shape} and class mask {semantic.shape} differ in size"
        )
    xyxy, classes = [], []
    for instance_id in np.unique(instances):
        if instance_id in (0, IGNORE_INDEX):
            continue
        inside = instances == instance_id
        if inside.sum() < min_area:
            continue
        labels = semantic[inside]
        labels = labels[(labels != BACKGROUND) & (labels != IGNORE_INDEX)]
        if labels.size == 0:
            continue
        xyxy.append(_enclosing_box(inside))
        classes.append(int(np.bincount(labels).argmax()))
    return _boxes(xyxy, classes)


def _from_components(semantic: np.ndarray, min_area: int) -> Boxes:
    xyxy, classes = [], []
    for class_index in np.unique(semantic):
        if class_index in (BACKGROUND, IGNORE_INDEX):
            continue
        binary = (semantic == class_index).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for component in range(1, count):  # 0 is the outside
            x, y, width, height, area = stats[component]
            if area < min_area:
                continue
            xyxy.append((x, y, x + width, y + height))
            classes.append(int(class_index))
    return _boxes(xyxy, classes)


def _enclosing_box(inside: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _boxes(xyxy: list, classes: list[int]) -> Boxes:
    return Boxes(np.asarray(xyxy, np.float32), np.asarray(classes), np.ones(len(classes)))
