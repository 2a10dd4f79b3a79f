"""Box -> mask pretraining of the demo SAM on the source domain (SAM's own pretraining, small).

Every parameter trains (encoder, prompt encoder, mask decoder), from random weights,
with SAM's supervised objective: for each ground-truth object, a jittered box around
it is the prompt and the object's visible pixels are the target;
loss = 20 * focal + dice (+ MSE of the IoU head against the true IoU). Only flips
augment the images: no photometric augmentation, so the model knows the source
appearance only (the target's shift is then a real shift).

Deterministic for a given seed, torch version and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from co2sam.classes import IGNORE_INDEX
from co2sam.losses import binary_mask_iou, dice_loss, sigmoid_focal_loss
from co2sam.prompts.oracle import dataset_instance_mask
from co2sam.prompts.simulate import perturb_boxes


@dataclass
class PretrainConfig:
    """Settings of the box -> mask pretraining."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    box_jitter: float = 0.05
    """Std of box-corner noise, as a fraction of the box side (a detector is not exact)."""
    focal_weight: float = 20.0
    seed: int = 0


@dataclass
class ObjectSet:
    """The source images with their objects, held in memory.

    images: (M, S, S, 3) uint8. boxes: per image (Ki, 4) XYXY pixels. targets: per image
    (Ki, S, S) float32 in {0, 1}. valid: per image (S, S) float32, 0 on ignore borders.
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    targets: list[np.ndarray]
    valid: list[np.ndarray]


def collect_objects(dataset: Any) -> ObjectSet:
    """Every image of ``dataset`` (VOC layout, with instance masks) and its object masks."""
    images, boxes, targets, valid = [], [], [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        instances = dataset_instance_mask(dataset, sample.id)
        if instances is None:
            raise ValueError(f"pretraining needs instance masks; {sample.id} has none")
        ids = [i for i in np.unique(instances) if i not in (0, IGNORE_INDEX)]
        masks = [(instances == i) for i in ids if (instances == i).sum() >= 10]
        if not masks:
            continue
        order = [_box_of(m) for m in masks]
        images.append(sample.image)
        boxes.append(np.asarray(order, np.float32))
        targets.append(np.stack(masks).astype(np.float32))
        valid.append((instances != IGNORE_INDEX).astype(np.float32))
    return ObjectSet(np.stack(images), boxes, targets, valid)


def _box_of(inside: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pretrain(
    segmenter: Any,
    objects: ObjectSet,
    config: PretrainConfig,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every parameter of ``segmenter`` (a Segmenter around a plain SamModel).

    Returns a summary (settings, final losses, seconds). The model is left in eval mode.
    """
    from co2sam.records import Boxes

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    parameters = list(segmenter.sam.parameters())
    for param in parameters:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 5 %
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    segmenter.train()
    count = len(objects.images)
    size = objects.images.shape[1:3]
    start = time.perf_counter()
    history = []
    for step in range(config.steps):
        chosen = rng.choice(count, size=min(config.batch_size, count), replace=False)
        images, prompts, targets, valid = [], [], [], []
        for index in chosen:
            image, target, ok = objects.images[index], objects.targets[index], objects.valid[index]
            boxes = objects.boxes[index]
            if rng.random() < 0.5:  # horizontal flip
                image, target, ok = image[:, ::-1], target[:, :, ::-1], ok[:, ::-1]
                boxes = boxes.copy()
                boxes[:, [0, 2]] = size[1] - boxes[:, [2, 0]]
            if rng.random() < 0.5:  # vertical flip
                image, target, ok = image[::-1], target[:, ::-1], ok[::-1]
                boxes = boxes.copy()
                boxes[:, [1, 3]] = size[0] - boxes[:, [3, 1]]
            noisy = perturb_boxes(
                Boxes(boxes, np.ones(len(boxes), np.int64), np.ones(len(boxes), np.float32)),
                size,
                rng,
                jitter=config.box_jitter,
                miss_rate=0.0,
                false_rate=0.0,
            )
            images.append(np.ascontiguousarray(image))
            prompts.append(torch.from_numpy(noisy.xyxy.astype(np.float32)))
            targets.append(torch.from_numpy(np.ascontiguousarray(target)))
            valid.append(torch.from_numpy(np.ascontiguousarray(ok)))
        prepared = segmenter.preprocess(images)
        scaled = [
            segmenter.scale_boxes(b, s)
            for b, s in zip(prompts, prepared.original_sizes, strict=True)
        ]
        _, outputs = segmenter(prepared.pixel_values, scaled)
        logits = torch.cat([segmenter.upscale(o.low_res_logits) for o in outputs])
        predicted_iou = torch.cat([o.iou_scores for o in outputs])
        target = torch.cat(targets)
        weight = torch.cat(
            [v[None].expand(len(t), -1, -1) for v, t in zip(valid, targets, strict=True)]
        )
        # Ignore borders: give the logits there the target's own sign so they cost ~nothing.
        logits_for_loss = torch.where(weight > 0, logits, (2 * target - 1) * 20.0)
        focal = sigmoid_focal_loss(logits_for_loss, target).mean()
        dice = dice_loss(logits_for_loss, target).mean()
        true_iou = binary_mask_iou(logits.detach(), target)
        iou = torch.nn.functional.mse_loss(predicted_iou, true_iou)
        loss = config.focal_weight * focal + dice + iou
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append((focal.item(), dice.item(), iou.item(), float(true_iou.mean())))
        if log is not None and (step + 1) % 50 == 0:
            recent = np.mean(history[-50:], axis=0)
            log(
                f"pretrain step {step + 1}/{config.steps}: focal {recent[0]:.4f} "
                f"dice {recent[1]:.3f} iou-mse {recent[2]:.4f} mask IoU {recent[3]:.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    for param in parameters:
        param.requires_grad_(False)
    segmenter.eval()
    final = np.mean(history[-50:], axis=0)
    return {
        "settings": asdict(config),
        "final": {
            "focal": float(final[0]),
            "dice": float(final[1]),
            "iou_mse": float(final[2]),
            "train_mask_iou": float(final[3]),
        },
        "seconds": round(time.perf_counter() - start, 1),
        "images": count,
        "objects": int(sum(len(b) for b in objects.boxes)),
    }
