"""The SAM-backed predictor: box prompts -> per-box mask logits -> label maps.

Boxes come from a box source (``Sample -> Boxes``: a cache, a detector, oracle boxes).
Each batch of images is encoded once and all boxes decoded at once; the label map of
every requested mode is assembled from the same logits (SPEC.md, Inference):
``label-guided`` keeps only the boxes of the image's classes, ``open`` keeps them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from co2sam.inference.base import ImageOutput, autocast_context, check_modes
from co2sam.records import Boxes, Sample
from co2sam.semantic import label_confidence, reference_semantic_map, semantic_map


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
    classes = torch.from_numpy(boxes.classes).to(device)
    scores = torch.from_numpy(boxes.scores).to(device)
    if reference_size is not None:
        return reference_semantic_map(
            mask_logits, classes, scores, num_classes, reference_size, allowed_classes
        )
    return semantic_map(mask_logits, classes, scores, num_classes, allowed_classes)


class SamPredictor:
    """A :class:`co2sam.inference.base.Predictor` over SAM (+ LoRA) and a box source.

    segmenter: a :class:`co2sam.sam.Segmenter`. boxes_fn: ``Sample -> Boxes`` (original
    frame). num_classes: C + 1, background included. autocast: bf16 on CUDA.
    compat: ``paper`` (co2sam's label-map assembly) or ``reference`` (the published
    evaluation's, ``eval.compat``).
    Confidence: :func:`co2sam.semantic.label_confidence` (box score x mask probability;
    ``paper`` assembly only).
    """

    name = "sam"

    def __init__(
        self,
        segmenter: Any,
        boxes_fn: Callable[[Sample], Boxes],
        num_classes: int,
        *,
        autocast: bool = True,
        compat: str = "paper",
    ) -> None:
        if compat not in ("paper", "reference"):
            raise ValueError(f"compat must be paper or reference, got {compat!r}")
        self.model = segmenter
        self.boxes_fn = boxes_fn
        self.num_classes = num_classes
        self.autocast = autocast
        self.compat = compat

    def predict(
        self, samples: Sequence[Sample], modes: Sequence[str], *, confidence: bool = False
    ) -> list[ImageOutput]:
        modes = check_modes(modes)
        reference = self.compat == "reference"
        if confidence and reference:
            raise ValueError("pixel confidences need the paper assembly (eval.compat: paper)")
        boxes = [self.boxes_fn(sample) for sample in samples]
        with autocast_context(self.model.device, self.autocast):
            logits = box_mask_logits(
                self.model,
                [s.image for s in samples],
                boxes,
                frame="resized" if reference else "original",
            )
        outputs = []
        for sample, image_logits, image_boxes in zip(samples, logits, boxes, strict=True):
            label_maps, confidences = {}, {}
            classes = torch.from_numpy(image_boxes.classes).to(image_logits.device)
            scores = torch.from_numpy(image_boxes.scores).to(image_logits.device)
            size = sample.image.shape[:2] if reference else None
            for mode in modes:
                allowed = sample.labels if mode == "label-guided" else None
                label_map = label_map_of(
                    image_logits, image_boxes, self.num_classes, allowed, reference_size=size
                )
                label_maps[mode] = label_map
                if confidence:
                    confidences[mode] = label_confidence(
                        image_logits, classes, scores, label_map, self.num_classes, allowed
                    )
            outputs.append(
                ImageOutput(label_maps, image_boxes, confidences if confidence else None)
            )
        return outputs
