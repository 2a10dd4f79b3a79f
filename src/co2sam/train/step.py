"""One Co2SAM training step: dual teachers, one student (SPEC.md, "Training step").

| branch    | weights              | input       | gradient |
|-----------|----------------------|-------------|----------|
| T-teacher | plain SAM (LoRA off) | weak view   | no       |
| U-teacher | SAM + LoRA           | weak view   | yes      |
| student   | SAM + LoRA (shared)  | strong view | yes      |

``segmenter`` is a :class:`co2sam.sam.Segmenter` or the same wrapped by
``fabric.setup`` (its ``forward`` = encode + decode goes through DDP/autocast; the
other methods used here do not call submodules).

The T-teacher never changes, so a :class:`co2sam.train.template_cache.TemplateCache`
can keep what it predicts for each weak view and skip its forward on later visits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from co2sam.config import LossConfig
from co2sam.losses import (
    LOSS_NAMES,
    box_prototypes,
    contrastive_pooling,
    image_losses,
    reduce_batch,
    total_loss,
)
from co2sam.train.data import TrainBatch
from co2sam.train.template_cache import TemplateCache, view_key


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
class TemplateOutput:
    """What the losses need from the T-teacher, for the B images of a batch.

    masks: B tensors (Ni, S, S) float32 logits M_t = bilinear upsample of the low-res
        logits m_t. For views served by the template cache, M_t keeps only its signs
        (all the losses read: the target [M_t > 0]), not its magnitudes.
    prototypes: B tensors (Ni, 256) float32 box prototypes (losses.box_prototypes).
    cached: how many of the B images came from the template cache.
    """

    masks: list[Tensor]
    prototypes: list[Tensor]
    cached: int = 0


@dataclass
class Branches:
    """The three branches of a step, for the images that have boxes (``image_ids``)."""

    template: TemplateOutput
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


def template_branch(
    segmenter: Any,
    pixel_values: Tensor,
    boxes: list[Tensor],
    *,
    pooling: str,
    keys: list[str] | None = None,
    cache: TemplateCache | None = None,
) -> TemplateOutput:
    """The T-teacher (plain SAM: adapters off, no gradient) on B preprocessed weak views.

    pixel_values: (B, 3, S, S); boxes: B tensors (Ni, 4) in the S frame; pooling: how
    box prototypes are pooled (losses.contrastive_pooling). With a ``cache`` and the
    views' ``keys``, kept views are not recomputed and new ones are kept.
    """
    count = len(boxes)
    found = (
        [cache.get(key, pixel_values.device) for key in keys]
        if cache is not None
        else [None] * count
    )
    missing = [i for i, entry in enumerate(found) if entry is None]
    if missing:
        pixels = pixel_values if len(missing) == count else pixel_values[missing]
        with torch.no_grad(), segmenter.adapters_disabled():
            embeddings, decoded = segmenter(pixels, [boxes[i] for i in missing])
            for row, i in enumerate(missing):
                low_res = decoded[row].low_res_logits
                prototypes = box_prototypes(embeddings[row], low_res, pooling=pooling)
                found[i] = (low_res, prototypes)
                if cache is not None:
                    cache.put(keys[i], low_res, prototypes)
    return TemplateOutput(
        masks=[segmenter.upscale(entry[0].float()) for entry in found],
        prototypes=[entry[1] for entry in found],
        cached=count - len(missing),
    )


def forward_branches(
    segmenter: Any,
    batch: TrainBatch,
    *,
    strong_view: bool = True,
    pooling: str = "sigmoid",
    cache: TemplateCache | None = None,
) -> Branches | None:
    """Run the T-teacher, U-teacher and student on the images of ``batch`` that have boxes.

    Boxes (weak-view frame, original pixels) are scaled to the S frame. Returns None
    when no image of the batch has a box. ``strong_view=False`` feeds the student the
    weak view (ablation). ``pooling``: the T-teacher's prototype pooling
    (losses.contrastive_pooling). ``cache``: T-teacher outputs kept across steps.
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
    keys = None
    if cache is not None:
        keys = [view_key(batch.weak[i], batch.boxes[i], pooling) for i in keep]
    template = template_branch(
        segmenter, weak.pixel_values, boxes, pooling=pooling, keys=keys, cache=cache
    )

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
            u_low_res=u.low_res[i],
            t_prototypes=t.prototypes[i],
            config=config,
            num_masks=num_masks,
        )
        for i in range(len(branches.image_ids))
    ]
    return reduce_batch(per_image, config)


def training_step(
    segmenter: Any,
    batch: TrainBatch,
    config: LossConfig,
    template_cache: TemplateCache | None = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Forward the three branches and compute the Co2SAM loss.

    Returns ``(total, logs)``: ``total`` a scalar with gradient (None when no image of
    the batch has a box: skip the step), ``logs`` detached 0-d tensors: every loss term,
    ``total``, and the counts ``images``, ``skipped`` (images without a box), ``boxes``,
    ``templates_cached`` (images whose T-teacher came from ``template_cache``).
    """
    branches = forward_branches(
        segmenter,
        batch,
        strong_view=config.strong_view,
        pooling=contrastive_pooling(config),
        cache=template_cache,
    )
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
    logs["templates_cached"] = torch.tensor(float(branches.template.cached))
    return total, logs
