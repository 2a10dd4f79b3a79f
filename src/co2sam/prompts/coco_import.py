"""Import detections of any detector from a COCO-results JSON into a box cache.

A COCO-results file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` (XYWH pixels of the original image, the format COCO evaluators read).

Image ids: a string is a file stem (``"2007_000032"``; an extension is dropped). An int
is matched through ``images`` (a COCO-style ``{"images": [{"id", "file_name"}]}`` file,
e.g. the instances JSON the detector ran on) when given, else to the dataset id that is
that whole number: all digits (``"42"``, ``"000000000042"``) or a COCO file stem
(``COCO_val2014_000000000042``). Other ids never match an int: 9 is not
``2008_000009``.

Category ids (``category_ids``): ``coco`` reads the sparse COCO ids 1..90
(:data:`co2sam.classes.COCO_CATEGORY_IDS`, class ``i`` is ``COCO_CATEGORY_IDS[i - 1]``);
``contiguous`` reads class indices 1..C directly; ``auto`` is ``coco`` when the dataset's
classes are COCO's, else ``contiguous``.

Images of the split without any detection get no boxes; detections of images outside
the split are skipped (and counted).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.classes import COCO_CATEGORY_IDS, COCO_CLASSES
from co2sam.records import Boxes


@dataclass
class ImportSummary:
    detections: int
    """Detections read and stored."""
    images_with_boxes: int
    skipped_images: int
    """Detections whose image is not in the split (skipped)."""
    below_threshold: int


def import_coco_results(
    results_path: str | Path,
    image_ids: Sequence[str],
    class_names: Sequence[str],
    *,
    category_ids: str = "auto",
    images: str | Path | None = None,
    score_threshold: float = 0.0,
) -> tuple[dict[str, Boxes], ImportSummary]:
    """Boxes per image id of the split (every id present, XYXY pixels) and a summary.

    Raises ValueError naming the file for a malformed file, an unknown category, or a file
    whose images match none of the split's.
    """
    results_path = Path(results_path)
    detections = _load_list(results_path)
    class_of = _category_map(category_ids, class_names)
    id_of = _image_id_resolver(image_ids, images)
    grouped: dict[str, list[tuple[list[float], int, float]]] = defaultdict(list)
    skipped = below = 0
    for number, detection in enumerate(detections):
        try:
            raw_id, category = detection["image_id"], int(detection["category_id"])
            x, y, width, height = (float(value) for value in detection["bbox"])
            score = float(detection.get("score", 1.0))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{results_path}: detection {number} is not a COCO result "
                f"(image_id, category_id, bbox [x, y, w, h], score): {detection!r}"
            ) from error
        if category not in class_of:
            raise ValueError(
                f"{results_path}: detection {number} has category_id {category}, which is not "
                f"a {category_ids!r} id of this dataset's {len(class_names) - 1} classes "
                "(use --category-ids coco or contiguous)"
            )
        image_id = id_of(raw_id)
        if image_id is None:
            skipped += 1
            continue
        if score < score_threshold:
            below += 1
            continue
        grouped[image_id].append(([x, y, x + width, y + height], class_of[category], score))
    if detections and skipped == len(detections):
        raise ValueError(
            f"{results_path}: no image id matches the split (e.g. {detections[0]['image_id']!r} "
            f"vs {image_ids[0] if image_ids else None!r}); pass --images with the COCO "
            "images list the detector ran on"
        )
    boxes = {image_id: _to_boxes(grouped.get(image_id, [])) for image_id in image_ids}
    summary = ImportSummary(
        detections=sum(len(found) for found in grouped.values()),
        images_with_boxes=len(grouped),
        skipped_images=skipped,
        below_threshold=below,
    )
    return boxes, summary


def _load_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"detections file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of COCO results, got {type(data).__name__}")
    return data


def _category_map(mode: str, class_names: Sequence[str]) -> dict[int, int]:
    """COCO-results category id -> class index 1..C."""
    if mode == "auto":
        mode = "coco" if tuple(class_names) == COCO_CLASSES else "contiguous"
    if mode == "coco":
        if len(class_names) != len(COCO_CLASSES):
            raise ValueError("category ids 'coco' need the 80 COCO classes")
        return {category: index for index, category in enumerate(COCO_CATEGORY_IDS, start=1)}
    if mode == "contiguous":
        return {index: index for index in range(1, len(class_names))}
    raise ValueError(f"category ids must be auto, coco or contiguous, got {mode!r}")


_WHOLE_NUMBER = re.compile(r"(?:COCO_[A-Za-z]+\d*_)?(\d+)")
"""A dataset id that *is* an integer image id: digits, or a COCO file stem."""


def _image_id_resolver(image_ids: Sequence[str], images: str | Path | None):
    known = set(image_ids)
    by_number: dict[int, str] = {}
    if images is not None:
        data = json.loads(Path(images).read_text())
        entries = data["images"] if isinstance(data, dict) else data
        by_number = {int(entry["id"]): Path(entry["file_name"]).stem for entry in entries}
    else:
        for image_id in image_ids:
            whole = _WHOLE_NUMBER.fullmatch(image_id)
            if whole:
                by_number.setdefault(int(whole.group(1)), image_id)

    def resolve(raw: Any) -> str | None:
        if isinstance(raw, str) and not raw.isdigit():
            stem = raw if raw in known else Path(raw).stem
            return stem if stem in known else None
        if isinstance(raw, str) and raw in known:
            return raw
        image_id = by_number.get(int(raw))
        return image_id if image_id in known else None

    return resolve


def _to_boxes(found: list[tuple[list[float], int, float]]) -> Boxes:
    if not found:
        return Boxes()
    xyxy, classes, scores = zip(*found, strict=True)
    return Boxes(np.asarray(xyxy, np.float32), np.asarray(classes), np.asarray(scores))
