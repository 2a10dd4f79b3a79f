"""The weak and strong training views (SPEC.md, training step), at the original resolution.

weak view: random horizontal and vertical flips (p = 0.5 each); the box prompts are
    flipped with the image (albumentations ``bbox_params``, ``pascal_voc`` = XYXY pixels).
strong view: photometric augmentation of the weak view: posterize, equalize, sharpen,
    solarize, random brightness/contrast, random shadow (albumentations defaults,
    p = 0.5 each, as in the reference code). All are ``ImageOnlyTransform``: they never
    move pixels, so the weak view's boxes are valid for the strong view.

Resizing to SAM's input size is the Segmenter's job, not done here.

Reproducibility: every call draws one fresh seed per transform from the given
``np.random.Generator``. (Trap: albumentations 2.0.8's ``Compose(seed=...)`` /
``set_random_seed`` gives every child transform the *same* seed, so the horizontal and
vertical flips would always fire together; seeding each transform separately avoids it.)
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np


@dataclass
class ViewPair:
    """weak, strong: (H, W, 3) uint8 RGB, same geometry (the weak view's).
    boxes: (N, 4) float32 XYXY pixels in the weak view's frame, same order as the input.
    """

    weak: np.ndarray
    strong: np.ndarray
    boxes: np.ndarray
    hflip: bool = False
    vflip: bool = False


def flip_boxes(
    xyxy: np.ndarray, image_size: tuple[int, int], *, hflip: bool, vflip: bool
) -> np.ndarray:
    """Flip (N, 4) XYXY pixel boxes with an (H, W) image: x -> W - x, y -> H - y."""
    height, width = image_size
    out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
    if hflip:
        out[:, [0, 2]] = width - out[:, [2, 0]]
    if vflip:
        out[:, [1, 3]] = height - out[:, [3, 1]]
    return out


class TrainViews:
    """Callable ``(image, boxes_xyxy, rng) -> ViewPair`` making the weak and strong views.

    seed: default seed, used when a call passes no ``rng``.
    strong: False makes the strong view a copy of the weak one (ablation).
    """

    def __init__(self, seed: int = 0, *, strong: bool = True) -> None:
        self.seed = seed
        self.strong_enabled = strong
        self.weak_transform = A.Compose(
            [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)],
            bbox_params=A.BboxParams(
                format="pascal_voc", label_fields=["box_index"], clip=True, min_area=0.0
            ),
            save_applied_params=True,
        )
        self.strong_transform = A.Compose(
            [
                A.Posterize(p=0.5),
                A.Equalize(p=0.5),
                A.Sharpen(p=0.5),
                A.Solarize(p=0.5),
                A.RandomBrightnessContrast(p=0.5),
                A.RandomShadow(p=0.5),
            ]
        )
        self._default_rng = np.random.default_rng(seed)

    @staticmethod
    def _reseed(compose: A.Compose, rng: np.random.Generator) -> None:
        for transform in compose.transforms:
            transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))

    def weak_view(
        self, image: np.ndarray, boxes_xyxy: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        """Flip ``image`` (H, W, 3) and its (N, 4) XYXY boxes; returns (view, boxes, h, v).

        Boxes are clipped to the image and never dropped; degenerate ones (zero width or
        height after clipping, which albumentations rejects) are flipped by the same rule.
        """
        height, width = image.shape[:2]
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height)
        valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        self._reseed(self.weak_transform, rng)
        result = self.weak_transform(
            image=image, bboxes=clipped[valid], box_index=np.flatnonzero(valid)
        )
        applied = {name for name, _ in result["applied_transforms"]}
        hflip, vflip = "HorizontalFlip" in applied, "VerticalFlip" in applied
        out = flip_boxes(clipped, (height, width), hflip=hflip, vflip=vflip)
        moved = np.asarray(result["bboxes"], dtype=np.float32).reshape(-1, 4)
        kept = np.asarray(result["box_index"], dtype=np.int64)
        if len(kept) != int(valid.sum()):
            raise RuntimeError("albumentations dropped a box; boxes would lose their classes")
        out[kept] = moved
        return np.ascontiguousarray(result["image"]), out, hflip, vflip

    def strong_view(self, weak: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Photometric augmentation of an (H, W, 3) uint8 view; geometry unchanged."""
        if not self.strong_enabled:
            return weak.copy()
        self._reseed(self.strong_transform, rng)
        return np.ascontiguousarray(self.strong_transform(image=weak)["image"])

    def __call__(
        self,
        image: np.ndarray,
        boxes_xyxy: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> ViewPair:
        """image: (H, W, 3) uint8 RGB; boxes_xyxy: (N, 4) XYXY pixels, original frame."""
        rng = self._default_rng if rng is None else rng
        weak, boxes, hflip, vflip = self.weak_view(image, boxes_xyxy, rng)
        strong = self.strong_view(weak, rng)
        return ViewPair(weak=weak, strong=strong, boxes=boxes, hflip=hflip, vflip=vflip)
