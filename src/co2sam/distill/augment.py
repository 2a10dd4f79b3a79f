"""Training augmentation of the second stage (albumentations): mmsegmentation's recipe.

For one image and its pseudo-label, in this order:

1. resize keeping the aspect ratio so the image fits in ``augment.scale`` (long, short)
   times a ratio drawn uniformly from ``augment.ratio_range`` (bilinear; labels nearest);
2. random crop of ``crop_size`` (smaller sides are kept whole); while one class covers
   more than ``cat_max_ratio`` of the crop's labelled pixels, a new crop is drawn, up to
   10 times (mmsegmentation's ``RandomCrop(cat_max_ratio=0.75)``);
3. horizontal flip with probability ``hflip``;
4. photometric distortion: brightness +-32/255, contrast x0.5..1.5, saturation x0.5..1.5,
   hue +-18 degrees, each with probability 0.5;
5. normalise with ImageNet's mean/std, then pad bottom/right to ``crop_size`` with 0
   (the mean colour) and label 255 (ignored).

Every random draw comes from the ``np.random.Generator`` passed in: with the same
generator state the output is identical (exact resume, any number of workers). Each
albumentations transform is given its own seed drawn from it (see ``data/views.py``
for why one seed for the whole Compose is wrong).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from co2sam.classes import IGNORE_INDEX
from co2sam.distill.config import AugmentConfig
from co2sam.inference.segmenter import fit_scale, resized_shape
from co2sam.models.segmentation_net import IMAGE_MEAN, IMAGE_STD

CROP_TRIES = 10


def crop_window(
    label: np.ndarray, crop_size: int, cat_max_ratio: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """XYXY pixel window of a random crop of an (H, W) label map (see the module docstring)."""
    height, width = label.shape
    crop_h, crop_w = min(crop_size, height), min(crop_size, width)
    window = (0, 0, crop_w, crop_h)
    for _ in range(CROP_TRIES):
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        window = (left, top, left + crop_w, top + crop_h)
        if cat_max_ratio >= 1.0:
            break
        values, counts = np.unique(
            label[top : top + crop_h, left : left + crop_w], return_counts=True
        )
        counts = counts[values != IGNORE_INDEX]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return window


class TrainAugment:
    """``(image, label, rng) -> (pixels, label)`` for training.

    image: (H, W, 3) uint8 RGB; label: (H, W) uint8 classes with 255 = ignore.
    Returns pixels (3, S, S) float32 normalised and label (S, S) int64, S = crop_size.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        photometric = []
        if config.photometric:
            photometric = [
                A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.5, p=0.5),
                A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=0.5),
                A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=18 / 360, p=0.5),
            ]
        self.random_transforms = A.Compose([A.HorizontalFlip(p=config.hflip), *photometric])
        size = config.crop_size
        self.finish = A.Compose(
            [
                A.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD, max_pixel_value=255.0),
                A.PadIfNeeded(
                    min_height=size,
                    min_width=size,
                    position="top_left",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=IGNORE_INDEX,
                ),
            ]
        )

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
        low, high = config.ratio_range
        factor = fit_scale(*label.shape, config.scale) * float(rng.uniform(low, high))
        height, width = resized_shape(*label.shape, factor)
        resized = A.Resize(height, width, interpolation=cv2.INTER_LINEAR)(image=image, mask=label)
        left, top, right, bottom = crop_window(
            resized["mask"], config.crop_size, config.cat_max_ratio, rng
        )
        cropped = A.Crop(left, top, right, bottom)(image=resized["image"], mask=resized["mask"])
        for transform in self.random_transforms.transforms:
            transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))
        augmented = self.random_transforms(image=cropped["image"], mask=cropped["mask"])
        done = self.finish(image=augmented["image"], mask=augmented["mask"])
        pixels = np.ascontiguousarray(done["image"].transpose(2, 0, 1), dtype=np.float32)
        return pixels, np.ascontiguousarray(done["mask"], dtype=np.int64)
