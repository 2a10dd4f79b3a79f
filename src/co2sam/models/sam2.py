"""SAM 2.1 (``Sam2Model``, image path): a Hiera encoder with an FPN neck, SAM's decoder.

What differs from SAM, and how :class:`Sam2Segmenter` handles it:

- Input: the image is resized to SxS *ignoring its aspect ratio* (no padding), with
  SAM's ImageNet mean/std. So the "resized" size of every image is (S, S) and boxes
  scale by (S/W, S/H) (:meth:`Sam2Segmenter.resized_size`).
- Encoder: Hiera blocks (q, k, v fused in ``attn.qkv`` as in SAM, so q/v LoRA splits it
  the same way) give four stages; the FPN neck keeps three levels at strides 4, 8, 16.
  The mask decoder reads the stride-16 level plus ``no_memory_embedding`` (what SAM 2
  adds for an image without video memory) as E (B, 256, S/16, S/16), and the stride-4
  and stride-8 levels, projected by its ``conv_s0``/``conv_s1``, as high-resolution
  features: :class:`~co2sam.models.segmenter.ImageFeatures` carries all three.
- Decoder: one mask per box (``multimask_output=False``). SAM 2's decoder would, in
  eval mode only, swap in its best multimask output when the single mask is unstable
  (``dynamic_multimask_via_stability``); that makes the output depend on train/eval
  mode, so it is off unless ``dynamic_multimask=True``. IoU predictions are sigmoided
  (in [0, 1]; SAM's are raw).
- Post-processing: low-res logits are resized straight to the original (H, W), as SAM
  2's processor does.

Architectures (random weights) are registered: ``sam2_hiera_tiny``/``small``/
``base_plus``/``large`` (hub ``facebook/sam2.1-hiera-*``, Meta's ``sam2.1_hiera_*.pt``)
and ``tiny_sam2`` (input 128, four one- or two-block stages, 32 wide decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

from co2sam.models.segmenter import ImageFeatures, Segmenter, checkpoint_each
from co2sam.models.variants import meta_style_init


def _sam2_config(
    *,
    embed_dims: Sequence[int],
    heads: Sequence[int],
    blocks: Sequence[int],
    global_blocks: Sequence[int],
    background: Sequence[int] = (7, 7),
    windows: Sequence[int] = (8, 4, 14, 7),
    image_size: int = 1024,
    width: int = 256,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
) -> Sam2Config:
    """A transformers ``Sam2Config``: Hiera with ``blocks`` per stage, a ``width`` wide
    FPN neck, prompt encoder and mask decoder (SAM 2's is 256)."""
    backbone = Sam2HieraDetConfig(
        image_size=[image_size, image_size],
        hidden_size=embed_dims[0],
        embed_dim_per_stage=list(embed_dims),
        num_attention_heads_per_stage=list(heads),
        blocks_per_stage=list(blocks),
        global_attention_blocks=list(global_blocks),
        window_positional_embedding_background_size=list(background),
        window_size_per_stage=list(windows),
    )
    stride4 = image_size // 4
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=list(reversed(embed_dims)),
        backbone_feature_sizes=[[stride4 >> level] * 2 for level in range(3)],
        fpn_hidden_size=width,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": width, "image_size": image_size, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": width,
            "mlp_dim": decoder_mlp_dim,
            "iou_head_hidden_dim": iou_head_hidden_dim,
        },
    )


def sam2_hiera_tiny() -> Sam2Config:
    """SAM 2.1 Hiera-T (``sam2.1_hiera_tiny.pt``): 96 wide, blocks [1, 2, 7, 2]."""
    return _sam2_config(
        embed_dims=(96, 192, 384, 768), heads=(1, 2, 4, 8), blocks=(1, 2, 7, 2),
        global_blocks=(5, 7, 9),
    )  # fmt: skip


def sam2_hiera_small() -> Sam2Config:
    """SAM 2.1 Hiera-S (``sam2.1_hiera_small.pt``): 96 wide, blocks [1, 2, 11, 2]."""
    return _sam2_config(
        embed_dims=(96, 192, 384, 768), heads=(1, 2, 4, 8), blocks=(1, 2, 11, 2),
        global_blocks=(7, 10, 13),
    )  # fmt: skip


def sam2_hiera_base_plus() -> Sam2Config:
    """SAM 2.1 Hiera-B+ (``sam2.1_hiera_base_plus.pt``): 112 wide, blocks [2, 3, 16, 3]."""
    return _sam2_config(
        embed_dims=(112, 224, 448, 896), heads=(2, 4, 8, 16), blocks=(2, 3, 16, 3),
        global_blocks=(12, 16, 20), background=(14, 14),
    )  # fmt: skip


def sam2_hiera_large() -> Sam2Config:
    """SAM 2.1 Hiera-L (``sam2.1_hiera_large.pt``): 144 wide, blocks [2, 6, 36, 4]."""
    return _sam2_config(
        embed_dims=(144, 288, 576, 1152), heads=(2, 4, 8, 16), blocks=(2, 6, 36, 4),
        global_blocks=(23, 33, 43), windows=(8, 4, 16, 8),
    )  # fmt: skip


def tiny_sam2() -> Sam2Config:
    """A small random SAM 2 for tests: input 128, Hiera 8-64 wide, 32 wide decoder.

    Embeddings E are (32, 8, 8) and low-res mask logits (32, 32), as for SAM's ``tiny``.
    """
    return _sam2_config(
        embed_dims=(8, 16, 32, 64),
        heads=(1, 1, 2, 2),
        blocks=(1, 1, 2, 1),
        global_blocks=(3,),
        windows=(4, 4, 4, 4),
        image_size=128,
        width=32,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    )


SAM2_VARIANTS: dict[str, Callable[[], Sam2Config]] = {
    "sam2_hiera_tiny": sam2_hiera_tiny,
    "sam2_hiera_small": sam2_hiera_small,
    "sam2_hiera_base_plus": sam2_hiera_base_plus,
    "sam2_hiera_large": sam2_hiera_large,
    "tiny_sam2": tiny_sam2,
}
"""Registered SAM 2 architectures: name -> builder of a transformers ``Sam2Config``."""


def build_sam2(variant: str, *, seed: int = 0) -> Sam2Model:
    """A ``Sam2Model`` of a registered variant with random weights, deterministic in ``seed``.

    Initialised as :func:`co2sam.models.variants.build_sam` initialises SAM (PyTorch's
    default init and one random Fourier matrix shared by the prompt encoder and the
    image-wide positions: transformers' own init gives mask logits around 1e-5), plus
    random position tensors and no-memory embedding (zero there) so that tests can tell
    them apart. The global RNG state is left untouched.
    """
    if variant not in SAM2_VARIANTS:
        known = ", ".join(sorted(SAM2_VARIANTS))
        raise ValueError(f"Unknown SAM 2 variant {variant!r}; registered variants: {known}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = meta_style_init(Sam2Model(SAM2_VARIANTS[variant]()))
        with torch.no_grad():
            backbone = model.vision_encoder.backbone
            for param in (backbone.pos_embed, backbone.pos_embed_window, model.no_memory_embedding):
                param.normal_(0.0, 0.02)
    return model


def sam2_fingerprint(config: Sam2Config) -> dict[str, int | list[int]]:
    """What identifies a SAM 2 architecture: two models with equal ones share LoRA shapes."""
    backbone = config.vision_config.backbone_config
    size = backbone.image_size
    return {
        "image_size": int(size[0] if isinstance(size, list | tuple) else size),
        "embed_dim_per_stage": [int(v) for v in backbone.embed_dim_per_stage],
        "blocks_per_stage": [int(v) for v in backbone.blocks_per_stage],
        "num_attention_heads_per_stage": [int(v) for v in backbone.num_attention_heads_per_stage],
        "global_attention_blocks": [int(v) for v in backbone.global_attention_blocks],
    }


class Sam2Segmenter(Segmenter):
    """SAM 2 as a box-prompted mask predictor (one mask per box), the Segmenter interface.

    ``encode`` returns :class:`ImageFeatures`: E (B, 256, S/16, S/16) with the
    no-memory embedding added, and the projected stride-4 (B, 32, S/4, S/4) and stride-8
    (B, 64, S/8, S/8) FPN levels (channel counts for a 256 wide decoder).
    """

    def __init__(
        self,
        model: Sam2Model | PeftModel,
        *,
        gradient_checkpointing: bool = False,
        attention: str = "auto",
        dynamic_multimask: bool = False,
    ) -> None:
        # attention: accepted for the common interface; it selects SAM's ViT attention
        # (co2sam.models.attention) and leaves this encoder's blocks as they are.
        super().__init__(model, gradient_checkpointing=gradient_checkpointing, attention=attention)
        levels = self.sam.config.vision_config.num_feature_levels
        if levels != 3:
            raise ValueError(f"SAM 2 with {levels} feature levels; the mask decoder needs 3")
        # An attribute of the (shared) decoder: SAM 2 reads it at every forward.
        self.sam.mask_decoder.dynamic_multimask_via_stability = dynamic_multimask

    @property
    def image_size(self) -> int:
        """S: the side of the square model input (1024 for SAM 2.1)."""
        return int(self.sam.config.prompt_encoder_config.image_size)

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """SAM 2 stretches every image to SxS (no aspect ratio, no padding)."""
        return self.image_size, self.image_size

    def encode(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """Features of (B, 3, S, S) inputs, with gradients (the HF helper is no_grad)."""
        sam = self.sam
        if self.gradient_checkpointing and torch.is_grad_enabled():
            with checkpoint_each(sam.vision_encoder.backbone.blocks):
                output = sam.vision_encoder(pixel_values)
        else:
            output = sam.vision_encoder(pixel_values)
        stride4, stride8, stride16 = output.fpn_hidden_states  # high to low resolution
        decoder = sam.mask_decoder
        embeddings = stride16 + sam.no_memory_embedding.reshape(1, -1, 1, 1)
        return ImageFeatures(embeddings, (decoder.conv_s0(stride4), decoder.conv_s1(stride8)))

    def embeddings_of(self, features: ImageFeatures) -> torch.Tensor:
        return features.embeddings

    def decode_flat(
        self, features: ImageFeatures, image_index: torch.Tensor, flat_boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        selected = features[image_index]
        sparse, dense, positional = self.box_prompts(flat_boxes)
        masks, iou, _, _ = self.sam.mask_decoder(
            image_embeddings=selected.embeddings,
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=list(selected.extras),
        )
        return masks, iou

    def postprocess(
        self,
        low_res: torch.Tensor,
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits (N, s, s) -> (N, H, W), one bilinear resize (SAM 2's processor)."""
        height, width = original_size
        if low_res.shape[0] == 0:
            return low_res.new_zeros(0, height, width)
        return F.interpolate(
            low_res[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]
