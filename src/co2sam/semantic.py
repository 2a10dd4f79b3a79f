"""Boxes + per-box mask logits -> one semantic label map (SPEC.md, Inference).

For an image with N boxes, each box i has a class c_i in 1..C, a detector
confidence s_i and a mask-logit map M_i at the original image size. Then

- score of class c at a pixel = max over the boxes of class c of ``M_i * s_i``,
  and 0 for a class without boxes;
- background score = 1 where no class scores above 0, else 0;
- label = argmax over (background, 1..C).

What the argmax does, case by case (this module implements exactly this):

- No class scores above 0 at a pixel (every box logit <= 0 there, or no box at
  all): background scores 1 and every class scores <= 0, so the pixel is
  background. A box whose logits are negative everywhere therefore paints nothing.
- Some class scores above 0: background scores 0, classes without boxes score 0,
  so the class with the largest positive score wins.
- Two classes with exactly the same positive score: the lower class index wins
  (``torch.argmax`` returns the first maximum).

Label-guided mode passes ``allowed_classes`` (the image's ground-truth image-level
labels): boxes of other classes are dropped before the argmax. Open mode passes
``None`` and keeps every box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from co2sam.classes import BACKGROUND


def class_scores(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    allowed_classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Full per-class score maps, background included (for heat maps and checks).

    Args:
        mask_logits: (N, H, W) float mask logits of the N boxes at the original size.
        box_classes: (N,) int class of each box, in 1..num_classes-1.
        box_scores: (N,) float detector confidence of each box.
        num_classes: C + 1, background included.
        allowed_classes: keep only boxes of these classes (label-guided), or None (open).

    Returns:
        (num_classes, H, W) float scores; channel 0 is the background score (0 or 1).
    """
    mask_logits, box_classes, box_scores = _filtered(
        mask_logits, box_classes, box_scores, num_classes, allowed_classes
    )
    present, per_class = _scores_of_present_classes(mask_logits, box_classes, box_scores)
    scores = per_class.new_zeros((num_classes, *mask_logits.shape[-2:]))
    scores[present] = per_class
    scores[BACKGROUND] = (~(scores[1:] > 0).any(dim=0)).to(scores.dtype)
    return scores


def semantic_map(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    allowed_classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """The label map of one image (see the module docstring for the exact rule).

    Args:
        mask_logits: (N, H, W) float mask logits of the N boxes at the original size
            (N may be 0).
        box_classes: (N,) int class of each box, in 1..num_classes-1.
        box_scores: (N,) float detector confidence of each box.
        num_classes: C + 1, background included.
        allowed_classes: label-guided mode: the image's ground-truth classes (boxes of
            other classes are dropped); None: open mode, all boxes kept.

    Returns:
        (H, W) int64 label map in 0..C on the device of ``mask_logits``.
    """
    mask_logits, box_classes, box_scores = _filtered(
        mask_logits, box_classes, box_scores, num_classes, allowed_classes
    )
    if len(box_classes) == 0:
        return torch.zeros(mask_logits.shape[-2:], dtype=torch.int64, device=mask_logits.device)
    present, per_class = _scores_of_present_classes(mask_logits, box_classes, box_scores)
    best_score, best = per_class.max(dim=0)  # first maximum on ties: the lower class index
    labels = present[best]
    return torch.where(best_score > 0, labels, torch.zeros_like(labels))


def _scores_of_present_classes(
    mask_logits: torch.Tensor, box_classes: torch.Tensor, box_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the K classes that have boxes: ``(present (K,), scores (K, H, W))``.

    Score of a class = max over its boxes of (mask logit x box confidence). Only these
    classes can score above 0, so a compact (K, H, W) stack replaces (C + 1, H, W)
    (COCO has 81 channels). ``present`` is sorted.
    """
    height, width = mask_logits.shape[-2:]
    dtype = mask_logits.dtype if mask_logits.is_floating_point() else torch.float32
    present, compact_index = torch.unique(box_classes, sorted=True, return_inverse=True)
    weighted = mask_logits.to(dtype) * box_scores.to(dtype)[:, None, None]
    per_class = torch.full(
        (len(present), height, width), float("-inf"), dtype=dtype, device=mask_logits.device
    )
    index = compact_index[:, None, None].expand_as(weighted)
    per_class.scatter_reduce_(0, index, weighted, reduce="amax", include_self=True)
    return present, per_class


def _filtered(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    allowed_classes: Sequence[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and classes; drop boxes outside ``allowed_classes``."""
    if mask_logits.ndim != 3:
        raise ValueError(f"mask_logits must be (N, H, W), got shape {tuple(mask_logits.shape)}")
    device = mask_logits.device
    box_classes = torch.as_tensor(box_classes, device=device).long().reshape(-1)
    box_scores = torch.as_tensor(box_scores, device=device).reshape(-1)
    if not len(mask_logits) == len(box_classes) == len(box_scores):
        raise ValueError(
            f"{len(mask_logits)} masks but {len(box_classes)} box classes and "
            f"{len(box_scores)} box scores"
        )
    if len(box_classes) and (box_classes.min() < 1 or box_classes.max() >= num_classes):
        raise ValueError(f"box classes must be in 1..{num_classes - 1}, got {box_classes.tolist()}")
    if allowed_classes is not None:
        allowed = torch.as_tensor(list(allowed_classes), dtype=torch.int64, device=device)
        keep = torch.isin(box_classes, allowed)
        mask_logits, box_classes, box_scores = (
            mask_logits[keep],
            box_classes[keep],
            box_scores[keep],
        )
    return mask_logits, box_classes, box_scores
