"""Learning-rate schedule: linear warm-up, then step decay at fixed milestones."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from co2sam.config import OptimConfig


def lr_factor(step: int, *, warmup_steps: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    ``step / warmup_steps`` during warm-up (0 at step 0, as in the reference), then
    1, then ``gamma ** k`` once ``step`` has passed ``k`` milestones
    (defaults: x0.1 from step 60,000, x0.01 from step 86,666).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    passed = sum(step >= milestone for milestone in milestones)
    return gamma**passed


def make_lr_lambda(
    config: OptimConfig, images_per_step: int = 1, *, start_step: int = 0, start_images: int = 0
) -> Callable[[int], float]:
    """The ``LambdaLR`` function for ``config`` (a plain closure over its numbers).

    images_per_step: the effective batch, ``train.batch_size x processes``; with
        ``schedule_unit: image`` the warm-up and milestones count images: ``start_images``
        (what the steps before ``start_step`` covered, in a resumed run that may have had
        another effective batch) plus ``images_per_step`` per step since.
    """
    warmup, milestones, gamma = config.warmup_steps, tuple(config.milestones), config.gamma
    by_image = config.schedule_unit == "image"

    def factor(step: int) -> float:
        position = start_images + (step - start_step) * images_per_step if by_image else step
        return lr_factor(position, warmup_steps=warmup, milestones=milestones, gamma=gamma)

    return factor


def build_optimizer(
    parameters: Sequence[torch.nn.Parameter],
    config: OptimConfig,
    images_per_step: int = 1,
    *,
    start_step: int = 0,
    start_images: int = 0,
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (lr, weight decay from ``config``) on ``parameters`` and its LambdaLR schedule.

    The scheduler is stepped once per optimizer step; ``images_per_step`` is the
    effective batch, ``start_step`` / ``start_images`` where a resumed run's schedule
    stood (see :func:`make_lr_lambda`).
    """
    if not parameters:
        raise ValueError("no trainable parameters: attach LoRA adapters before training")
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = make_lr_lambda(
        config, images_per_step, start_step=start_step, start_images=start_images
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler
