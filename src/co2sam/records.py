"""The small records that flow between stages (images, labels, boxes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One image of a dataset.

    image: (H, W, 3) uint8 RGB.
    mask: (H, W) uint8 class indices (0 = background, 1..C objects, 255 = ignore), or
        None when the split has no masks (VOC test).
    labels: sorted image-level labels, class indices in 1..C (background excluded).
    id: the dataset's image id (file stem).
    problem: why the image's files could not be used (then ``image`` is a small black
        placeholder, ``mask`` None and ``labels`` empty, and every stage skips the
        sample); None for a good sample.
    """

    image: np.ndarray
    mask: np.ndarray | None
    labels: list[int]
    id: str
    problem: str | None = None


@dataclass
class Boxes:
    """Box prompts of one image, in the *original* image's pixel frame.

    xyxy: (N, 4) float32, XYXY pixels.
    classes: (N,) int64 class indices in 1..C.
    scores: (N,) float32 detector confidence in [0, 1].
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not len(self.xyxy) == len(self.classes) == len(self.scores):
            raise ValueError(
                f"Boxes fields disagree in length: xyxy {len(self.xyxy)}, "
                f"classes {len(self.classes)}, scores {len(self.scores)}"
            )

    def __len__(self) -> int:
        return len(self.xyxy)

    def select(self, keep: np.ndarray) -> Boxes:
        """Boxes at the given indices or boolean mask."""
        return Boxes(self.xyxy[keep], self.classes[keep], self.scores[keep])

    def top_k(self, k: int) -> Boxes:
        """The k most confident boxes (stable for ties)."""
        if len(self) <= k:
            return self
        order = np.argsort(-self.scores, kind="stable")[:k]
        return self.select(np.sort(order))
