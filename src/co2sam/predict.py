"""Segment images with box prompts: per-box mask logits, label maps, and the files of
``co2sam predict`` (label PNG, colour overlay, per-class areas and boxes per image).

Boxes come from a detector (all class names at once, open mode), from a JSON file
of boxes per image, or from a co2sam box cache. The JSON file looks like::

    {"dog.jpg": [{"xyxy": [x0, y0, x1, y1], "class": "dog", "score": 0.9}, ...], ...}

keyed by file name or stem; ``class`` is a class name or index (1..C); ``score``
defaults to 1. Coordinates are XYXY pixels of the original image.

Outputs are named by the image's stem (``dog.jpg`` -> ``labels/dog.png``); images that
share a stem in one run (``a.jpg`` and ``a.png``) keep their whole file name
(``labels/a.jpg.png``, ``labels/a.png.png``), so no output replaces another.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from co2sam.records import Boxes
from co2sam.semantic import reference_semantic_map, semantic_map

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def box_mask_logits(
    segmenter: Any,
    images: Sequence[np.ndarray],
    boxes: Sequence[Boxes],
    *,
    frame: str = "original",
) -> list[torch.Tensor]:
    """Mask logits of every box of every image, at the original image size.

    segmenter: a :class:`co2sam.sam.Segmenter` (any device; run under inference mode
        and, on GPU, autocast if wanted). images: B (H, W, 3) uint8 RGB arrays (sizes
        may differ). boxes: B :class:`Boxes`, XYXY in each image's original frame.
    frame: ``original`` (H, W), or ``resized``: the model-input frame with the padding
        cropped away, (h, w) with the longest side S (what the published evaluation
        assembles its label map in, ``eval.compat: reference``).
    Returns B float32 tensors (Ni, H, W) or (Ni, h, w) on the segmenter's device. One
    encoder pass for the whole batch, one decoder pass for all boxes.
    """
    if frame not in ("original", "resized"):
        raise ValueError(f"frame must be original or resized, got {frame!r}")
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
    prepared = segmenter.preprocess(list(images))
    embeddings = segmenter.encode(prepared.pixel_values)
    scaled = [
        segmenter.scale_boxes(image_boxes.xyxy, size)
        for image_boxes, size in zip(boxes, prepared.original_sizes, strict=True)
    ]
    outputs = segmenter.decode(embeddings, scaled)
    if frame == "resized":
        return [
            segmenter.upscale(output.low_res_logits.float())[:, : resized[0], : resized[1]]
            for output, resized in zip(outputs, prepared.resized_sizes, strict=True)
        ]
    return [
        segmenter.postprocess(output.low_res_logits.float(), resized, original)
        for output, resized, original in zip(
            outputs, prepared.resized_sizes, prepared.original_sizes, strict=True
        )
    ]


def autocast_context(
    device: torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled, otherwise nothing (CPU runs in float32)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def label_map_of(
    mask_logits: torch.Tensor,
    boxes: Boxes,
    num_classes: int,
    allowed_classes: Sequence[int] | None = None,
    *,
    reference_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(H, W) int64 label map from (N, H, W) logits and the N boxes (see semantic.py).

    reference_size: given, the logits are (N, h, w) in the resized frame and the map is
    assembled as the published evaluation does (:func:`reference_semantic_map`) at this
    (H, W) original size.
    """
    device = mask_logits.device
    if reference_size is not None:
        return reference_semantic_map(
            mask_logits,
            torch.from_numpy(boxes.classes).to(device),
            torch.from_numpy(boxes.scores).to(device),
            num_classes,
            reference_size,
            allowed_classes,
        )
    return semantic_map(
        mask_logits,
        torch.from_numpy(boxes.classes).to(device),
        torch.from_numpy(boxes.scores).to(device),
        num_classes,
        allowed_classes,
    )


@dataclass
class ImageResult:
    """What ``predict`` writes for one image: paths and the summary stored in its JSON."""

    image: Path
    label_png: Path
    overlay_png: Path
    details_json: Path
    areas: dict[str, dict[str, float]]
    name: str = ""
    """The name its outputs take (stem, or file name when stems clash)."""


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
    """The name each image's outputs take: its stem, or its file name when stems clash."""
    stems: dict[str, int] = {}
    for path in image_paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    names = {path: path.stem if stems[path.stem] == 1 else path.name for path in image_paths}
    if len(set(names.values())) != len(names):
        clash = sorted(name for name in names.values() if list(names.values()).count(name) > 1)
        raise ValueError(f"two images would write the same outputs ({clash[0]}); rename one")
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
    segmenter: Any,
    image_paths: Sequence[Path],
    boxes_fn: Callable[[str, np.ndarray], Boxes],
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    allowed_classes: Sequence[int] | None = None,
    progress: bool = True,
    autocast: bool = True,
    names: Mapping[Path, str] | None = None,
    on_unreadable: Callable[[Path, str], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> list[ImageResult]:
    """Segment each image (open mode unless ``allowed_classes``) and write its files.

    boxes_fn: (output name, (H, W, 3) uint8 image) -> Boxes in the original frame; the
        name is the stem unless stems clash (:func:`output_names`).
    names: output name per path (default :func:`output_names` of ``image_paths``).
    on_unreadable: called with (path, reason) for an image that cannot be read; it is
        skipped and the others are segmented (default: a warning line on stderr).
    on_result: called after each image's files are written.
    Writes ``labels/<name>.png`` (VOC palette), ``overlays/<name>.png`` (image tinted by
    class, boxes drawn) and ``details/<name>.json`` (per-class pixels and fraction,
    boxes with class names and scores) under ``out_dir``.
    """
    from co2sam.data.image_io import DatasetError, read_image
    from co2sam.progress import progress_bar
    from co2sam.visualize import overlay, save_image, save_label_png

    names = names or output_names(image_paths)
    if on_unreadable is None:
        from co2sam.data.preflight import SkipLog

        warn = SkipLog(None)

        def on_unreadable(path: Path, reason: str) -> None:
            warn.add(str(path), str(path), reason)

    out_dir = Path(out_dir)
    results = []
    was_training = segmenter.training
    segmenter.eval()
    try:
        with progress_bar(enabled=progress, transient=True) as bar:
            task = bar.add_task("predict", total=len(image_paths))
            for image_path in image_paths:
                bar.advance(task)
                try:
                    image = read_image(image_path)
                except DatasetError as error:
                    on_unreadable(image_path, str(error))
                    continue
                stem = names[image_path]
                boxes = boxes_fn(stem, image)
                with torch.inference_mode(), autocast_context(segmenter.device, autocast):
                    logits = box_mask_logits(segmenter, [image], [boxes])[0]
                    label = label_map_of(logits, boxes, len(class_names), allowed_classes)
                label_array = label.cpu().numpy().astype(np.uint8)
                areas = class_areas(label_array, class_names)
                details = {
                    "image": str(image_path),
                    "size": {"height": image.shape[0], "width": image.shape[1]},
                    "areas": areas,
                    "boxes": [
                        {
                            "xyxy": [round(float(v), 2) for v in box],
                            "class": class_names[int(cls)],
                            "class_index": int(cls),
                            "score": round(float(score), 5),
                        }
                        for box, cls, score in zip(
                            boxes.xyxy, boxes.classes, boxes.scores, strict=True
                        )
                    ],
                }
                details_path = out_dir / "details" / f"{stem}.json"
                details_path.parent.mkdir(parents=True, exist_ok=True)
                details_path.write_text(json.dumps(details, indent=2) + "\n")
                result = ImageResult(
                    image=image_path,
                    label_png=save_label_png(out_dir / "labels" / f"{stem}.png", label_array),
                    overlay_png=save_image(
                        out_dir / "overlays" / f"{stem}.png",
                        overlay(image, label_array, boxes=boxes, class_names=class_names),
                    ),
                    details_json=details_path,
                    areas=areas,
                    name=stem,
                )
                results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        segmenter.train(was_training)
    return results
