"""The segmenter-backed predictor: a trained semantic-segmentation network alone.

No detector, no prompts, no test-time labels (open mode). For an image of (H, W):

1. resize, keeping the aspect ratio, to fit in ``scale`` = (long, short) (mmsegmentation's
   ``Resize(scale=(2048, 512), keep_ratio=True)``; times each ratio with TTA), bilinear;
2. normalise (ImageNet mean/std), pad bottom/right to a multiple of 32 with 0;
3. class probabilities from the network, padding cropped, resized back to (H, W);
4. with TTA: the probabilities of every ratio, and of each horizontally flipped copy
   (flipped back), are averaged (mmsegmentation's / Mask2Former's multi-scale + flip);
5. label = argmax; label-guided mode keeps only background and the image's classes.

Confidence of a pixel = its label's share of the class probabilities (the softmax
maximum for SegFormer and UperNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from co2sam.inference.base import ImageOutput, autocast_context, check_modes, model_device
from co2sam.models.segmentation_net import IMAGE_MEAN, IMAGE_STD, SegmentationNet
from co2sam.records import Sample

SIZE_DIVISOR = 32


def fit_scale(height: int, width: int, scale: Sequence[int]) -> float:
    """The factor that makes an (H, W) image fit in ``scale`` = (long, short), ratio kept."""
    long_side, short_side = max(scale), min(scale)
    return min(long_side / max(height, width), short_side / min(height, width))


def resized_shape(height: int, width: int, factor: float) -> tuple[int, int]:
    """(H, W) scaled by ``factor``, rounded, at least 1 pixel."""
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def normalised_pixels(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 normalised with ImageNet's mean/std."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    pixels = pixels.permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(IMAGE_MEAN, device=pixels.device)[None, :, None, None]
    std = torch.tensor(IMAGE_STD, device=pixels.device)[None, :, None, None]
    return (pixels - mean) / std


class SegmenterPredictor:
    """A :class:`co2sam.inference.base.Predictor` over a :class:`SegmentationNet`.

    scale: (long, short) box the image is fitted into. tta: average over ``tta_ratios``
    (and horizontal flips when ``tta_flip``). autocast: bf16 on CUDA.
    """

    name = "segmenter"

    def __init__(
        self,
        net: SegmentationNet,
        *,
        scale: Sequence[int] = (2048, 512),
        tta: bool = False,
        tta_ratios: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        tta_flip: bool = True,
        autocast: bool = True,
    ) -> None:
        self.model = net
        self.scale = tuple(scale)
        self.ratios = tuple(tta_ratios) if tta else (1.0,)
        self.flip = tta and tta_flip
        self.autocast = autocast

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def describe(self) -> str:
        views = f"{len(self.ratios)} scale(s){' with flips' if self.flip else ''}"
        return f"{self.model.architecture} segmenter, fit to {self.scale}, {views}"

    def class_probabilities(self, image: np.ndarray) -> torch.Tensor:
        """(C, H, W) float32 class probabilities of an (H, W, 3) uint8 RGB image."""
        height, width = image.shape[:2]
        pixels = normalised_pixels(image, self.device)
        total = torch.zeros(
            (self.model.num_classes, height, width), dtype=torch.float32, device=self.device
        )
        for ratio in self.ratios:
            factor = fit_scale(height, width, self.scale) * ratio
            new_h, new_w = resized_shape(height, width, factor)
            view = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False)
            pad_h, pad_w = (-new_h) % SIZE_DIVISOR, (-new_w) % SIZE_DIVISOR
            if self.flip:  # flipped before padding: the padding stays bottom/right
                view = torch.cat([view, view.flip(-1)])
            with autocast_context(self.device, self.autocast):
                scores = self.model(F.pad(view, (0, pad_w, 0, pad_h))).scores.float()
            scores = scores[:, :, :new_h, :new_w]
            if self.flip:
                scores = torch.stack([scores[0], scores[1].flip(-1)])
            scores = F.interpolate(
                scores, size=(height, width), mode="bilinear", align_corners=False
            )
            total += scores.sum(dim=0)
        return total / (len(self.ratios) * (2 if self.flip else 1))

    def predict(
        self, samples: Sequence[Sample], modes: Sequence[str], *, confidence: bool = False
    ) -> list[ImageOutput]:
        modes = check_modes(modes)
        outputs = []
        for sample in samples:
            probabilities = self.class_probabilities(sample.image)
            label_maps, confidences = {}, {}
            for mode in modes:
                scores = probabilities
                if mode == "label-guided":
                    keep = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
                    keep[[0, *sample.labels]] = True
                    scores = torch.where(keep[:, None, None], scores, torch.zeros_like(scores))
                label_maps[mode] = scores.argmax(dim=0)
                if confidence:
                    best = scores.gather(0, label_maps[mode][None])[0]
                    confidences[mode] = best / scores.sum(dim=0).clamp(min=1e-12)
            outputs.append(ImageOutput(label_maps, None, confidences if confidence else None))
        return outputs


def load_segmenter_predictor(
    folder: str | Path, device: torch.device | str = "cpu", *, tta: bool | None = None
) -> tuple[SegmenterPredictor, dict[str, Any]]:
    """A predictor for the segmenter folder of a ``co2sam distill`` run, and its metadata.

    The inference sizes and TTA ratios recorded in the folder (the run's ``eval``
    section) are used; ``tta`` turns test-time augmentation on or off (None: as recorded).
    Raises :class:`co2sam.models.segmentation_net.SegmentationNetError` on a bad folder.
    """
    from co2sam.models.segmentation_net import load_net

    net, metadata = load_net(folder)
    settings = metadata.get("eval", {})
    predictor = SegmenterPredictor(
        net.to(device),
        scale=settings.get("scale", (2048, 512)),
        tta=settings.get("tta", False) if tta is None else tta,
        tta_ratios=settings.get("tta_ratios", (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)),
        tta_flip=settings.get("tta_flip", True),
    )
    return predictor, metadata
