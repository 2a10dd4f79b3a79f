"""AdamW with per-group learning rates and the warm-up + poly schedule of the second stage.

Parameter groups (mmsegmentation's ``paramwise_cfg`` / detectron2's backbone multiplier):
backbone parameters get ``lr x backbone_lr_mult``, the rest (decode head, Mask2Former's
pixel and transformer decoders) ``lr x head_lr_mult``; parameters of normalisation
layers get ``norm_weight_decay`` instead of ``weight_decay``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from co2sam.distill.config import DistillOptimConfig


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    warmup_ratio: float,
    power: float,
) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    Warm-up: linear from ``warmup_ratio`` (step 0) to 1 (step ``warmup_steps``); then
    poly decay ``(1 - (step - warmup) / (total - warmup)) ** power``, reaching 0 at
    ``total_steps`` (mmsegmentation's LinearLR + PolyLR, eta_min 0).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / remaining, 1.0)
    return (1.0 - progress) ** power


def is_norm_parameter(name: str, module: nn.Module) -> bool:
    """Whether a parameter belongs to a normalisation layer (LayerNorm, BatchNorm, GroupNorm)."""
    return (
        isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.modules.batchnorm._BatchNorm)
        or "norm" in name.rsplit(".", 1)[0].split(".")[-1]
    )


def parameter_groups(
    model: nn.Module, backbone_prefixes: tuple[str, ...], config: DistillOptimConfig
) -> list[dict]:
    """AdamW groups: (backbone | head) x (norm | other), with their lr and weight decay.

    Each group carries ``name`` and ``lr_mult`` (kept for the logs and the schedule).
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            backbone = name.startswith(backbone_prefixes)
            norm = is_norm_parameter(name, module)
            groups.setdefault((backbone, norm), []).append(param)
    result = []
    for (backbone, norm), params in sorted(groups.items()):
        mult = config.backbone_lr_mult if backbone else config.head_lr_mult
        result.append(
            {
                "params": params,
                "name": f"{'backbone' if backbone else 'head'}{'-norm' if norm else ''}",
                "lr": config.lr * mult,
                "lr_mult": mult,
                "weight_decay": config.norm_weight_decay if norm else config.weight_decay,
            }
        )
    return result


def build_optimizer(
    model: nn.Module,
    backbone_prefixes: tuple[str, ...],
    config: DistillOptimConfig,
    total_steps: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`parameter_groups` and its per-step LambdaLR (warm-up + poly)."""
    groups = parameter_groups(model, backbone_prefixes, config)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_lr_lambda(config, total_steps))
    return optimizer, scheduler


def make_lr_lambda(config: DistillOptimConfig, total_steps: int) -> Callable[[int], float]:
    """The LambdaLR function (a plain closure over numbers: the scheduler state pickles)."""
    warmup, ratio, power = config.warmup_steps, config.warmup_ratio, config.poly_power

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup_steps=warmup, warmup_ratio=ratio, power=power
        )

    return factor
