"""A registry of SAM architectures (timm style: a plain dict of config builders).

``vit_b``/``vit_l``/``vit_h`` are the three published SAM image encoders (input 1024x1024);
``tiny`` is a small random model for tests and the demo (input 128x128, a forward pass
takes milliseconds on a CPU). All variants share SAM's prompt encoder and mask decoder
layout, so the official checkpoint mapping and the LoRA code work on every one of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import SamConfig, SamModel

PATCH_SIZE = 16
"""Every SAM variant embeds 16x16 patches: embeddings are (S/16) x (S/16)."""
META_DECODER_LAYER_NORM_EPS = 1e-5
"""eps of the LayerNorms in the mask decoder's two-way transformer in Meta's SAM
(``torch.nn.LayerNorm``'s default); transformers' ``SamMaskDecoderConfig`` defaults to
1e-6, which moves mask logits by ~1e-4 relative."""
META_VARIANTS = ("vit_b", "vit_l", "vit_h")
"""Variants whose weights are Meta's (official ``.pth`` files and their hub conversions)."""


def _sam_config(
    *,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    global_attn_indexes: list[int],
    image_size: int = 1024,
    window_size: int = 14,
    mlp_dim: int | None = None,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
) -> SamConfig:
    """A transformers ``SamConfig``; the prompt encoder and mask decoder are SAM's (256 wide)."""
    vision = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "global_attn_indexes": global_attn_indexes,
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "window_size": window_size,
        "output_channels": 256,
        # transformers' default (1e-10) makes a randomly built encoder output a constant.
        "initializer_range": 0.02,
    }
    if mlp_dim is not None:
        vision["mlp_dim"] = mlp_dim
    return SamConfig(
        vision_config=vision,
        prompt_encoder_config={
            "hidden_size": 256,
            "image_size": image_size,
            "patch_size": PATCH_SIZE,
        },
        mask_decoder_config={
            "hidden_size": 256,
            "mlp_dim": decoder_mlp_dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "iou_head_hidden_dim": iou_head_hidden_dim,
            "layer_norm_eps": META_DECODER_LAYER_NORM_EPS,
        },
    )


def vit_b() -> SamConfig:
    """SAM ViT-B (``sam_vit_b_01ec64.pth``, ``facebook/sam-vit-base``): 768 wide, 12 blocks."""
    return _sam_config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        global_attn_indexes=[2, 5, 8, 11],
    )


def vit_l() -> SamConfig:
    """SAM ViT-L (``sam_vit_l_0b3195.pth``, ``facebook/sam-vit-large``): 1024 wide, 24 blocks."""
    return _sam_config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        global_attn_indexes=[5, 11, 17, 23],
    )


def vit_h() -> SamConfig:
    """SAM ViT-H (``sam_vit_h_4b8939.pth``, ``facebook/sam-vit-huge``): 1280 wide, 32 blocks."""
    return _sam_config(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        global_attn_indexes=[7, 15, 23, 31],
    )


def tiny() -> SamConfig:
    """A small random SAM for tests and the demo: input 128x128, 2 encoder blocks 32 wide.

    Embeddings are (256, 8, 8) and low-res mask logits (32, 32), like real SAM's
    (256, 64, 64) and (256, 256) at 1/8 scale.
    """
    return _sam_config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        global_attn_indexes=[1],
        image_size=128,
        window_size=4,
        mlp_dim=64,
        decoder_mlp_dim=256,
        iou_head_hidden_dim=64,
    )


SAM_VARIANTS: dict[str, Callable[[], SamConfig]] = {
    "vit_b": vit_b,
    "vit_l": vit_l,
    "vit_h": vit_h,
    "tiny": tiny,
}
"""Registered SAM architectures: name -> builder of a transformers ``SamConfig``."""


def sam_config(variant: str) -> SamConfig:
    """The ``SamConfig`` of a registered variant; unknown names list the known ones."""
    if variant not in SAM_VARIANTS:
        known = ", ".join(sorted(SAM_VARIANTS))
        raise ValueError(f"Unknown SAM variant {variant!r}; registered variants: {known}.")
    return SAM_VARIANTS[variant]()


def meta_style_init(model: SamModel) -> SamModel:
    """Re-initialise ``model`` in place as Meta's SAM is, and return it.

    PyTorch's default init of every Linear, Conv and Embedding, and random Fourier
    position features with std 1 (shared by the prompt encoder). transformers' own init
    (std 0.02 everywhere, Fourier features with std ``hidden_size / 2``) is meant to be
    overwritten by a checkpoint: from it, mask logits start around 1e-4 and a model
    barely learns to localise its box prompts.
    """
    resettable = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)
    for module in model.modules():
        if isinstance(module, resettable):
            module.reset_parameters()
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )
    return model


def build_sam(variant: str, *, seed: int = 0) -> SamModel:
    """A ``SamModel`` of a registered variant with random weights, deterministic in ``seed``.

    The same (variant, seed) gives the same weights in every process, so an adapter
    trained on ``tiny`` loads back onto ``load_sam("tiny")``. Initialised as Meta's SAM
    (:func:`meta_style_init`), so random models give mask logits of a useful scale; the
    zero-initialised position tensors (``pos_embed``, ``rel_pos_*``) are drawn at random
    too, so that tests can tell them apart. The global RNG state is left untouched.
    """
    config = sam_config(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = meta_style_init(SamModel(config))
        with torch.no_grad():
            for name, param in model.vision_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return model


def fingerprint(config: SamConfig) -> dict[str, int | list[int]]:
    """What identifies an architecture: two models with equal fingerprints share LoRA shapes."""
    vision = config.vision_config
    return {
        "hidden_size": int(vision.hidden_size),
        "num_hidden_layers": int(vision.num_hidden_layers),
        "num_attention_heads": int(vision.num_attention_heads),
        "image_size": int(vision.image_size),
        "global_attn_indexes": [int(i) for i in vision.global_attn_indexes],
    }


def variant_name(config: SamConfig) -> str | None:
    """The registered variant whose architecture matches ``config``, or None."""
    target = fingerprint(config)
    for name, builder in SAM_VARIANTS.items():
        if fingerprint(builder()) == target:
            return name
    return None


def use_meta_layer_norm_eps(model: SamModel) -> SamModel:
    """Set the mask decoder's two-way-transformer LayerNorm eps to Meta's 1e-5, in place.

    For weights that are Meta's (e.g. a hub conversion whose config may carry
    transformers' default 1e-6): changes the config and every LayerNorm of
    ``model.mask_decoder.transformer``; the upscaling LayerNorm keeps 1e-6, as in Meta's
    code. Returns ``model``.
    """
    model.config.mask_decoder_config.layer_norm_eps = META_DECODER_LAYER_NORM_EPS
    for module in model.mask_decoder.transformer.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = META_DECODER_LAYER_NORM_EPS
    return model


def is_meta_variant(config: SamConfig) -> bool:
    """True for the ViT-B/L/H architectures, whose weights are Meta's."""
    return variant_name(config) in META_VARIANTS
