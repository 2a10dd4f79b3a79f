"""Grounding DINO as a box prompter: image + class names -> Boxes.

Uses transformers' ``GroundingDinoForObjectDetection`` and its BERT tokenizer, but
not its processor (which needs torchvision): images are resized and normalised here
in torch (shorter side 800, longer side at most 1333, ImageNet mean/std, as the
official processor) and prompts are tokenised class by class (see
:mod:`co2sam.prompts.text_queries` for the exact token-span -> class rule).

Two query modes:
* per-class (training, as the reference): one prompt per labelled class, ``"cat."``;
* all classes (open inference): all names in one prompt, ``"cat. dog. ..."``, split
  into several prompts when the vocabulary exceeds the model's 256-token limit.

Batches mix prompts (and images); images of different sizes are zero-padded with a
pixel mask, which changes DETR-style results slightly, so ``batch_size=1`` (default)
or per-class queries of one image are exact.

``compat="reference"`` (``prompts.compat``) reproduces the published code's detection
stage instead (:mod:`co2sam.prompts.reference`): channel-swapped, resized (and for
all-class queries padded) input, raw class names, the substring class rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from co2sam.prompts.class_texts import class_prompts, detector_texts
from co2sam.prompts.reference import (
    REFERENCE_SIZE,
    DetectorInput,
    detector_input,
    select_reference_detections,
)
from co2sam.prompts.text_detector import (
    check_label,
    class_text_table,
    concatenate_boxes,
    load_with_tokenizer,
    resolve_device,
    unit_pixels,
)
from co2sam.prompts.text_queries import TextQuery, build_queries, select_detections
from co2sam.records import Boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, shortest: int = 800, longest: int = 1333) -> tuple:
    """(h, w) with the shorter side ``shortest`` unless the longer would exceed ``longest``.

    Same rounding as transformers' ``get_size_with_aspect_ratio`` (DETR / Grounding DINO).
    """
    short, long = float(min(height, width)), float(max(height, width))
    size, raw = shortest, None
    if long / short * size > longest:
        raw = longest * short / long
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    scale_base = raw if raw is not None else size
    if width < height:
        return int(scale_base * height / width), size
    return size, int(scale_base * width / height)


def preprocess_images(
    images: Sequence[np.ndarray], shortest: int = 800, longest: int = 1333, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """HWC uint8 RGB images -> pixel_values (B, 3, h, w) float, pixel_mask (B, h, w) long.

    Each image is resized (bilinear, antialiased) to :func:`resized_size`, normalised
    with ImageNet mean/std, and zero-padded bottom/right to the largest size in the
    batch; pixel_mask is 1 on real pixels.
    """
    tensors = []
    for image in images:
        pixels = unit_pixels(image, device)
        size = resized_size(image.shape[0], image.shape[1], shortest, longest)
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
        tensors.append((pixels[0].clamp(0, 1) - mean) / std)
    height = max(tensor.shape[1] for tensor in tensors)
    width = max(tensor.shape[2] for tensor in tensors)
    pixel_values = torch.zeros((len(tensors), 3, height, width), device=device)
    pixel_mask = torch.zeros((len(tensors), height, width), dtype=torch.long, device=device)
    for index, tensor in enumerate(tensors):
        pixel_values[index, :, : tensor.shape[1], : tensor.shape[2]] = tensor
        pixel_mask[index, : tensor.shape[1], : tensor.shape[2]] = 1
    return pixel_values, pixel_mask


class GroundingDinoPrompter:
    """Grounding DINO box prompter over a fixed class vocabulary.

    class_names: dataset names, background first (index 0). class_texts: detector texts
    per class ``[[texts of class 1], [texts of class 2], ...]``; default: the readable
    name (:func:`co2sam.classes.prompt_name`), or the raw name with ``compat="reference"``.
    Call with an HWC uint8 image; returns Boxes in the original image's pixel frame,
    classes in 1..C (0 too with ``compat="reference"``: the phrase matched no class),
    box-score confidence.
    """

    def __init__(
        self,
        model,
        tokenizer,
        class_names: Sequence[str],
        *,
        class_texts: Sequence[Sequence[str]] | None = None,
        box_threshold: float = 0.30,
        text_threshold: float = 0.25,
        batch_size: int = 1,
        device: str = "auto",
        shortest_edge: int = 800,
        longest_edge: int = 1333,
        compat: str = "paper",
        reference_size: int = REFERENCE_SIZE,
    ) -> None:
        if compat not in ("paper", "reference"):
            raise ValueError(f"compat must be paper or reference, got {compat!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.class_names = tuple(class_names)
        self.compat = compat
        self.reference_size = reference_size
        if class_texts is None and compat == "reference":
            class_texts = [[name] for name in self.class_names[1:]]
        texts = class_texts if class_texts is not None else class_prompts(self.class_names)
        self.class_texts = class_text_table(self.class_names, texts)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = batch_size
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge
        self.max_tokens = int(getattr(model.config, "max_text_len", 256))
        self.all_queries = build_queries(tokenizer, self.class_texts, self.max_tokens)
        self._class_queries: dict[int, TextQuery] = {}

    @classmethod
    def from_pretrained(
        cls, source: str | Path, class_names: Sequence[str], **kwargs
    ) -> GroundingDinoPrompter:
        """Load model and tokenizer from a hub id or a local folder."""
        from transformers import GroundingDinoForObjectDetection

        model, tokenizer = load_with_tokenizer(
            GroundingDinoForObjectDetection,
            source,
            "Grounding DINO",
            "IDEA-Research/grounding-dino-base",
        )
        return cls(model, tokenizer, class_names, **kwargs)

    @classmethod
    def from_config(cls, config, class_names: Sequence[str]) -> GroundingDinoPrompter:
        """From ``config.prompts`` (detector, thresholds, synonyms, batch size, device, sizes,
        compat)."""
        prompts = config.prompts
        return cls.from_pretrained(
            prompts.detector,
            class_names,
            class_texts=detector_texts(class_names, prompts),
            box_threshold=prompts.box_threshold,
            text_threshold=prompts.text_threshold,
            batch_size=prompts.batch_size,
            device=prompts.device,
            shortest_edge=prompts.image_min_size,
            longest_edge=prompts.image_max_size,
            compat=prompts.compat,
        )

    def queries_for(self, labels: Sequence[int] | None) -> list[TextQuery]:
        """Prompts for one image: one per label (per-class mode) or the vocabulary chunks."""
        if labels is None:
            return self.all_queries
        queries = []
        for label in labels:
            check_label(label, self.class_texts)
            if label not in self._class_queries:
                texts = {label: self.class_texts[label]}
                (query,) = build_queries(self.tokenizer, texts, self.max_tokens)
                self._class_queries[label] = query
            queries.append(self._class_queries[label])
        return queries

    def __call__(self, image: np.ndarray, labels: Sequence[int] | None = None) -> Boxes:
        """Boxes of one HWC uint8 image; ``labels`` given: per-class mode, else all classes."""
        return self.detect([image], [labels])[0]

    @torch.inference_mode()
    def detect(
        self, images: Sequence[np.ndarray], labels: Sequence[Sequence[int] | None]
    ) -> list[Boxes]:
        """Boxes for several images; ``labels[i]`` as in :meth:`__call__`."""
        jobs = [
            (index, query)
            for index, image_labels in enumerate(labels)
            for query in self.queries_for(image_labels)
        ]
        inputs: list[DetectorInput] = []
        if self.compat == "reference":  # what the published code hands the detector
            inputs = [
                detector_input(image, padded=image_labels is None, size=self.reference_size)
                for image, image_labels in zip(images, labels, strict=True)
            ]
            images = [prepared.image for prepared in inputs]
        found: list[list[Boxes]] = [[] for _ in images]
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            outputs = self._run(images, batch)
            for (index, query), (token_probs, xyxy) in zip(batch, outputs, strict=True):
                if self.compat == "reference":
                    boxes = select_reference_detections(
                        token_probs,
                        xyxy,
                        query,
                        self.tokenizer,
                        self.class_names,
                        self.box_threshold,
                        self.text_threshold,
                        queried_class=query.classes[0] if labels[index] is not None else None,
                    )
                    boxes.xyxy = inputs[index].to_original(boxes.xyxy)
                else:
                    boxes = select_detections(
                        token_probs, xyxy, query, self.box_threshold, self.text_threshold
                    )
                found[index].append(boxes)
        return [concatenate_boxes(parts) for parts in found]

    def _run(
        self, images: Sequence[np.ndarray], batch: list[tuple[int, TextQuery]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per job: (T,) token probabilities of every box (N, T) and its (N, 4) XYXY pixels
        in the image's frame (clipped to it, except with ``compat="reference"``)."""
        batch_images = [images[index] for index, _ in batch]
        pixel_values, pixel_mask = preprocess_images(
            batch_images, self.shortest_edge, self.longest_edge, self.device
        )
        length = max(len(query.input_ids) for _, query in batch)
        input_ids = torch.full((len(batch), length), self.tokenizer.pad_token_id or 0)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (_, query) in enumerate(batch):
            input_ids[row, : len(query.input_ids)] = torch.tensor(query.input_ids)
            attention_mask[row, : len(query.input_ids)] = 1
        outputs = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            token_type_ids=torch.zeros_like(input_ids).to(self.device),
        )
        token_probs = outputs.logits.float().sigmoid()  # (B, queries, max_text_len)
        clip = self.compat != "reference"  # the published post-processing does not clip
        return [
            (
                token_probs[row],
                _to_pixels(outputs.pred_boxes[row].float(), *image.shape[:2], clip=clip),
            )
            for row, image in enumerate(batch_images)
        ]


def _to_pixels(cxcywh: torch.Tensor, height: int, width: int, clip: bool = True) -> torch.Tensor:
    """Normalised (cx, cy, w, h) of the unpadded image -> XYXY pixels (clipped to it)."""
    cx, cy, w, h = cxcywh.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    size = torch.tensor([width, height, width, height], device=xyxy.device, dtype=xyxy.dtype)
    xyxy = xyxy * size
    return torch.minimum(xyxy.clamp(min=0), size) if clip else xyxy
