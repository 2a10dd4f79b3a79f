"""SAM's image-encoder attention with its relative-position bias folded into q and k.

Every attention score of SAM's image encoder carries a decomposed relative-position
bias (MViTv2): for query i at (row, col) and key j at (h(j), w(j)),

    s_ij = scale * q_i . k_j + rel_h[i, h(j)] + rel_w[i, w(j)]

with ``rel_h[i, :] = q_i . R_h[row - rows]`` an (L, H) table, ``rel_w`` an (L, W) one.
The bias is itself a dot product, of ``[rel_h[i], rel_w[i]]`` with the one-hot
``[e_h(j), e_w(j)]``, so the scores are those of a plain attention over a longer head:

    s_ij = [scale * q_i, rel_h[i], rel_w[i]] . [k_j, e_h(j), e_w(j)]

transformers' SDPA path instead builds the (B, heads, L, L) bias: 4096 x 4096 per head
in ViT's global blocks at 1024 (400 MB per image in bf16), a bias gradient of the same
size in training, and no flash kernel. Folded, ViT-B's global blocks attend over head
dimension 64 + 64 + 64 = 192 and its 14 x 14 windows over 64 + 28 -> 96 (multiple of
8): flash attention applies (CUDA). Same function, float rounding apart.

``model.attention`` (:data:`ATTENTION_KINDS`): ``auto`` folds in bf16/fp16 on CUDA and
keeps transformers' SDPA path elsewhere; ``folded``, ``sdpa``, ``eager`` force one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

ATTENTION_KINDS = ("auto", "folded", "sdpa", "eager")
"""Image-encoder attention implementations :func:`set_attention` installs."""


def key_positions(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(H*W, H+W) one-hot rows and columns of the keys, row-major: ``[e_h(j), e_w(j)]``."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.cat([F.one_hot(rows, height).to(dtype), F.one_hot(cols, width).to(dtype)], dim=-1)


def folded_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rel_h: Tensor,
    rel_w: Tensor,
    *,
    scale: float,
    pad_value: bool,
) -> Tensor:
    """Attention with SAM's decomposed bias as one SDPA call without a bias.

    query, key, value: (B, heads, L, d) with L = H*W (row-major); rel_h: (B, heads, L, H)
    and rel_w: (B, heads, L, W), the bias tables. Returns (B, heads, L, d).
    ``pad_value``: zero-pad v to the folded head dimension (flash kernels need equal
    q/k/v head sizes; CPU and memory-efficient kernels do not).
    """
    batch, heads, length, dim = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    folded = dim + height + width
    padding = -folded % 8
    positions = key_positions(height, width, query.device, query.dtype)
    query = torch.cat([query * scale, rel_h.to(query.dtype), rel_w.to(query.dtype)], dim=-1)
    key = torch.cat([key, positions.expand(batch, heads, length, height + width)], dim=-1)
    if padding:
        query, key = F.pad(query, (0, padding)), F.pad(key, (0, padding))
    if pad_value:
        value = F.pad(value, (0, folded + padding - dim))
    output = F.scaled_dot_product_attention(query, key, value, scale=1.0)
    return output[..., :dim]


class FoldedAttention(SamVisionAttention):
    """SAM vision attention computed by :func:`folded_attention` (same parameters)."""

    def forward(self, hidden_states: Tensor, output_attentions: bool = False) -> tuple:
        """hidden_states: (B, H, W, C) -> ((B, H, W, C), None)."""
        batch, height, width, _ = hidden_states.shape
        heads = self.num_attention_heads
        qkv = self.qkv(hidden_states).reshape(batch, height * width, 3, heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, d)
        if not self.use_rel_pos:
            output = F.scaled_dot_product_attention(query, key, value)
        else:
            table_h = self.get_rel_pos(height, height, self.rel_pos_h)  # (H, H, d)
            table_w = self.get_rel_pos(width, width, self.rel_pos_w)  # (W, W, d)
            grid = query.reshape(batch, heads, height, width, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, table_h)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, table_w)
            output = folded_attention(
                query,
                key,
                value,
                rel_h.reshape(batch, heads, height * width, height),
                rel_w.reshape(batch, heads, height * width, width),
                scale=self.scale,
                pad_value=query.is_cuda,
            )
        output = output.reshape(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(output.reshape(batch, height, width, -1)), None


def half_precision_cuda(hidden_states: Tensor) -> bool:
    """Whether attention on these inputs runs in bf16/fp16 on CUDA (where flash kernels are)."""
    if not hidden_states.is_cuda:
        return False
    half = (torch.bfloat16, torch.float16)
    return hidden_states.dtype in half or (
        torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half
    )


class AutoAttention(FoldedAttention):
    """Folded where flash kernels run (bf16/fp16 on CUDA), transformers' SDPA elsewhere.

    In float32 on CUDA the folded head (192 wide) has no flash kernel and ran 0.66x as
    fast as SDPA (H200, ViT-B at 1024, benchmarks/RESULTS.md); on a CPU in float32 SDPA
    was also the faster (inference at 1024: 6.2-6.3 s per image against 8.5-8.7 s folded).
    """

    def forward(self, hidden_states: Tensor, output_attentions: bool = False) -> tuple:
        if half_precision_cuda(hidden_states):
            return super().forward(hidden_states)
        return SamVisionSdpaAttention.forward(self, hidden_states)


_CLASSES = {
    "auto": AutoAttention,
    "folded": FoldedAttention,
    "sdpa": SamVisionSdpaAttention,
    "eager": SamVisionAttention,
}


def set_attention(vision_encoder: torch.nn.Module, kind: str) -> None:
    """Make every attention block of a SAM (ViT) image encoder compute with ``kind``.

    Swaps the blocks' class in place; their parameters (qkv, proj, rel_pos_*) and any
    LoRA layers inside them stay as they are. Encoders without SAM's attention blocks
    (other backbones) are left alone.
    """
    if kind not in _CLASSES:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
    for module in vision_encoder.modules():
        if isinstance(module, SamVisionAttention):
            module.__class__ = _CLASSES[kind]
