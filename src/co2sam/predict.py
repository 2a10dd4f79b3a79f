"""The files of ``co2sam predict`` for any predictor: label PNG, colour overlay and
per-class areas (and the box prompts, with SAM) per image.

With SAM, boxes come from a detector (all class names at once, open mode), from a JSON
file of boxes per image, or from a co2sam box cache; a trained segmenter
(``--segmenter``) needs none. The JSON file looks like::

    {"dog.jpg": [{"xyxy": [x0, y0, x1, y1], "class": "dog", "score": 0.9}, ...], ...}

keyed by file name or stem; ``class`` is a class name or index (1..C); ``score``
defaults to 1. Coordinates are XYXY pixels of the original image.

Outputs are named by the image's whole file name (``dog.jpg`` -> ``labels/dog.jpg.png``):
``a.jpg`` and ``a.png`` in one folder get their own outputs, and an image's output names
never depend on what else is in the folder (a file added later cannot rename them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from co2sam.inference.base import autocast_context, eval_mode, progress_bar
from co2sam.inference.sam import box_mask_logits, label_map_of
from co2sam.records import Boxes, Sample

__all__ = [
    "ImageResult",
    "autocast_context",
    "box_mask_logits",
    "class_areas",
    "label_map_of",
    "list_images",
    "output_names",
    "predict_images",
    "read_boxes_json",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ImageResult:
    """What ``predict`` writes for one image: paths and the summary stored in its JSON."""

    image: Path
    label_png: Path
    overlay_png: Path
    details_json: Path
    areas: dict[str, dict[str, float]]
    name: str = ""
    """The name its outputs take (the image's file name)."""


def list_images(path: str | Path) -> list[Path]:
    """One image file, or the images of a folder (sorted, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}; give an image or a folder"
            )
        return images
    raise FileNotFoundError(f"{path} is neither an image file nor a folder")


def output_names(image_paths: Sequence[Path]) -> dict[Path, str]:
    """The name each image's outputs take: its file name (``dog.jpg``), so that the
    name of one image never depends on the others. Two paths with one file name (from
    two folders) are refused."""
    names = {path: path.name for path in image_paths}
    seen: dict[str, Path] = {}
    for path, name in names.items():
        if name in seen:
            raise ValueError(f"{seen[name]} and {path} would write the same outputs; rename one")
        seen[name] = path
    return names


def read_boxes_json(path: str | Path, class_names: Sequence[str]) -> dict[str, Boxes]:
    """Boxes per image from a simple JSON file (module docstring); keys are file stems,
    or file names for names that share a stem (``a.jpg`` and ``a.png``).

    Raises ValueError naming the file and the entry on a malformed box.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read boxes file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map image names to lists of boxes")
    stems = [Path(name).stem for name in data]
    result: dict[str, Boxes] = {}
    for name, entries in data.items():
        xyxy, classes, scores = [], [], []
        for number, entry in enumerate(entries):
            where = f"{path}, image {name!r}, box {number}"
            try:
                box = [float(value) for value in entry["xyxy"]]
                label = entry["class"]
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{where}: needs 'xyxy' [x0, y0, x1, y1] and 'class'") from error
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"{where}: xyxy must be [x0, y0, x1, y1] with x1 > x0, y1 > y0")
            xyxy.append(box)
            classes.append(_class_index(label, class_names, where))
            scores.append(float(entry.get("score", 1.0)))
        key = Path(name).stem if stems.count(Path(name).stem) == 1 else name
        result[key] = Boxes(np.asarray(xyxy, np.float32), np.asarray(classes), np.asarray(scores))
    return result


def _class_index(label: Any, class_names: Sequence[str], where: str) -> int:
    if isinstance(label, int) and not isinstance(label, bool):
        index = label
    elif isinstance(label, str) and label in class_names:
        index = list(class_names).index(label)
    else:
        raise ValueError(f"{where}: unknown class {label!r}; classes: {', '.join(class_names[1:])}")
    if not 1 <= index < len(class_names):
        raise ValueError(f"{where}: class index {index} outside 1..{len(class_names) - 1}")
    return index


def class_areas(label_map: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Pixels and image fraction of every class present in an (H, W) label map."""
    counts = np.bincount(label_map.reshape(-1).astype(np.int64), minlength=len(class_names))
    total = max(int(label_map.size), 1)
    return {
        class_names[index]: {"pixels": int(count), "fraction": round(int(count) / total, 6)}
        for index, count in enumerate(counts[: len(class_names)])
        if count > 0
    }


def predict_images(
    predictor: Any,
    image_paths: Sequence[Path],
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    allowed_classes: Sequence[int] | None = None,
    progress: bool = True,
    names: Mapping[Path, str] | None = None,
    on_unreadable: Callable[[Path, str], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> list[ImageResult]:
    """Segment each image (open mode unless ``allowed_classes``) and write its files.

    predictor: a :class:`co2sam.inference.base.Predictor`, e.g. ``SamPredictor`` with a
        box source keyed by output name (``Sample.id``), or ``SegmenterPredictor``.
    allowed_classes: label-guided mode with these classes (1..C) for every image.
    names: output name per path (default :func:`output_names` of ``image_paths``: the
        file name); it is the ``id`` of the sample the predictor sees.
    on_unreadable: called with (path, reason) for an image that cannot be read; it is
        skipped and the others are segmented (default: a warning line on stderr).
    on_result: called after each image's files are written.
    Writes ``labels/<name>.png`` (VOC palette), ``overlays/<name>.png`` (image tinted by
    class, boxes drawn) and ``details/<name>.json`` (mode, per-class pixels and fraction,
    and the boxes with class names and scores when the predictor used boxes) under
    ``out_dir``.
    """
    from co2sam.data.image_io import DatasetError, read_image
    from co2sam.visualize import overlay, save_image, save_label_png

    names = names or output_names(image_paths)
    if on_unreadable is None:
        from co2sam.data.preflight import SkipLog

        warn = SkipLog(None)

        def on_unreadable(path: Path, reason: str) -> None:
            warn.add(str(path), str(path), reason)

    out_dir = Path(out_dir)
    mode = "open" if allowed_classes is None else "label-guided"
    labels = sorted(int(c) for c in allowed_classes or [])
    results = []
    with eval_mode(predictor.model), progress_bar(progress) as bar:
        task = bar.add_task("predict", total=len(image_paths))
        for image_path in image_paths:
            bar.advance(task)
            try:
                image = read_image(image_path, fix="replace the file, or remove it")
            except DatasetError as error:
                on_unreadable(image_path, str(error))
                continue
            name = names[image_path]
            sample = Sample(image=image, mask=None, labels=labels, id=name)
            with torch.inference_mode():
                output = predictor.predict([sample], (mode,))[0]
            label_array = output.label_maps[mode].cpu().numpy().astype(np.uint8)
            areas = class_areas(label_array, class_names)
            details: dict[str, Any] = {
                "image": str(image_path),
                "size": {"height": image.shape[0], "width": image.shape[1]},
                "mode": mode,
                "predictor": predictor.name,
                "areas": areas,
            }
            if output.boxes is not None:
                details["boxes"] = _box_records(output.boxes, class_names)
            details_path = out_dir / "details" / f"{name}.json"
            details_path.parent.mkdir(parents=True, exist_ok=True)
            details_path.write_text(json.dumps(details, indent=2) + "\n")
            result = ImageResult(
                image=image_path,
                label_png=save_label_png(out_dir / "labels" / f"{name}.png", label_array),
                overlay_png=save_image(
                    out_dir / "overlays" / f"{name}.png",
                    overlay(image, label_array, boxes=output.boxes, class_names=class_names),
                ),
                details_json=details_path,
                areas=areas,
                name=name,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _box_records(boxes: Boxes, class_names: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "xyxy": [round(float(v), 2) for v in box],
            "class": class_names[int(cls)],
            "class_index": int(cls),
            "score": round(float(score), 5),
        }
        for box, cls, score in zip(boxes.xyxy, boxes.classes, boxes.scores, strict=True)
    ]
