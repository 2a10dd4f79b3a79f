"""The dataset interface shared by the VOC, COCO and folder loaders.

A :class:`SegmentationDataset` is a torch ``Dataset`` of :class:`co2sam.records.Sample`
(image (H, W, 3) uint8 RGB at the original resolution, mask (H, W) uint8 or None,
sorted image-level labels in 1..C, id). Subclasses only say where files are and where
image-level labels come from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from co2sam.data.image_io import DatasetError, MaskError, read_image, read_label_png
from co2sam.records import Sample


class SegmentationDataset(Dataset):
    """Images of one split with image-level labels and (optionally) masks.

    Attributes:
        class_names: class names, background first (index 0).
        ids: image ids in split order.
        has_masks: whether ground-truth masks exist for this split.
        root: the dataset folder the files were found in.
        split: the split name.
        labels_from_masks: whether image-level labels are read off the masks (VOC).
    """

    class_names: tuple[str, ...]
    ids: list[str]
    has_masks: bool
    root: Path
    split: str
    labels_from_masks: bool = False
    """True when image-level labels are read off the masks (VOC), not from a file."""

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def image_path(self, image_id: str) -> Path:
        """Path of the image file of ``image_id``."""
        raise NotImplementedError

    def mask_path(self, image_id: str) -> Path | None:
        """Path of the mask PNG of ``image_id`` (None when the split has no masks)."""
        raise NotImplementedError

    def image_labels(self, index: int) -> list[int]:
        """Sorted image-level labels (1..C) of item ``index``, without reading the image."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def sample(self, index: int, *, mask: bool = True) -> Sample:
        """Item ``index``; ``mask`` False leaves the mask unread (``Sample.mask`` None).

        Raises :class:`DatasetError` naming the file (:class:`MaskError` for the mask).
        """
        image_id = self.ids[index]
        image = read_image(self.image_path(image_id))
        values = self.read_mask(image_id) if mask else None
        if values is not None and values.shape != image.shape[:2]:
            raise MaskError(
                f"mask {self.mask_path(image_id)} is {values.shape[1]}x{values.shape[0]} but "
                f"image {self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} "
                "(W x H); re-create the mask at the image size (run `co2sam check-data`)",
                self.mask_path(image_id),
            )
        return Sample(image=image, mask=values, labels=self._labels_of(index, values), id=image_id)

    def _labels_of(self, index: int, mask: np.ndarray | None) -> list[int]:
        """Labels of item ``index`` given its already-read mask (loaders may reuse it)."""
        return self.image_labels(index)

    def read_mask(self, image_id: str) -> np.ndarray | None:
        """(H, W) uint8 class indices of ``image_id``, or None without masks."""
        path = self.mask_path(image_id) if self.has_masks else None
        return None if path is None else read_label_png(path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, masks={self.has_masks}, root={str(self.root)!r})"
        )


def read_split_list(path: Path) -> list[str]:
    """Image ids of a split list: one id per line, or ``image-path mask-path`` pairs.

    Pair lines (the SBD ``train_aug.txt`` format, e.g. ``/JPEGImages/2007_000032.jpg
    /SegmentationClassAug/2007_000032.png``) give the id as the image file's stem.
    Blank lines are skipped; ids keep the file's order, duplicates dropped.
    """
    if not path.is_file():
        raise DatasetError(f"split list not found: {path}")
    ids: list[str] = []
    seen: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        image_id = Path(line.split()[0]).stem
        if image_id not in seen:
            seen.add(image_id)
            ids.append(image_id)
    return ids


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` (one per line).

    If the first name is not ``background`` (any case), background is inserted at index 0,
    so the file's names become classes 1..C.
    """
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path} lists no classes (write one class name per line)")
    if names[0].lower() != "background":
        names.insert(0, "background")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{path} lists {', '.join(duplicates)} more than once")
    return tuple(names)
