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
``None`` and keeps every box. Boxes of class 0 (the detector's phrase matched no
class; only ``prompts.compat: reference`` keeps them) are dropped too.

:func:`reference_semantic_map` is the published evaluation's assembly instead
(``eval.compat: reference``, SPEC.md "Evaluation quirks"), for like-for-like comparison
with the published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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
        box_classes: (N,) int class of each box, in 0..num_classes-1 (0: dropped).
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
        box_classes: (N,) int class of each box, in 0..num_classes-1 (0: dropped).
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


def _checked_boxes(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``box_classes`` (int64) and ``box_scores`` as (N,) tensors on the masks' device,
    checked against the (N, H, W) ``mask_logits`` (``layout`` names that shape in the
    error) and the class range 0..num_classes-1."""
    if mask_logits.ndim != 3:
        raise ValueError(f"mask_logits must be {layout}, got shape {tuple(mask_logits.shape)}")
    device = mask_logits.device
    box_classes = torch.as_tensor(box_classes, device=device).long().reshape(-1)
    box_scores = torch.as_tensor(box_scores, device=device).reshape(-1)
    if not len(mask_logits) == len(box_classes) == len(box_scores):
        raise ValueError(
            f"{len(mask_logits)} masks but {len(box_classes)} box classes and "
            f"{len(box_scores)} box scores"
        )
    if len(box_classes) and (box_classes.min() < 0 or box_classes.max() >= num_classes):
        raise ValueError(f"box classes must be in 0..{num_classes - 1}, got {box_classes.tolist()}")
    return box_classes, box_scores


def _filtered(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    allowed_classes: Sequence[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and classes; drop boxes outside ``allowed_classes``."""
    box_classes, box_scores = _checked_boxes(
        mask_logits, box_classes, box_scores, num_classes, "(N, H, W)"
    )
    device = mask_logits.device
    keep = box_classes > 0  # class 0: the phrase matched no class
    if allowed_classes is not None:
        allowed = torch.as_tensor(list(allowed_classes), dtype=torch.int64, device=device)
        keep &= torch.isin(box_classes, allowed)
    return mask_logits[keep], box_classes[keep], box_scores[keep]


def reference_semantic_map(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    num_classes: int,
    output_size: tuple[int, int],
    allowed_classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """The label map as the published evaluation assembles it (``eval.compat: reference``).

    Args:
        mask_logits: (N, h, w) float mask logits in the *resized* frame (the image scaled
            so its longest side is the model input side, padding cropped away).
        box_classes: (N,) int class of each box in 0..num_classes-1; 0 means the detector's
            phrase matched no class (the published code turns it into a background box).
        box_scores: (N,) float detector confidence of each box.
        num_classes: C + 1, background included.
        output_size: (H, W) of the original image.
        allowed_classes: label-guided mode: the image's ground-truth classes; None: open.

    Returns:
        (H, W) int64 label map in 0..C.

    Differences from :func:`semantic_map`, in the published order of operations (the
    published code indexes classes 1..C as 0..C-1 and background last, index C):

    1. every box counts, whatever the image's labels: class score = max over the
       class's boxes of ``logit x confidence``, 0 for classes without boxes; boxes of
       class 0 fill the background channel the same way (and can beat a class);
    2. the background channel is set to 1 where every channel is <= 0;
    3. the whole stack is resized bilinearly from (h, w) to (H, W) (not each box);
    4. label-guided: the channels of classes outside the labels are set to 0, *then*
       argmax, first maximum on ties. A pixel claimed only by a non-label box has every
       channel <= 0 and the zeroed ones exactly 0, so it goes to the first class in the
       published order whose channel is 0 there (class 1, VOC's aeroplane, unless that
       class has a box of its own there), not to background.
    """
    box_classes, box_scores = _checked_boxes(
        mask_logits, box_classes, box_scores, num_classes, "(N, h, w)"
    )
    device = mask_logits.device
    objects = num_classes - 1
    channel_of_class = torch.where(box_classes > 0, box_classes - 1, objects)  # published order
    stack = torch.zeros((num_classes, *mask_logits.shape[-2:]), device=device)
    weighted = mask_logits.float() * box_scores.float()[:, None, None]
    for channel in torch.unique(channel_of_class).tolist():
        stack[channel] = weighted[channel_of_class == channel].amax(dim=0)
    stack[objects][stack.amax(dim=0) <= 0] = 1.0
    stack = F.interpolate(
        stack[None], size=tuple(output_size), mode="bilinear", align_corners=False
    )[0]
    if allowed_classes is not None:
        keep = torch.zeros(num_classes, dtype=torch.bool, device=device)
        keep[objects] = True
        for label in allowed_classes:
            keep[int(label) - 1] = True
        stack[~keep] = 0.0
    index = stack.argmax(dim=0)  # first maximum on ties, as numpy's argmax
    return torch.where(index == objects, torch.zeros_like(index), index + 1)


def label_confidence(
    mask_logits: torch.Tensor,
    box_classes: torch.Tensor,
    box_scores: torch.Tensor,
    label_map: torch.Tensor,
    num_classes: int,
    allowed_classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """How strongly the box prompts back each pixel's label, in [0, 1].

    A box's *claim* on a pixel is its detector confidence times its mask probability,
    ``s_i * sigmoid(M_i)``. Then:

    - a pixel labelled with class c > 0: the largest claim of the boxes of class c;
    - a background pixel: 1 - the largest claim of any box (1 where there is no box).

    Args:
        mask_logits, box_classes, box_scores, num_classes, allowed_classes: as given to
            :func:`semantic_map` (label-guided mode drops the other classes' boxes).
        label_map: (H, W) int64, the map :func:`semantic_map` made from them.

    Returns:
        (H, W) float32 on the device of ``mask_logits``.
    """
    mask_logits, box_classes, box_scores = _filtered(
        mask_logits, box_classes, box_scores, num_classes, allowed_classes
    )
    height, width = mask_logits.shape[-2:]
    device = mask_logits.device
    if len(box_classes) == 0:
        return torch.ones((height, width), dtype=torch.float32, device=device)
    claims = torch.sigmoid(mask_logits.float()) * box_scores.float()[:, None, None]
    present, compact_index = torch.unique(box_classes, sorted=True, return_inverse=True)
    per_class = claims.new_zeros((len(present), height, width))
    index = compact_index[:, None, None].expand_as(claims)
    per_class.scatter_reduce_(0, index, claims, reduce="amax", include_self=True)
    lookup = torch.full((num_classes,), -1, dtype=torch.int64, device=device)
    lookup[present] = torch.arange(len(present), device=device)
    label_index = lookup[label_map]
    foreground = (label_map != BACKGROUND) & (label_index >= 0)
    label_claim = per_class.gather(0, label_index.clamp(min=0)[None])[0]
    return torch.where(foreground, label_claim, 1.0 - per_class.max(dim=0).values)
