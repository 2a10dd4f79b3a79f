"""A training step written the way the published Co2SAM code does it (the benchmark baseline).

From SPEC.md ("Training step", "Reference quirks"), as the published loop runs:
- batch size 1, float32;
- Grounding DINO re-run on every image at every step, one prompt per labelled class,
  on the un-augmented image;
- each branch (T-teacher, U-teacher, student) encodes its view on its own;
- every box is decoded on its own (prompt encoder + mask decoder per box) and its
  low-res logits upsampled to the S x S input resolution;
- every loss is computed per mask in Python loops at that resolution, with the
  reference's formulas (focal on the mean BCE, dice smooth = number of masks, IoU target
  at logits >= 0.5, contrastive pooling with raw logits, one prototype per loop turn);
- backward and Adam on the LoRA parameters.

It runs on the same :class:`co2sam.sam.Segmenter` (same weights) as co2sam's trainer, so
the two can be timed side by side in one process. Not used by co2sam itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from common import Work
from torch import Tensor


def _branch(segmenter: Any, pixel_values: Tensor, boxes: Tensor) -> tuple:
    """Encode one view, then decode box after box: (E, [low-res], [full-res], [iou])."""
    sam = segmenter.sam
    size = segmenter.image_size
    embeddings = sam.vision_encoder(pixel_values).last_hidden_state
    low_res, full_res, iou = [], [], []
    for box in boxes:
        output = sam(
            image_embeddings=embeddings, input_boxes=box[None, None], multimask_output=False
        )
        logits = output.pred_masks[0, 0]  # (1, s, s)
        low_res.append(logits)
        full_res.append(F.interpolate(logits[None], (size, size), mode="bilinear")[0])
        iou.append(output.iou_scores[0, 0])
    return embeddings[0], low_res, full_res, iou


def _focal(logits: Tensor, target: Tensor, alpha: float, gamma: float = 2.0) -> Tensor:
    prob = logits.sigmoid().clamp(0, 1)
    bce = F.binary_cross_entropy(prob.flatten(), target.flatten())
    return alpha * (1 - torch.exp(-bce)) ** gamma * bce


def _dice(logits: Tensor, target: Tensor, smooth: float) -> Tensor:
    prob = logits.sigmoid().clamp(0, 1).flatten()
    target = target.flatten()
    return 1 - (2 * (prob * target).sum() + smooth) / (prob.sum() + target.sum() + smooth)


def _prototype(embeddings: Tensor, logits: Tensor) -> Tensor:
    weights = F.interpolate(logits.detach()[None], embeddings.shape[-2:], mode="bilinear")[0, 0]
    return (embeddings * weights).sum(dim=(1, 2)) / weights.sum()


def reference_losses(t_branch: tuple, u_branch: tuple, s_branch: tuple, beta: float) -> Tensor:
    """The Co2SAM total loss of one image, computed mask by mask in Python loops."""
    t_embeddings, t_low, t_masks, _ = t_branch
    u_embeddings, u_low, u_masks, _ = u_branch
    _, _, s_masks, s_iou = s_branch
    count = len(s_masks)
    focal = dice = iou = template = torch.zeros((), device=t_embeddings.device)
    for s_mask, u_mask, t_mask, predicted in zip(s_masks, u_masks, t_masks, s_iou, strict=True):
        u_target = (u_mask.detach() > 0).float()
        t_target = (t_mask.detach() > 0).float()
        focal = focal + _focal(s_mask, u_target, alpha=float(count))
        dice = dice + _dice(s_mask, u_target, smooth=float(count))
        with torch.no_grad():
            binary = (s_mask >= 0.5).float()
            intersection = (binary * u_target).sum()
            actual = intersection / (binary.sum() + u_target.sum() - intersection + 1e-7)
        iou = iou + (predicted - actual) ** 2 / count
        template = template + 0.5 * (_dice(s_mask, t_target, 1.0) + _dice(u_mask, t_target, 1.0))
    u_normal = F.normalize(u_embeddings, dim=0)
    t_normal = F.normalize(t_embeddings, dim=0)
    u_protos = torch.stack([_prototype(u_normal, logits) for logits in u_low])
    t_protos = torch.stack([_prototype(t_normal, logits) for logits in t_low])
    similarity = F.cosine_similarity(u_protos[:, None], t_protos[None], dim=2) / 0.3
    contrastive = -torch.log(similarity.exp().diagonal().sum() / similarity.exp().sum())
    prob = torch.cat(s_masks).softmax(dim=0)
    entropy = -(prob * torch.log(prob + 1e-10)).sum(dim=0).mean()
    return beta * focal + dice + iou + template + contrastive + entropy


class ReferenceStyleStep:
    """One reference-style optimisation step per call on one :class:`common.Work`.

    prompter: a Grounding DINO prompter run on every call (None: boxes from a cache).
    views: ``(weak HWC uint8, strong HWC uint8)`` per work item, made beforehand (the
    reference makes them in its data loader, as co2sam does).
    """

    def __init__(self, segmenter: Any, prompter: Any | None, *, lr: float = 1e-4) -> None:
        self.segmenter = segmenter
        self.prompter = prompter
        self.optimizer = torch.optim.Adam(
            segmenter.trainable_parameters(), lr=lr, weight_decay=1e-4
        )

    def __call__(self, work: Work, strong_image: Any, beta: float = 30.0) -> float:
        segmenter = self.segmenter
        if self.prompter is not None:
            self.prompter(work.image, labels=work.labels)  # random weights: boxes unused
        weak = segmenter.preprocess([work.image])
        strong = segmenter.preprocess([strong_image])
        boxes = segmenter.scale_boxes(torch.from_numpy(work.boxes), weak.original_sizes[0])
        with torch.no_grad(), segmenter.adapters_disabled():
            t_branch = _branch(segmenter, weak.pixel_values, boxes)
        u_branch = _branch(segmenter, weak.pixel_values, boxes)
        s_branch = _branch(segmenter, strong.pixel_values, boxes)
        loss = reference_losses(t_branch, u_branch, s_branch, beta)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
