"""The published code's detection stage, for ``prompts.compat: reference`` (SPEC.md,
"Detection quirks of the published code").

What it does differently from co2sam's Grounding DINO prompter:

- the detector sees the image with red and blue swapped (an RGB array handed to a
  function that expects BGR and converts it);
- it sees the image resized so that its longest side is 1024 (bilinear, SAM's rounding):
  as is for training (per-class queries), zero-padded bottom/right to 1024 x 1024 for
  evaluation (all classes); boxes come out in that frame, unclipped, and are mapped back
  here to the original image's pixels;
- the caption is ``". ".join(names)`` with the dataset's class names as written (VOC:
  "diningtable", "pottedplant", "tvmonitor"), no synonyms;
- a box is kept when its best token probability exceeds ``box_threshold``; its phrase is
  the decoded caption tokens whose probability exceeds ``text_threshold``, and it gets
  the first class whose name is a *substring* of that phrase, else no class (class 0,
  which the published evaluation turns into a background box). Training boxes keep the
  class that was queried: the published training loop uses every box it gets.

Not reproduced: a caption longer than the detector's 256 tokens (COCO's 80 names) is
split into several captions as in paper mode, where the published code would truncate
it; and the published code's uint8 round trip of its [0, 1] tensors (``(x * 255)``
truncated) is not imitated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from co2sam.prompts.text_queries import TextQuery
from co2sam.records import Boxes

REFERENCE_SIZE = 1024
"""Longest side of the image the published code hands to the detector."""
LAST_TOKEN = 255
"""Grounding DINO's phrase decoding ignores positions from 255 on (and position 0)."""


@dataclass
class DetectorInput:
    """The image the published code's detector sees, and how to map its boxes back.

    image: (h', w', 3) uint8, channels swapped, resized (and for evaluation padded).
    resized: (h, w) of the resized image inside it; original: (H, W).
    """

    image: np.ndarray
    resized: tuple[int, int]
    original: tuple[int, int]

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) XYXY pixels of :attr:`image` -> the original image's frame (unclipped)."""
        (height, width), (new_h, new_w) = self.original, self.resized
        factors = np.array([width / new_w, height / new_h] * 2, np.float32)
        return np.asarray(xyxy, np.float32).reshape(-1, 4) * factors


def detector_input(image: np.ndarray, *, padded: bool, size: int = REFERENCE_SIZE) -> DetectorInput:
    """What the published code feeds Grounding DINO for an (H, W, 3) uint8 RGB image.

    padded: False for training (resized only), True for evaluation (resized, then
    zero-padded bottom/right to ``size`` x ``size``).
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)  # SAM's rounding
    swapped = np.ascontiguousarray(image[..., ::-1])
    resized = np.asarray(Image.fromarray(swapped).resize((new_w, new_h), Image.BILINEAR))
    if padded:
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:new_h, :new_w] = resized
        resized = canvas
    return DetectorInput(resized, (new_h, new_w), (height, width))


def phrase_class(phrase: str, class_names: Sequence[str]) -> int:
    """The first class (1..C, ``class_names`` background first) whose name is a substring
    of ``phrase``, else 0 (no class), as the published ``phrases2classes``."""
    for index, name in enumerate(class_names[1:], start=1):
        if name in phrase:
            return index
    return 0


def box_phrase(
    token_probs: torch.Tensor, query: TextQuery, tokenizer, text_threshold: float
) -> str:
    """The phrase of one box: caption tokens (1..254) above ``text_threshold``, decoded.

    token_probs: (T,) sigmoid token probabilities of the box, T >= len(query.input_ids).
    """
    length = min(len(query.input_ids), LAST_TOKEN)
    positions = [
        position for position in range(1, length) if float(token_probs[position]) > text_threshold
    ]
    return tokenizer.decode([query.input_ids[position] for position in positions])


def select_reference_detections(
    token_probs: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    query: TextQuery,
    tokenizer,
    class_names: Sequence[str],
    box_threshold: float,
    text_threshold: float,
    queried_class: int | None,
) -> Boxes:
    """The published selection and class rule for one image and one caption.

    token_probs: (N, T) sigmoid token probabilities; boxes_xyxy: (N, 4) boxes in the
    detector input's frame. queried_class: the class of a per-class (training) query,
    which every kept box takes; None for an all-classes query (substring rule).
    """
    token_probs = token_probs.float().cpu()
    box_scores = token_probs[:, : len(query.input_ids)].amax(dim=1)
    keep = (box_scores > box_threshold).nonzero().flatten().tolist()
    classes = []
    for index in keep:
        if queried_class is not None:
            classes.append(queried_class)
        else:
            phrase = box_phrase(token_probs[index], query, tokenizer, text_threshold)
            classes.append(phrase_class(phrase, class_names))
    return Boxes(
        boxes_xyxy.detach().float().cpu()[keep].numpy(),
        np.asarray(classes, np.int64),
        box_scores[keep].numpy(),
    )
