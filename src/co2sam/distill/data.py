"""Training data of the second stage: images of a split + the pseudo-labels written for it.

The pseudo-label folder is what ``co2sam pseudo-labels`` writes (the VOC layout)::

    DIR/SegmentationClass/<id>.png   palette PNG, 0 background, 1..C, 255 ignore
    DIR/Confidence/<id>.png          8-bit grayscale, confidence x 255 (optional)

``--pseudo-labels`` may name ``DIR`` or its ``SegmentationClass`` folder.
:func:`check_pseudo_labels` reads every file once before training and refuses a
folder that does not match the split, naming the files: a missing or unreadable PNG,
a size other than its image's, a value outside 0..C-1 and 255.

:class:`PseudoLabelSet` gives ``(pixels, label)`` training crops; the augmentation of an
item depends only on ``(seed, epoch, index)`` (as in ``co2sam.train.data``), so a resumed
run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from co2sam.classes import IGNORE_INDEX
from co2sam.data.image_io import DatasetError, read_image, read_label_png
from co2sam.distill.augment import TrainAugment
from co2sam.train.data import EpochSeeded

LABEL_FOLDER = "SegmentationClass"
CONFIDENCE_FOLDER = "Confidence"
LISTED = 10
"""Problems named in the error message (the count says how many there are in all)."""


@dataclass(frozen=True)
class PseudoLabelFolder:
    """Where the pseudo-labels (and confidences) of a split are."""

    root: Path

    @classmethod
    def find(cls, path: str | Path) -> PseudoLabelFolder:
        """The folder holding ``SegmentationClass/`` at ``path`` (or ``path`` is that folder)."""
        path = Path(path).expanduser()
        if path.name == LABEL_FOLDER and path.is_dir():
            return cls(path.parent)
        if (path / LABEL_FOLDER).is_dir():
            return cls(path)
        raise DatasetError(
            f"no pseudo-labels at {path}: expected {path / LABEL_FOLDER}/<id>.png, as written "
            "by `co2sam pseudo-labels --out DIR`; pass that DIR to --pseudo-labels"
        )

    def label_path(self, image_id: str) -> Path:
        return self.root / LABEL_FOLDER / f"{image_id}.png"

    def confidence_path(self, image_id: str) -> Path:
        return self.root / CONFIDENCE_FOLDER / f"{image_id}.png"


def displayed_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as ``read_image`` returns it (EXIF rotation applied), header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
    except FileNotFoundError as error:
        raise DatasetError(f"image not found: {path}") from error
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    return height, width


def _read_confidence(path: Path) -> np.ndarray:
    """(H, W) float32 in [0, 1] from an 8-bit confidence PNG."""
    if not path.is_file():
        raise DatasetError(f"confidence not found: {path}")
    try:
        with Image.open(path) as image:
            values = np.asarray(ImageOps.grayscale(image) if image.mode != "L" else image)
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"cannot read confidence {path}: {error}") from error
    return values.astype(np.float32) / 255.0


def _problems_of(
    image_id: str,
    image_path: Path,
    folder: PseudoLabelFolder,
    num_classes: int,
    confidence: bool,
) -> list[str]:
    label_path = folder.label_path(image_id)
    if not label_path.is_file():
        return [f"{label_path}: missing"]
    try:
        label = read_label_png(label_path)
        size = displayed_size(image_path)
    except DatasetError as error:
        return [str(error)]
    problems = []
    if label.shape != size:
        problems.append(
            f"{label_path}: {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
            f"{size[1]}x{size[0]} (W x H)"
        )
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if len(bad):
        problems.append(
            f"{label_path}: values {bad.tolist()[:5]} outside 0..{num_classes - 1} and 255"
        )
    if confidence:
        path = folder.confidence_path(image_id)
        if not path.is_file():
            problems.append(f"{path}: missing (pseudo_labels.min_confidence needs it)")
        else:
            try:
                if _read_confidence(path).shape != label.shape:
                    problems.append(f"{path}: size differs from {label_path}")
            except DatasetError as error:
                problems.append(str(error))
    return problems


def check_pseudo_labels(
    dataset: Any,
    folder: PseudoLabelFolder,
    *,
    confidence: bool = False,
    ids: Sequence[str] | None = None,
    workers: int = 8,
) -> None:
    """Refuse pseudo-labels that do not match the split, naming the files.

    dataset: a SegmentationDataset (``ids``, ``image_path``, ``class_names``).
    confidence: also require a confidence PNG of the same size for every image.
    ids: check these ids only (default: all of the dataset's).
    Raises :class:`DatasetError` listing up to 10 problems and how many there are.
    """
    ids = list(dataset.ids if ids is None else ids)
    found = pseudo_label_problems(dataset, folder, confidence=confidence, ids=ids, workers=workers)
    problems = [problem for listed in found.values() for problem in listed]
    if problems:
        listed = "\n  ".join(problems[:LISTED])
        more = f"\n  ... and {len(problems) - LISTED} more" if len(problems) > LISTED else ""
        raise DatasetError(
            f"the pseudo-labels in {folder.root} do not match split {dataset.split!r} of "
            f"{dataset.root} ({len(problems)} problem(s) in {len(ids)} images):\n  {listed}"
            f"{more}\nre-run `co2sam pseudo-labels` for this split and dataset (same "
            "classes), or point --pseudo-labels at the folder it wrote"
        )


def pseudo_label_problems(
    dataset: Any,
    folder: PseudoLabelFolder,
    *,
    confidence: bool = False,
    ids: Sequence[str] | None = None,
    workers: int = 8,
) -> dict[str, list[str]]:
    """Image id -> the problems of its pseudo-label (``"<file>: <problem>"``), for the
    images with any (see :func:`check_pseudo_labels`)."""
    ids = list(dataset.ids if ids is None else ids)
    num_classes = len(dataset.class_names)

    def check(image_id: str) -> list[str]:
        return _problems_of(image_id, dataset.image_path(image_id), folder, num_classes, confidence)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = dict(zip(ids, pool.map(check, ids), strict=True))
    return {image_id: problems for image_id, problems in found.items() if problems}


class PseudoLabelSet(EpochSeeded, Dataset):
    """Training crops of a split with pseudo-labels: item -> (pixels, label).

    pixels: (3, S, S) float32 normalised; label: (S, S) int64, 255 = ignore (padding,
    the pseudo-label's own 255, and pixels below ``min_confidence``). S = crop size.
    """

    def __init__(
        self,
        dataset: Any,
        folder: PseudoLabelFolder,
        augment: TrainAugment,
        *,
        seed: int,
        min_confidence: float = 0.0,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.folder = folder
        self.augment = augment
        self.seed = int(seed)
        self.min_confidence = min_confidence
        self.ids = list(dataset.ids if ids is None else ids)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 label (low confidence set to 255)."""
        image_id = self.ids[index]
        image = read_image(self.dataset.image_path(image_id))
        label = read_label_png(self.folder.label_path(image_id))
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.folder.label_path(image_id)} is not the size of its image; run "
                "the pseudo-label check (co2sam distill does it before training)"
            )
        if self.min_confidence > 0:
            confidence = _read_confidence(self.folder.confidence_path(image_id))
            label = np.where(confidence < self.min_confidence, IGNORE_INDEX, label)
        return image, label.astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        pixels, crop = self.augment(image, label, self.sample_rng(index))
        return torch.from_numpy(pixels), torch.from_numpy(crop)
