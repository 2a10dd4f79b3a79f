"""Meta's SAM 2 / 2.1 checkpoints (``sam2.1_hiera_base_plus.pt``, ...) <-> ``Sam2Model``.

A Meta file holds ``{"model": state_dict}`` of the whole video model. The image path
(Hiera trunk, FPN neck, prompt encoder, mask decoder, ``no_mem_embed``) maps by name onto
transformers' ``Sam2Model``; the video-only parts (memory attention and encoder, object
pointers, temporal encodings: :data:`VIDEO_ONLY`) are dropped. As for SAM's ``.pth``
(:mod:`co2sam.models.official`), one table of name templates drives both directions,
loading is strict for everything else (a missing or unexpected key is an error that
names it), the variant is read off the weights, and files are read with
``torch.load(weights_only=True)``.

Two tensors are not plain renames: Meta's four ``point_embeddings.{0..3}`` (1, C) are
transformers' one ``point_embed`` (4, C), and transformers keeps a second copy of the
prompt encoder's random Fourier matrix (``shared_image_embedding``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import Sam2Model

from co2sam.models.lora import SplitQkv
from co2sam.models.meta_checkpoint import (
    CheckpointError,
    load_renamed,
    name_rules,
    registered_variant,
    rename_key,
    save_checkpoint_file,
)
from co2sam.models.sam2 import SAM2_VARIANTS, build_sam2, sam2_fingerprint

TRUNK = "image_encoder.trunk."
"""Prefix of the Hiera trunk in Meta's keys (what tells a SAM 2 file from a SAM one)."""
SHARED_KEY = "shared_image_embedding.positional_embedding"
PE_KEY = "prompt_encoder.shared_embedding.positional_embedding"
POINT_KEY = "prompt_encoder.point_embed.weight"
META_POINT_KEY = "sam_prompt_encoder.point_embeddings.{}.weight"
NUM_POINT_EMBEDDINGS = 4

VIDEO_ONLY = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)
"""Key prefixes of Meta's video-only modules: not part of the image model, dropped."""

# (Meta name, transformers name); placeholders: {i} a number, {n} a digit, {mlp} a
# 3-layer MLP of the mask decoder, {attn} an attention of its two-way transformer,
# {rest} the remaining dotted name. First match wins, in both directions.
_HIERA = "vision_encoder.backbone."
_DOWN = "sam_prompt_encoder.mask_downscaling."
_NAME_TABLE: list[tuple[str, str]] = [
    (TRUNK + "patch_embed.proj.{rest}", _HIERA + "patch_embed.projection.{rest}"),
    (TRUNK + "blocks.{i}.norm{n}.{rest}", _HIERA + "blocks.{i}.layer_norm{n}.{rest}"),
    (TRUNK + "blocks.{i}.mlp.layers.0.{rest}", _HIERA + "blocks.{i}.mlp.proj_in.{rest}"),
    (TRUNK + "blocks.{i}.mlp.layers.1.{rest}", _HIERA + "blocks.{i}.mlp.proj_out.{rest}"),
    (TRUNK + "{rest}", _HIERA + "{rest}"),  # pos_embed*, blocks.i.attn.*, blocks.i.proj
    ("image_encoder.neck.convs.{i}.conv.{rest}", "vision_encoder.neck.convs.{i}.{rest}"),
    ("sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", PE_KEY),
    (_DOWN + "0.{rest}", "prompt_encoder.mask_embed.conv1.{rest}"),
    (_DOWN + "1.{rest}", "prompt_encoder.mask_embed.layer_norm1.{rest}"),
    (_DOWN + "3.{rest}", "prompt_encoder.mask_embed.conv2.{rest}"),
    (_DOWN + "4.{rest}", "prompt_encoder.mask_embed.layer_norm2.{rest}"),
    (_DOWN + "6.{rest}", "prompt_encoder.mask_embed.conv3.{rest}"),
    ("sam_prompt_encoder.{rest}", "prompt_encoder.{rest}"),  # no_mask_embed, not_a_point_embed
    (
        "sam_mask_decoder.transformer.layers.{i}.norm{n}.{rest}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{rest}",
    ),
    (
        "sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.{rest}",
        "mask_decoder.transformer.layers.{i}.mlp.proj_in.{rest}",
    ),
    (
        "sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.{rest}",
        "mask_decoder.transformer.layers.{i}.mlp.proj_out.{rest}",
    ),
    (
        "sam_mask_decoder.transformer.{attn}.out_proj.{rest}",
        "mask_decoder.transformer.{attn}.o_proj.{rest}",
    ),
    (
        "sam_mask_decoder.transformer.norm_final_attn.{rest}",
        "mask_decoder.transformer.layer_norm_final_attn.{rest}",
    ),
    ("sam_mask_decoder.output_upscaling.0.{rest}", "mask_decoder.upscale_conv1.{rest}"),
    ("sam_mask_decoder.output_upscaling.1.{rest}", "mask_decoder.upscale_layer_norm.{rest}"),
    ("sam_mask_decoder.output_upscaling.3.{rest}", "mask_decoder.upscale_conv2.{rest}"),
    ("sam_mask_decoder.{mlp}.layers.0.{rest}", "mask_decoder.{mlp}.proj_in.{rest}"),
    ("sam_mask_decoder.{mlp}.layers.1.{rest}", "mask_decoder.{mlp}.layers.0.{rest}"),
    ("sam_mask_decoder.{mlp}.layers.2.{rest}", "mask_decoder.{mlp}.proj_out.{rest}"),
    ("sam_mask_decoder.{rest}", "mask_decoder.{rest}"),  # tokens, conv_s0/s1, q/k/v_proj
    ("no_mem_embed", "no_memory_embedding"),
]

_PLACEHOLDERS = {
    "i": r"\d+",
    "n": r"\d",
    "mlp": r"iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+",
    "attn": r"layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"|final_attn_token_to_image",
    "rest": r".+",
}
_META_TO_HF, _HF_TO_META = name_rules(_NAME_TABLE, _PLACEHOLDERS)


def meta_to_hf_key(key: str) -> str | None:
    """A Meta SAM 2 image-path key -> the ``Sam2Model`` key (None: no such image-path key)."""
    return rename_key(key, _META_TO_HF)


def hf_to_meta_key(key: str) -> str | None:
    """A ``Sam2Model`` key -> the Meta SAM 2 key (None: not a mapped key)."""
    return rename_key(key, _HF_TO_META)


def is_sam2_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint's state dict is a SAM 2 model (a Hiera trunk, not SAM's ViT)."""
    return any(key.startswith(TRUNK) for key in state)


def is_video_only(key: str) -> bool:
    return key.startswith(VIDEO_ONLY)


def detect_sam2_variant(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> str:
    """The registered SAM 2 variant whose Hiera width and depth match the weights."""
    try:
        width = int(state[TRUNK + "patch_embed.proj.weight"].shape[0])
    except KeyError as error:
        raise CheckpointError(f"{path}: not a SAM 2 image encoder: missing key {error}") from error
    blocks = {key.split(".")[3] for key in state if key.startswith(TRUNK + "blocks.")}
    found = {"width": width, "depth": len(blocks)}

    def matches(config) -> bool:
        reference = sam2_fingerprint(config)
        width_depth = reference["embed_dim_per_stage"][0], sum(reference["blocks_per_stage"])
        return width_depth == (width, len(blocks))

    return registered_variant(
        SAM2_VARIANTS, matches, path, f"SAM 2 variant has a Hiera trunk with {found}"
    )


def load_sam2_state_dict(
    model: Sam2Model, state: dict[str, torch.Tensor], path: str | Path = "checkpoint"
) -> Sam2Model:
    """Copy a Meta SAM 2 state dict into ``model`` strictly (video-only keys dropped)."""
    expected = model.state_dict()
    points = [META_POINT_KEY.format(index) for index in range(NUM_POINT_EMBEDDINGS)]
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if is_video_only(key) or key in points:
            continue
        hf_key = meta_to_hf_key(key)
        if hf_key is None or hf_key not in expected:
            unexpected.append(key)
        elif hf_key in converted:
            raise CheckpointError(f"{path}: keys map to the same name {hf_key!r} ({key!r})")
        else:
            converted[hf_key] = tensor
    if all(key in state for key in points):
        converted[POINT_KEY] = torch.cat([state[key] for key in points])
    if PE_KEY in converted:
        converted[SHARED_KEY] = converted[PE_KEY]
    return load_renamed(
        model,
        converted,
        expected,
        unexpected,
        path=path,
        described=f"SAM 2 {sam2_fingerprint(model.config)}",
        meta_name=lambda key: hf_to_meta_key(key) or key,
    )


def load_sam2_state(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> Sam2Model:
    """A ``Sam2Model`` from a Meta SAM 2 state dict; the variant is read off the weights."""
    return load_sam2_state_dict(build_sam2(detect_sam2_variant(state, path)), state, path)


def load_sam2_checkpoint(path: str | Path) -> Sam2Model:
    """A ``Sam2Model`` from Meta's ``sam2.1_hiera_*.pt`` (or ``sam2_hiera_*.pt``) file."""
    from co2sam.models.official import read_official_checkpoint

    return load_sam2_state(read_official_checkpoint(path), path)


_SPLIT_QKV = re.compile(r"\.attn\.qkv\.[qkv]\.")


def sam2_official_state_dict(model: Sam2Model) -> dict[str, torch.Tensor]:
    """The image-path weights of a (plain, possibly qkv-split) ``Sam2Model``, Meta's names."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if ".lora_" in key or ".base_layer." in key:
            raise ValueError("export a plain Sam2Model, not one with LoRA layers")
        if key == SHARED_KEY or _SPLIT_QKV.search(key):
            continue  # the second Fourier copy; split qkv parts are fused below
        if key == POINT_KEY:
            for index, row in enumerate(tensor.detach().cpu()):
                state[META_POINT_KEY.format(index)] = row[None].contiguous()
            continue
        meta = hf_to_meta_key(key)
        if meta is None:
            raise ValueError(f"no Meta name for {key!r}")
        state[meta] = tensor.detach().cpu().contiguous()
    for index, block in enumerate(model.vision_encoder.backbone.blocks):
        if isinstance(block.attn.qkv, SplitQkv):
            fused = block.attn.qkv.fused()
            state[f"{TRUNK}blocks.{index}.attn.qkv.weight"] = fused.weight.detach().cpu()
            state[f"{TRUNK}blocks.{index}.attn.qkv.bias"] = fused.bias.detach().cpu()
    return state


def export_sam2_checkpoint(model: Sam2Model, path: str | Path) -> Path:
    """Write ``model``'s image path as a Meta-style ``{"model": state}`` file (atomically).

    Meta's own video builder also expects the memory modules, which a ``Sam2Model``
    does not have; co2sam (``load_sam``) reads the file back.
    """
    return save_checkpoint_file({"model": sam2_official_state_dict(model)}, path)
