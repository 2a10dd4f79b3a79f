"""MS COCO 2014: render semantic masks from instance annotations, and read the result.

``co2sam prepare coco --instances instances_train2014.json --images train2014 --out DIR``
(:func:`prepare_coco`) writes::

    DIR/meta.json            format version, crowd mode, and per split: the images folder
                             (absolute path, images are not copied), the instances file,
                             the image file suffix and the counts
    DIR/classes.txt          background first; COCO's 80 names in COCO_CATEGORY_IDS order
    DIR/masks/<id>.png       palette PNGs: 0 background, 1..80, 255 ignore
    DIR/labels.json          {id: [class indices]}, all prepared splits merged
    DIR/<split>.txt          ids of the images kept (COCO image-id order)
    DIR/<split>_unannotated.txt   ids skipped: no annotation that gives a label

Ids are the image file stems (``COCO_train2014_000000000009``). Split names come from
the instances file (``instances_val2014.json`` -> ``val``) unless ``--split`` is given.

Masks: every instance is painted with pycocotools' decoded mask, in order of
*decreasing* annotated ``area`` (stable for ties), so smaller instances are drawn over
larger ones. Crowd regions (``iscrowd=1``), painted in the same order:
``ignore`` (default) paints 255, the usual WSSS choice (the region is not scored and
gives no image label); ``class`` paints the category like any instance and labels it;
``skip`` leaves the region as whatever lies under it (background).
Image-level labels are the categories of the painted non-crowd instances (plus crowd
ones with ``class``); images whose label set is empty are unannotated and skipped.
Category ids outside COCO's 80 make the classes those of the JSON, in id order.

Resumable: masks already on disk are not rendered again (files are written to a
temporary name and renamed, so a finished file is always complete). A rerun with a
different crowd mode is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.classes import COCO_CATEGORY_IDS, COCO_CLASSES, IGNORE_INDEX
from co2sam.data.base import SegmentationDataset, read_class_names, read_split_list
from co2sam.data.image_io import DatasetError, write_label_png

CROWD_MODES = ("ignore", "class", "skip")
FORMAT_VERSION = 1


def annotation_mask(annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/1 mask of one COCO annotation (polygons, RLE or compressed RLE)."""
    from pycocotools import mask as mask_utils

    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def render_semantic_mask(
    annotations: list[dict[str, Any]],
    height: int,
    width: int,
    category_to_class: dict[int, int],
    crowd: str = "ignore",
) -> np.ndarray:
    """(H, W) uint8 semantic mask: instances painted in order of decreasing ``area``."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for annotation in sorted(annotations, key=lambda a: -float(a.get("area", 0.0))):
        if annotation.get("iscrowd", 0):
            if crowd == "skip":
                continue
            value = (
                IGNORE_INDEX if crowd == "ignore" else category_to_class[annotation["category_id"]]
            )
        else:
            value = category_to_class[annotation["category_id"]]
        mask[annotation_mask(annotation, height, width) > 0] = value
    return mask


def annotation_labels(
    annotations: list[dict[str, Any]], category_to_class: dict[int, int], crowd: str
) -> list[int]:
    """Sorted image-level labels from the annotations (crowd counted only with ``class``)."""
    return sorted(
        {
            category_to_class[a["category_id"]]
            for a in annotations
            if not a.get("iscrowd", 0) or crowd == "class"
        }
    )


def category_mapping(categories: list[dict[str, Any]]) -> tuple[dict[int, int], tuple[str, ...]]:
    """COCO category id -> class index, and class names (background first)."""
    ids = sorted(int(c["id"]) for c in categories)
    if set(ids) <= set(COCO_CATEGORY_IDS):
        return {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}, COCO_CLASSES
    names = {int(c["id"]): str(c["name"]) for c in categories}
    return {cid: i + 1 for i, cid in enumerate(ids)}, ("background", *(names[i] for i in ids))


@dataclass
class PrepareSummary:
    """What :func:`prepare_coco` did."""

    split: str
    out: Path
    written: int = 0
    resumed: int = 0
    unannotated: list[str] = field(default_factory=list)


def _render_task(task: tuple) -> str:
    path, annotations, height, width, mapping, crowd = task
    write_label_png(path, render_semantic_mask(annotations, height, width, mapping, crowd))
    return path.stem


def _split_name(instances: Path) -> str:
    stem = instances.stem.removeprefix("instances_")
    return stem.rstrip("0123456789") or stem


def prepare_coco(
    instances: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    crowd: str = "ignore",
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Render the semantic masks and label files of one COCO split (module docstring)."""
    instances, images, out = Path(instances), Path(images), Path(out)
    if crowd not in CROWD_MODES:
        raise DatasetError(f"--crowd must be one of {', '.join(CROWD_MODES)}, got {crowd!r}")
    if not instances.is_file():
        raise DatasetError(f"instances file not found: {instances}")
    if not images.is_dir():
        raise DatasetError(f"images folder not found: {images} (e.g. .../coco/train2014)")
    split = split or _split_name(instances)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and meta.get("crowd") != crowd:
        raise DatasetError(
            f"{out} was prepared with --crowd {meta.get('crowd')}; rerun with that mode, "
            "or use a new --out folder (masks would mix both modes)"
        )
    try:
        data = json.loads(instances.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{instances} is not valid JSON: {error}") from error
    mapping, class_names = category_mapping(data.get("categories", []))
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        if annotation["category_id"] not in mapping:
            raise DatasetError(
                f"{instances}: annotation {annotation.get('id')} has category "
                f"{annotation['category_id']}, not listed under 'categories'"
            )
        by_image[int(annotation["image_id"])].append(annotation)

    (out / "masks").mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(split=split, out=out)
    labels_path = out / "labels.json"
    labels: dict[str, list[int]] = (
        json.loads(labels_path.read_text()) if labels_path.is_file() else {}
    )
    kept: list[str] = []
    tasks = []
    for info in sorted(data.get("images", []), key=lambda item: int(item["id"])):
        image_id = Path(info["file_name"]).stem
        annotations = by_image.get(int(info["id"]), [])
        image_labels = annotation_labels(annotations, mapping, crowd)
        if not image_labels:
            summary.unannotated.append(image_id)
            continue
        kept.append(image_id)
        labels[image_id] = image_labels
        path = out / "masks" / f"{image_id}.png"
        if path.is_file():
            summary.resumed += 1
            continue
        tasks.append((path, annotations, int(info["height"]), int(info["width"]), mapping, crowd))
    summary.written = _run_tasks(tasks, workers, progress, split)

    suffixes = [Path(i["file_name"]).suffix for i in data.get("images", [])] or [".jpg"]
    meta.update(format=FORMAT_VERSION, crowd=crowd, classes="classes.txt")
    meta.setdefault("splits", {})[split] = {
        "images": str(images.resolve()),
        "instances": str(instances.resolve()),
        "suffix": max(set(suffixes), key=suffixes.count),
        "count": len(kept),
        "unannotated": len(summary.unannotated),
    }
    _write_text(out / "classes.txt", "".join(f"{name}\n" for name in class_names))
    _write_text(out / f"{split}.txt", "".join(f"{i}\n" for i in kept))
    _write_text(out / f"{split}_unannotated.txt", "".join(f"{i}\n" for i in summary.unannotated))
    _write_text(labels_path, json.dumps(labels))
    _write_text(meta_path, json.dumps(meta, indent=2))
    return summary


def _run_tasks(tasks: list[tuple], workers: int | None, progress: bool, split: str) -> int:
    from co2sam.progress import progress_bar

    workers = max(1, workers or os.cpu_count() or 1)
    with progress_bar(enabled=progress) as bar:
        job = bar.add_task(f"rendering {split} masks", total=len(tasks))
        if workers == 1 or len(tasks) < 2:
            for task in tasks:
                _render_task(task)
                bar.advance(job)
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_task, tasks, chunksize=16):
                    bar.advance(job)
    return len(tasks)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class CocoDataset(SegmentationDataset):
    """A split prepared by :func:`prepare_coco` (``data.root`` = its ``--out`` folder)."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root).expanduser()
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(
                f"{meta_path} not found: data.root must be the --out folder of "
                "`co2sam prepare coco --instances ... --images ... --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        if split not in meta.get("splits", {}):
            raise DatasetError(
                f"split {split!r} not prepared in {self.root} (prepared: "
                f"{', '.join(meta.get('splits', {})) or 'none'}); run `co2sam prepare coco` for it"
            )
        self.split = split
        self._info = meta["splits"][split]
        self._images = Path(self._info["images"])
        self.class_names = read_class_names(self.root / "classes.txt")
        self.ids = read_split_list(self.root / f"{split}.txt")
        self._labels = json.loads((self.root / "labels.json").read_text())
        self.has_masks = True

    def image_path(self, image_id: str) -> Path:
        return self._images / f"{image_id}{self._info.get('suffix', '.jpg')}"

    def mask_path(self, image_id: str) -> Path | None:
        return self.root / "masks" / f"{image_id}.png"

    def image_labels(self, index: int) -> list[int]:
        image_id = self.ids[index]
        if image_id not in self._labels:
            raise DatasetError(f"{self.root / 'labels.json'} has no labels for {image_id}")
        return list(self._labels[image_id])
