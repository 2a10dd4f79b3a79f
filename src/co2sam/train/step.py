"""One Co2SAM training step: dual teachers, one student (SPEC.md, "Training step").

| branch    | weights              | input       | gradient |
|-----------|----------------------|-------------|----------|
| T-teacher | plain SAM (LoRA off) | weak view   | no       |
| U-teacher | SAM + LoRA           | weak view   | yes      |
| student   | SAM + LoRA (shared)  | strong view | yes      |

``segmenter`` is a :class:`co2sam.sam.Segmenter` or the same wrapped by
``fabric.setup`` (its ``forward`` = encode + decode goes through DDP/autocast; the
other methods used here do not call submodules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from co2sam.config import LossConfig
from co2sam.losses import LOSS_NAMES, image_losses, reduce_batch, total_loss
from co2sam.train.data import TrainBatch


@dataclass
class BranchOutput:
    """What one branch predicts for the B images of a batch.

    embeddings: (B, 256, S/16, S/16) image embeddings E.
    low_res: B tensors (Ni, S/4, S/4) low-resolution mask logits m.
    masks: B tensors (Ni, S, S) float32 logits M = bilinear upsample of m (S frame).
    iou: B tensors (Ni,) predicted IoU.
    """

    embeddings: Tensor
    low_res: list[Tensor]
    masks: list[Tensor]
    iou: list[Tensor]


@dataclass
class Branches:
    """The three branches of a step, for the images that have boxes (``image_ids``)."""

    template: BranchOutput
    u_teacher: BranchOutput
    student: BranchOutput
    image_ids: list[str]
    skipped_ids: list[str]


def _branch(segmenter: Any, embeddings: Tensor, decoded: list) -> BranchOutput:
    low_res = [output.low_res_logits for output in decoded]
    return BranchOutput(
        embeddings=embeddings,
        low_res=low_res,
        masks=[segmenter.upscale(m.float()) for m in low_res],
        iou=[output.iou_scores for output in decoded],
    )


def forward_branches(
    segmenter: Any, batch: TrainBatch, *, strong_view: bool = True
) -> Branches | None:
    """Run the T-teacher, U-teacher and student on the images of ``batch`` that have boxes.

    Boxes (weak-view frame, original pixels) are scaled to the S frame. Returns None
    when no image of the batch has a box. ``strong_view=False`` feeds the student the
    weak view (ablation).
    """
    keep = [i for i, boxes in enumerate(batch.boxes) if len(boxes) > 0]
    skipped_ids = [batch.image_ids[i] for i in range(len(batch)) if i not in keep]
    if not keep:
        return None
    weak = segmenter.preprocess([batch.weak[i] for i in keep])
    strong_images = [(batch.strong if strong_view else batch.weak)[i] for i in keep]
    strong = segmenter.preprocess(strong_images)
    boxes = [
        segmenter.scale_boxes(torch.from_numpy(batch.boxes[i]), size)
        for i, size in zip(keep, weak.original_sizes, strict=True)
    ]

    # T-teacher: plain SAM on the weak view, a fixed template (no gradient, no copy).
    with torch.no_grad(), segmenter.adapters_disabled():
        embeddings, decoded = segmenter(weak.pixel_values, boxes)
        template = _branch(segmenter, embeddings, decoded)

    # U-teacher (weak view) and student (strong view) share the LoRA model: one forward
    # of 2B images gives both, with gradients (and a single DDP forward per step).
    pixel_values = torch.cat([weak.pixel_values, strong.pixel_values])
    embeddings, decoded = segmenter(pixel_values, boxes + boxes)
    count = len(keep)
    u_teacher = _branch(segmenter, embeddings[:count], decoded[:count])
    student = _branch(segmenter, embeddings[count:], decoded[count:])
    return Branches(
        template=template,
        u_teacher=u_teacher,
        student=student,
        image_ids=[batch.image_ids[i] for i in keep],
        skipped_ids=skipped_ids,
    )


def branch_losses(branches: Branches, config: LossConfig) -> dict[str, Tensor]:
    """Per-term losses of a batch: per image (:func:`co2sam.losses.image_losses`), then reduced."""
    t, u, s = branches.template, branches.u_teacher, branches.student
    num_masks = sum(len(masks) for masks in s.masks)
    per_image = [
        image_losses(
            student_masks=s.masks[i],
            student_iou=s.iou[i],
            u_masks=u.masks[i],
            t_masks=t.masks[i],
            u_embeddings=u.embeddings[i],
            t_embeddings=t.embeddings[i],
            u_low_res=u.low_res[i],
            t_low_res=t.low_res[i],
            config=config,
            num_masks=num_masks,
        )
        for i in range(len(branches.image_ids))
    ]
    return reduce_batch(per_image, config)


def training_step(
    segmenter: Any, batch: TrainBatch, config: LossConfig
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Forward the three branches and compute the Co2SAM loss.

    Returns ``(total, logs)``: ``total`` a scalar with gradient (None when no image of
    the batch has a box: skip the step), ``logs`` detached 0-d tensors: every loss term,
    ``total``, and the counts ``images``, ``skipped`` (images without a box), ``boxes``.
    """
    branches = forward_branches(segmenter, batch, strong_view=config.strong_view)
    if branches is None:
        zero = torch.zeros(())
        return None, {"images": zero, "skipped": torch.tensor(float(len(batch))), "boxes": zero}
    losses = branch_losses(branches, config)
    total = total_loss(losses, config)
    logs = {name: losses[name].detach() for name in LOSS_NAMES}
    logs["total"] = total.detach()
    logs["images"] = torch.tensor(float(len(branches.image_ids)))
    logs["skipped"] = torch.tensor(float(len(branches.skipped_ids)))
    logs["boxes"] = torch.tensor(float(sum(len(m) for m in branches.student.masks)))
    return total, logs
