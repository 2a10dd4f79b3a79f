"""Official Meta SAM checkpoints (``sam_vit_b_01ec64.pth``, ...) <-> transformers ``SamModel``.

The two layouts differ only in names; one table of name templates drives both
directions, so the mapping is a bijection by construction (and a tiny model exported
and loaded back proves it). Loading is strict: a missing or unexpected key is an
error that names it. Files are read with ``torch.load(weights_only=True)``: no code
from a checkpoint ever runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import SamModel

from co2sam.models.lora import SplitQkv
from co2sam.models.meta_checkpoint import (
    CheckpointError,
    load_renamed,
    name_rules,
    registered_variant,
    rename_key,
    save_checkpoint_file,
)
from co2sam.models.variants import SAM_VARIANTS, fingerprint

TIED_KEY = "shared_image_embedding.positional_embedding"
"""transformers keeps a second (tied) copy of the prompt encoder's positional matrix."""

# (Meta name, transformers name); placeholders: {i} a number, {n} a digit,
# {mlp} an MLP of the mask decoder, {rest} the remaining dotted name. First match wins.
_NAME_TABLE: list[tuple[str, str]] = [
    ("image_encoder.patch_embed.proj.{rest}", "vision_encoder.patch_embed.projection.{rest}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm{n}.{rest}", "vision_encoder.layers.{i}.layer_norm{n}.{rest}"),
    ("image_encoder.blocks.{i}.{rest}", "vision_encoder.layers.{i}.{rest}"),
    ("image_encoder.neck.0.{rest}", "vision_encoder.neck.conv1.{rest}"),
    ("image_encoder.neck.1.{rest}", "vision_encoder.neck.layer_norm1.{rest}"),
    ("image_encoder.neck.2.{rest}", "vision_encoder.neck.conv2.{rest}"),
    ("image_encoder.neck.3.{rest}", "vision_encoder.neck.layer_norm2.{rest}"),
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{i}.{rest}", "prompt_encoder.point_embed.{i}.{rest}"),
    ("prompt_encoder.mask_downscaling.0.{rest}", "prompt_encoder.mask_embed.conv1.{rest}"),
    ("prompt_encoder.mask_downscaling.1.{rest}", "prompt_encoder.mask_embed.layer_norm1.{rest}"),
    ("prompt_encoder.mask_downscaling.3.{rest}", "prompt_encoder.mask_embed.conv2.{rest}"),
    ("prompt_encoder.mask_downscaling.4.{rest}", "prompt_encoder.mask_embed.layer_norm2.{rest}"),
    ("prompt_encoder.mask_downscaling.6.{rest}", "prompt_encoder.mask_embed.conv3.{rest}"),
    (
        "mask_decoder.transformer.layers.{i}.norm{n}.{rest}",
        "mask_decoder.transformer.layers.{i}.layer_norm{n}.{rest}",
    ),
    (
        "mask_decoder.transformer.norm_final_attn.{rest}",
        "mask_decoder.transformer.layer_norm_final_attn.{rest}",
    ),
    ("mask_decoder.output_upscaling.0.{rest}", "mask_decoder.upscale_conv1.{rest}"),
    ("mask_decoder.output_upscaling.1.{rest}", "mask_decoder.upscale_layer_norm.{rest}"),
    ("mask_decoder.output_upscaling.3.{rest}", "mask_decoder.upscale_conv2.{rest}"),
    # SAM's 3-layer MLPs: layers.0/1/2 <-> proj_in / layers.0 / proj_out.
    ("mask_decoder.{mlp}.layers.0.{rest}", "mask_decoder.{mlp}.proj_in.{rest}"),
    ("mask_decoder.{mlp}.layers.1.{rest}", "mask_decoder.{mlp}.layers.0.{rest}"),
    ("mask_decoder.{mlp}.layers.2.{rest}", "mask_decoder.{mlp}.proj_out.{rest}"),
]

_PLACEHOLDERS = {
    "i": r"\d+",
    "n": r"\d",
    "mlp": r"iou_prediction_head|output_hypernetworks_mlps\.\d+",
    "rest": r".+",
}
_META_TO_HF, _HF_TO_META = name_rules(_NAME_TABLE, _PLACEHOLDERS)


def meta_to_hf_key(key: str) -> str:
    """A Meta SAM state-dict key -> the transformers ``SamModel`` key."""
    renamed = rename_key(key, _META_TO_HF)
    return key if renamed is None else renamed  # the same in both layouts (decoder MLPs, ...)


def hf_to_meta_key(key: str) -> str:
    """A transformers ``SamModel`` state-dict key -> the Meta SAM key."""
    renamed = rename_key(key, _HF_TO_META)
    return key if renamed is None else renamed


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a Meta ``.pth`` file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"Cannot read SAM checkpoint {path}: {type(error).__name__}: {error}. "
            "The file is truncated or corrupt (or not a PyTorch checkpoint); download it again."
        ) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return state


def _official_fingerprint(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """(hidden size, depth, image size) read off the shapes of a Meta image encoder."""
    try:
        hidden = state["image_encoder.patch_embed.proj.weight"].shape[0]
        patch = state["image_encoder.patch_embed.proj.weight"].shape[-1]
        grid = state["image_encoder.pos_embed"].shape[1]
    except KeyError as error:
        raise CheckpointError(f"not a SAM image encoder: missing key {error}") from error
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    return {"hidden_size": int(hidden), "num_hidden_layers": depth, "image_size": grid * patch}


def detect_variant(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> str:
    """The registered variant whose encoder width, depth and input size match the weights."""
    found = _official_fingerprint(state)

    def matches(config) -> bool:
        reference = fingerprint(config)
        return all(reference[key] == value for key, value in found.items())

    return registered_variant(
        SAM_VARIANTS, matches, path, f"SAM variant has an image encoder with {found}"
    )


def load_official_state_dict(
    model: SamModel, state: dict[str, torch.Tensor], path: str | Path = "checkpoint"
) -> SamModel:
    """Copy a Meta state dict into ``model`` strictly; a missing/extra key is named."""
    # segment-anything's normalisation buffers, in some files; the Segmenter owns them.
    state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        hf_key = meta_to_hf_key(key)
        if hf_key in converted:
            raise CheckpointError(f"{path}: keys map to the same name {hf_key!r} ({key!r})")
        converted[hf_key] = tensor
    pe_key = "prompt_encoder.shared_embedding.positional_embedding"
    if pe_key in converted:
        converted[TIED_KEY] = converted[pe_key]
    expected = model.state_dict()
    unexpected = [k for k in state if meta_to_hf_key(k) not in expected]
    return load_renamed(
        model,
        converted,
        expected,
        unexpected,
        path=path,
        described=f"SAM {fingerprint(model.config)}",
        meta_name=hf_to_meta_key,
    )


def load_official_checkpoint(path: str | Path) -> SamModel:
    """A ``SamModel`` from an official Meta ``.pth``; the variant is read off the weights."""
    from co2sam.models.variants import build_sam

    state = read_official_checkpoint(path)
    variant = detect_variant(state, path)
    return load_official_state_dict(build_sam(variant), state, path)


def official_state_dict(model: SamModel) -> dict[str, torch.Tensor]:
    """The weights of a (plain, possibly qkv-split) ``SamModel`` in Meta's key layout."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key == TIED_KEY:
            continue
        if ".lora_" in key or ".base_layer." in key:
            raise ValueError("export a plain SamModel, not one with LoRA layers")
        state[hf_to_meta_key(key)] = tensor.detach().cpu().contiguous()
    for index, layer in enumerate(model.vision_encoder.layers):
        if isinstance(layer.attn.qkv, SplitQkv):
            prefix = f"image_encoder.blocks.{index}.attn.qkv"
            fused = layer.attn.qkv.fused()
            for part in ("q", "k", "v"):
                for name in ("weight", "bias"):
                    state.pop(f"{prefix}.{part}.{name}", None)
            state[f"{prefix}.weight"] = fused.weight.detach().cpu().contiguous()
            if fused.bias is not None:
                state[f"{prefix}.bias"] = fused.bias.detach().cpu().contiguous()
    return state


def export_official_checkpoint(model: SamModel, path: str | Path) -> Path:
    """Write ``model`` as a Meta SAM ``.pth`` (atomically: temp file, then rename)."""
    return save_checkpoint_file(official_state_dict(model), path)
