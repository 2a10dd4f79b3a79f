"""Scan a dataset for problems without training (``co2sam check-data``).

Levels:
- ``error``: the loaders would fail or give wrong data: missing / unreadable image,
  missing / unreadable / colour (RGB) mask, mask values outside 0..C-1 and 255,
  image/mask size mismatch.
- ``warning``: loads, but probably not what you meant: empty image-level label set
  (the image has no object class; training gets no box prompt and skips it); an image
  listed twice in a custom folder's labels file; class names differing only in case.
- ``converted``: handled by the loaders, reported for information: grayscale, palette,
  RGBA (alpha dropped), CMYK and 16-bit images (converted to 8-bit RGB), EXIF
  orientation (applied, so the pixels match the annotations); a label matching a class
  name only when case is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from co2sam.classes import IGNORE_INDEX
from co2sam.data.base import SegmentationDataset
from co2sam.data.image_io import (
    DatasetError,
    mask_values,
    probe_image,
    read_image_with_report,
    read_label_png,
)


@dataclass
class Problem:
    """One finding of the scan."""

    level: str
    """``error``, ``warning`` or ``converted``."""
    split: str
    file: str
    problem: str
    handling: str
    image_id: str = ""
    """The dataset id of the image the file belongs to (to leave it out)."""


def open_for_check(kind: str, root: str | Path, split: str) -> SegmentationDataset:
    """The dataset of ``split``, lenient about missing masks (each is reported instead)."""
    if kind in ("voc", "synthetic"):
        from co2sam.data.voc import VocDataset

        return VocDataset(root, split, check_masks=False)
    if kind == "coco":
        from co2sam.data.coco import CocoDataset

        return CocoDataset(root, split)
    if kind == "folder":
        from co2sam.data.folder import FolderDataset

        return FolderDataset(root, split, check_masks=False)
    raise DatasetError(f"unknown dataset kind {kind!r} (voc, coco, folder)")


def available_splits(kind: str, root: str | Path) -> list[str]:
    """Every split a dataset folder defines (what ``check-data`` scans by default)."""
    if kind in ("voc", "synthetic"):
        from co2sam.data.voc import find_voc_root

        voc = find_voc_root(root)
        names = {p.stem for p in (voc / "ImageSets" / "Segmentation").glob("*.txt")}
        names |= {p.stem for p in (voc / "ImageSets" / "SegmentationAug").glob("*.txt")}
        order = ["train_aug", "train", "val", "test"]
        return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    if kind == "coco":
        meta = Path(root) / "meta.json"
        if not meta.is_file():
            raise DatasetError(f"{meta} not found: run `co2sam prepare coco` first")
        return list(json.loads(meta.read_text()).get("splits", {}))
    # a custom folder: every labelled image, then each split list (<split>.txt)
    lists = sorted(p.stem for p in Path(root).expanduser().glob("*.txt") if p.stem != "classes")
    return ["all", *lists]


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return "?"
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def scan_item(
    dataset: SegmentationDataset, index: int, *, fast: bool = False, masks: bool = True
) -> list[Problem]:
    """Problems of one item of ``dataset``.

    fast: check images with :func:`co2sam.data.image_io.probe_image` (the pre-flight of
        long commands): the same errors, without the ``converted`` notes.
    masks: False leaves the ground-truth masks unchecked (a command that does not read
        them), unless the image-level labels are read off them (VOC).
    """
    masks = masks or dataset.labels_from_masks
    problems = list(_scan_item(dataset, index, fast, masks))
    for problem in problems:
        problem.image_id = dataset.ids[index]
    return problems


def _scan_item(
    dataset: SegmentationDataset, index: int, fast: bool, masks: bool
) -> Iterator[Problem]:
    image_id = dataset.ids[index]
    split, root = dataset.split, dataset.root
    image_path = dataset.image_path(image_id)
    image_name = _relative(image_path, root)
    image_size = None
    try:
        if fast:
            image_size = probe_image(image_path)
        else:
            image, report = read_image_with_report(image_path)
            image_size = image.shape[:2]
            for found, handling in report.conversions:
                yield Problem("converted", split, image_name, found, handling)
    except DatasetError as error:
        kind = "missing image" if not image_path.is_file() else "unreadable image"
        yield Problem("error", split, image_name, kind, str(error))
    mask = None
    if dataset.has_masks and masks:
        mask_path = dataset.mask_path(image_id)
        mask_name = _relative(mask_path, root)
        try:
            mask = read_label_png(mask_path)
        except DatasetError as error:
            if mask_path is None or not mask_path.is_file():
                kind = "missing mask"
            elif "colour image" in str(error):
                kind = "colour (RGB) mask, not class indices"
            else:
                kind = "unreadable mask"
            yield Problem("error", split, mask_name, kind, str(error))
        if mask is not None:
            values = mask_values(mask)
            bad = [int(v) for v in values if v >= dataset.num_classes and v != IGNORE_INDEX]
            if bad:
                yield Problem(
                    "error",
                    split,
                    mask_name,
                    f"mask values outside 0..{dataset.num_classes - 1} and 255: {bad[:8]}",
                    "not handled: fix the mask (metrics would reject these pixels)",
                )
            if image_size is not None and mask.shape != image_size:
                yield Problem(
                    "error",
                    split,
                    mask_name,
                    f"mask {mask.shape[1]}x{mask.shape[0]} != image "
                    f"{image_size[1]}x{image_size[0]} ({image_name})",
                    "not handled: re-create the mask at the image size",
                )
    if dataset.labels_from_masks and mask is None:
        return  # no mask (VOC test, or reported above): the labels are unknown
    try:
        labels = dataset._labels_of(index, mask)  # VOC: from the mask read above
    except DatasetError as error:
        yield Problem("error", split, image_name, "labels unreadable", str(error))
        return
    if not labels:
        yield Problem(
            "warning",
            split,
            image_name,
            "empty label set (no object class)",
            "loaded; training gets no prompt and skips it",
        )


def scan_labels_file(dataset: SegmentationDataset) -> Iterator[Problem]:
    """Problems of a custom folder's labels file (repeated images, case-only names)."""
    labels_file = getattr(dataset, "labels_file", None)
    if labels_file is None:
        return
    from co2sam.data.folder import labels_file_findings

    name = _relative(labels_file, dataset.root)
    for level, problem, handling in labels_file_findings(labels_file, dataset.class_names):
        yield Problem(level, dataset.split, name, problem, handling)


def scan_dataset(
    dataset: SegmentationDataset,
    *,
    limit: int | None = None,
    indices: Sequence[int] | None = None,
    fast: bool = False,
    masks: bool = True,
    workers: int = 1,
    on_item: Callable[[], None] | None = None,
) -> list[Problem]:
    """Problems of the first ``limit`` items (all by default) of ``dataset``.

    indices: scan these items instead (in this order). workers: threads reading files
    (image decoding releases the GIL); problems come back in item order either way.
    fast, masks: as in :func:`scan_item`.
    A whole scan (no ``indices``, as ``check-data`` runs it) also checks a custom
    folder's labels file (:func:`scan_labels_file`).
    """
    problems: list[Problem] = []
    if indices is None:
        problems.extend(scan_labels_file(dataset))
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if workers <= 1:
        for index in indices:
            problems.extend(scan_item(dataset, index, fast=fast, masks=masks))
            if on_item is not None:
                on_item()
        return problems
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scan = partial(scan_item, dataset, fast=fast, masks=masks)
        for found in pool.map(scan, indices):
            problems.extend(found)
            if on_item is not None:
                on_item()
    return problems
