"""PASCAL VOC 2012 with the SBD augmentation (``train_aug``), and anything in its layout.

Expected layout (``data.root`` may be this folder or any folder above it; the loader
looks for ``VOC2012``/``VOCdevkit/VOC2012`` below it)::

    VOC2012/
      JPEGImages/<id>.jpg                 (.png accepted)
      SegmentationClass/<id>.png          palette PNGs, 0 background, 1..20, 255 ignore
      SegmentationClassAug/<id>.png       SBD masks (train_aug); SegmentationClass is the
                                          fallback for ids found there
      ImageSets/Segmentation/{train,val,test}.txt
      ImageSets/Segmentation/train_aug.txt   (or ImageSets/SegmentationAug/, or next to
                                          VOC2012/) with plain ids or "image mask" pairs
      classes.txt                         optional: class names, background first
                                          (generated data uses it; default VOC_CLASSES)

Splits: ``train_aug`` (10,582), ``train`` (1,464), ``val`` (1,449), ``test`` (1,456, no
masks: ``has_masks`` is False and labels are empty). Image-level labels are the classes
present in the mask (background and 255 excluded), the usual WSSS convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from co2sam.classes import VOC_CLASSES
from co2sam.data.base import SegmentationDataset, read_class_names, read_split_list
from co2sam.data.image_io import DatasetError, labels_from_mask, read_label_png

_SEARCH = ("VOC2012", "VOCdevkit/VOC2012", "VOC2012/VOC2012", "VOCdevkit/VOC2012/VOC2012")


def find_voc_root(root: str | Path) -> Path:
    """The ``VOC2012`` folder at or below ``root`` (a folder holding ``JPEGImages/``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist (set data.root / --data-root)")
    candidates = [root] + [root / sub for sub in _SEARCH]
    candidates += sorted(root.glob("*/VOCdevkit/VOC2012")) + sorted(root.glob("*/VOC2012"))
    for candidate in candidates:
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"no VOC layout under {root}: expected a VOC2012 folder holding JPEGImages/, "
        "SegmentationClass/ and ImageSets/Segmentation/ (e.g. "
        f"{root / 'VOCdevkit' / 'VOC2012'}); point data.root at it or a folder above it"
    )


def _split_file(voc_root: Path, split: str) -> Path:
    names = [f"{split}.txt"] + (["trainaug.txt"] if split == "train_aug" else [])
    folders = [
        voc_root / "ImageSets" / "Segmentation",
        voc_root / "ImageSets" / "SegmentationAug",
        voc_root,
        voc_root.parent,
    ]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(
        f"no list for split {split!r}: expected {folders[0] / names[0]} (VOC splits: "
        "train_aug, train, val, test; train_aug.txt comes with the SBD augmentation)"
    )


class VocDataset(SegmentationDataset):
    """A split of a VOC-layout dataset (see the module docstring).

    check_masks: refuse a split where only some images have masks (``check-data``
        passes False to list each missing mask instead).
    """

    labels_from_masks = True

    def __init__(self, root: str | Path, split: str, *, check_masks: bool = True) -> None:
        self.root = find_voc_root(root)
        self.split = split
        classes_file = self.root / "classes.txt"
        self.class_names = read_class_names(classes_file) if classes_file.is_file() else VOC_CLASSES
        self.split_file = _split_file(self.root, split)
        self.ids = read_split_list(self.split_file)
        if not self.ids:
            raise DatasetError(f"split list {self.split_file} is empty")
        folders = ["SegmentationClass", "SegmentationClassAug"]
        if split == "train_aug":
            folders.reverse()
        self._mask_folders = [self.root / name for name in folders if (self.root / name).is_dir()]
        found = [self._find_mask(image_id) is not None for image_id in self.ids]
        self.has_masks = any(found)
        if check_masks and self.has_masks and not all(found):
            missing = [i for i, ok in zip(self.ids, found, strict=True) if not ok]
            raise DatasetError(
                f"{len(missing)} of {len(self.ids)} images of {self.split_file} have no mask in "
                f"{' or '.join(str(f) for f in self._mask_folders)} (first: {missing[0]}); "
                "for train_aug install SBD's SegmentationClassAug into the VOC2012 folder"
            )
        if not self.has_masks and split == "train_aug":
            raise DatasetError(
                f"no masks for train_aug under {self.root}: image-level labels come from "
                "SBD's SegmentationClassAug/ (unzip SegmentationClassAug.zip into VOC2012/)"
            )
        self._labels: dict[int, list[int]] = {}

    def _find_mask(self, image_id: str) -> Path | None:
        for folder in self._mask_folders:
            path = folder / f"{image_id}.png"
            if path.is_file():
                return path
        return None

    def image_path(self, image_id: str) -> Path:
        path = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file() and (path.with_suffix(".png")).is_file():
            return path.with_suffix(".png")
        return path

    def mask_path(self, image_id: str) -> Path | None:
        if not self.has_masks:
            return None
        return self._find_mask(image_id) or self._mask_folders[0] / f"{image_id}.png"

    def image_labels(self, index: int) -> list[int]:
        if not self.has_masks:
            return []
        if index not in self._labels:
            self._labels[index] = labels_from_mask(
                read_label_png(self.mask_path(self.ids[index])), self.num_classes
            )
        return list(self._labels[index])

    def _labels_of(self, index: int, mask: np.ndarray | None) -> list[int]:
        if mask is None:
            return self.image_labels(index)
        self._labels[index] = labels_from_mask(mask, self.num_classes)
        return list(self._labels[index])
