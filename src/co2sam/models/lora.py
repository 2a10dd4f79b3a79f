"""LoRA on the q and v projections of SAM's image encoder (peft).

SAM fuses q, k and v into one ``attn.qkv`` Linear (output ``[q | k | v]``), while peft
adapts whole modules. :func:`split_qkv` replaces every fused Linear by a
:class:`SplitQkv` holding three Linears with the same weights, so peft can target
``qkv.q`` and ``qkv.v`` and leave ``qkv.k`` untouched.

SAM-HQ keeps SAM's ViT (same module names); SAM 2's Hiera blocks fuse q, k and v the
same way (``attn.qkv``, output ``[q | k | v]``, reshaped to (..., 3, heads, d)), so
the one split serves all three model classes (:data:`QKV_MODULES`).
"""

from __future__ import annotations

import re
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

QKV_MODULES: dict[str, str] = {
    "SamModel": r"vision_encoder\.layers\.\d+\.attn\.qkv",
    "SamHQModel": r"vision_encoder\.layers\.\d+\.attn\.qkv",
    "Sam2Model": r"vision_encoder\.backbone\.blocks\.\d+\.attn\.qkv",
}
"""Model class name -> names (regex, full match) of its image encoder's fused qkv Linears."""


def qkv_modules(model: nn.Module) -> str:
    """The fused-qkv module names of ``model`` (a plain transformers SAM-family model)."""
    name = type(model).__name__
    if name not in QKV_MODULES:
        known = ", ".join(QKV_MODULES)
        raise ValueError(f"no LoRA placement known for {name}; supported: {known}")
    return QKV_MODULES[name]


def lora_target_modules(model: nn.Module) -> str:
    """The peft ``target_modules`` regex of ``model``: the q and v parts of every fused qkv."""
    return ".*" + qkv_modules(model) + r"\.(q|v)"


LORA_TARGET_MODULES = ".*" + QKV_MODULES["SamModel"] + r"\.(q|v)"
"""Module names peft adapts in SAM: the q and v Linears of every image-encoder block."""


class SplitQkv(nn.Module):
    """SAM's fused qkv Linear as three Linears: ``forward(x) = cat([q(x), k(x), v(x)], -1)``.

    x: (..., C) -> (..., 3C), equal to the fused Linear it was built from.
    """

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        width = fused.out_features // 3
        self.q, self.k, self.v = (
            nn.Linear(
                fused.in_features,
                width,
                bias=fused.bias is not None,
                device=fused.weight.device,
                dtype=fused.weight.dtype,
            )
            for _ in range(3)
        )
        with torch.no_grad():
            for index, linear in enumerate((self.q, self.k, self.v)):
                rows = slice(index * width, (index + 1) * width)
                linear.weight.copy_(fused.weight[rows])
                if fused.bias is not None:
                    linear.bias.copy_(fused.bias[rows])
                linear.weight.requires_grad_(fused.weight.requires_grad)
                if linear.bias is not None:
                    linear.bias.requires_grad_(fused.weight.requires_grad)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(hidden_states), self.k(hidden_states), self.v(hidden_states)], -1)

    def fused(self) -> nn.Linear:
        """The equivalent fused Linear (base weights only; LoRA, if any, is not merged)."""
        q, k, v = (getattr(m, "base_layer", m) for m in (self.q, self.k, self.v))
        linear = nn.Linear(
            q.in_features, 3 * q.out_features, bias=q.bias is not None, device=q.weight.device
        )
        with torch.no_grad():
            linear.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            if q.bias is not None:
                linear.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        return linear.to(q.weight.dtype)


def split_qkv(model: PreTrainedModel) -> PreTrainedModel:
    """Replace every image-encoder block's fused ``attn.qkv`` by a :class:`SplitQkv`, in place.

    model: a ``SamModel``, ``SamHQModel`` or ``Sam2Model`` (:data:`QKV_MODULES`).
    Idempotent: already split blocks are left alone.
    """
    pattern = re.compile(qkv_modules(model))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and pattern.fullmatch(name):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SplitQkv(module))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients for every parameter and switch to eval mode (SAM has no dropout)."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def attach_lora(model: PreTrainedModel, rank: int = 4, alpha: float = 4.0) -> PeftModel:
    """SAM with LoRA of rank ``rank`` on the q and v projections of every encoder block.

    model: a plain ``SamModel``, ``SamHQModel`` or ``Sam2Model``. The base weights are
    frozen; only the LoRA matrices train (rank 4: SAM and SAM-HQ ViT-B 147,456
    parameters, SAM 2.1 Hiera-B+ 165,760). peft's default init (A kaiming-uniform with
    a = sqrt(5), B = 0) makes the adapted model equal to the plain model at start. The
    update is scaled by alpha / rank.
    """
    if isinstance(model, PeftModel):
        raise ValueError("attach_lora expects a plain SamModel; this model already has adapters.")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    freeze(split_qkv(model))
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=lora_target_modules(model),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
    )
    with warnings.catch_warnings():
        # peft asks transformers a deprecated question; nothing the user can act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        param.requires_grad_(is_lora_name(name))
    return peft_model.eval()


def is_lora_name(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA matrix (``...lora_A...``/``...lora_B...``)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters of a model, selected by name (empty for plain SAM)."""
    return [param for name, param in model.named_parameters() if is_lora_name(name)]
