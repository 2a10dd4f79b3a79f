"""A simulated detector: degrade exact boxes the way a real detector would (demo, tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from co2sam.records import Boxes


def perturb_boxes(
    boxes: Boxes,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    *,
    jitter: float = 0.1,
    miss_rate: float = 0.1,
    false_rate: float = 0.2,
    true_score_range: tuple[float, float] = (0.5, 0.9),
    false_score_range: tuple[float, float] = (0.3, 0.5),
    labels: Sequence[int] | None = None,
    min_size: float = 2.0,
) -> Boxes:
    """Jitter, drop and add boxes; deterministic for a given ``rng`` state.

    boxes: exact boxes (e.g. :func:`oracle_boxes`), XYXY pixels of an image of
        ``image_size = (H, W)``.
    jitter: each corner coordinate moves by ``N(0, jitter)`` times the box's width
        (x) or height (y); boxes are clipped to the image and kept at least
        ``min_size`` pixels wide and high.
    miss_rate: probability that a true box is dropped.
    false_rate: probability, per input box, of adding one false box (so about
        ``false_rate * len(boxes)`` false boxes per image); a false box has a random
        class from ``labels`` (default: the classes of ``boxes``), a random position
        and a side of 10-50 % of the image's.
    true_score_range / false_score_range: uniform confidence of kept / false boxes.
    Returns true boxes first (in input order, minus the dropped ones), then false boxes.
    """
    height, width = image_size
    count = len(boxes)
    kept = rng.random(count) >= miss_rate
    xyxy = boxes.xyxy.astype(np.float64)
    sizes = np.stack([xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)  # (N, 2) w, h
    noise = rng.normal(0.0, jitter, size=(count, 4)) * np.tile(sizes, 2)
    true_xyxy = _clip(xyxy + noise, height, width, min_size)[kept]
    true_scores = rng.uniform(*true_score_range, size=count)[kept]
    true_classes = boxes.classes[kept]

    choices = np.asarray(sorted(set(labels if labels is not None else boxes.classes.tolist())))
    num_false = int(rng.binomial(count, false_rate)) if count and len(choices) else 0
    false_classes = rng.choice(choices, size=num_false) if num_false else np.zeros(0, np.int64)
    sides = rng.uniform(0.1, 0.5, size=(num_false, 2)) * (width, height)
    corners = rng.uniform(0.0, 1.0, size=(num_false, 2)) * ((width, height) - sides)
    false_xyxy = np.concatenate([corners, corners + sides], axis=1)
    false_scores = rng.uniform(*false_score_range, size=num_false)

    return Boxes(
        np.concatenate([true_xyxy, false_xyxy.reshape(-1, 4)]),
        np.concatenate([true_classes, false_classes]),
        np.concatenate([true_scores, false_scores]),
    )


def _clip(xyxy: np.ndarray, height: int, width: int, min_size: float) -> np.ndarray:
    """Sort corners, clip to the image and enforce a minimum side (all in pixels)."""
    x0 = np.clip(np.minimum(xyxy[:, 0], xyxy[:, 2]), 0, width - min_size)
    y0 = np.clip(np.minimum(xyxy[:, 1], xyxy[:, 3]), 0, height - min_size)
    x1 = np.clip(np.maximum(xyxy[:, 0], xyxy[:, 2]), x0 + min_size, width)
    y1 = np.clip(np.maximum(xyxy[:, 1], xyxy[:, 3]), y0 + min_size, height)
    return np.stack([x0, y0, x1, y1], axis=1)
