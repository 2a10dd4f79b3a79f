"""SAM-HQ (``SamHQModel``): SAM's ViT and mask decoder plus a high-quality output token.

SAM-HQ keeps SAM's image encoder unchanged (same module names, so q/v LoRA lands on the
same ``attn.qkv`` Linears) and adds to the mask decoder an HQ token whose mask is
computed from the decoder's upscaled features fused with *early* ViT features (the
output of the first global-attention block, (B, S/16, S/16, C)). Its decoder therefore
needs those features besides the embeddings: :class:`SamHQSegmenter` keeps them in
:class:`~co2sam.models.segmenter.ImageFeatures`.

Masks: with ``hq_token_only=False`` (SAM-HQ's default, used here) the mask of a box is
SAM's single-mask logits plus the HQ token's logits; ``hq_token_only=True`` keeps the
HQ logits alone. The IoU prediction is SAM's (raw, as SAM).

Architectures (random weights, for tests and benchmarks) are registered like SAM's:
``sam_hq_vit_b``/``_l``/``_h`` (hub ``syscv-community/sam-hq-vit-base|large|huge``) and
``tiny_hq`` (SAM's ``tiny`` plus the HQ parts).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import PeftModel
from transformers import SamConfig, SamHQConfig, SamHQModel

from co2sam.models.segmenter import ImageFeatures, Segmenter, checkpoint_each
from co2sam.models.variants import meta_style_init, tiny, vit_b, vit_h, vit_l


def hq_config(sam: SamConfig) -> SamHQConfig:
    """The SAM-HQ architecture around a SAM one (same encoder, prompt encoder, decoder)."""

    def plain(config) -> dict:
        values = config.to_dict()
        for key in ("model_type", "transformers_version"):
            values.pop(key, None)
        return values

    decoder = plain(sam.mask_decoder_config)
    decoder["vit_dim"] = int(sam.vision_config.hidden_size)
    return SamHQConfig(
        vision_config=plain(sam.vision_config),
        prompt_encoder_config=plain(sam.prompt_encoder_config),
        mask_decoder_config=decoder,
    )


SAM_HQ_VARIANTS: dict[str, Callable[[], SamHQConfig]] = {
    "sam_hq_vit_b": lambda: hq_config(vit_b()),
    "sam_hq_vit_l": lambda: hq_config(vit_l()),
    "sam_hq_vit_h": lambda: hq_config(vit_h()),
    "tiny_hq": lambda: hq_config(tiny()),
}
"""Registered SAM-HQ architectures: name -> builder of a transformers ``SamHQConfig``."""


def build_sam_hq(variant: str, *, seed: int = 0) -> SamHQModel:
    """A ``SamHQModel`` of a registered variant with random weights, deterministic in ``seed``.

    Initialised as :func:`co2sam.models.variants.build_sam` initialises SAM (Meta-style,
    random position tensors); the global RNG state is left untouched.
    """
    if variant not in SAM_HQ_VARIANTS:
        known = ", ".join(sorted(SAM_HQ_VARIANTS))
        raise ValueError(f"Unknown SAM-HQ variant {variant!r}; registered variants: {known}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = meta_style_init(SamHQModel(SAM_HQ_VARIANTS[variant]()))
        with torch.no_grad():
            for name, param in model.vision_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return model


class SamHQSegmenter(Segmenter):
    """SAM-HQ as a box-prompted mask predictor (one mask per box), the Segmenter interface.

    ``encode`` returns :class:`ImageFeatures` (embeddings (B, 256, s, s) and the early ViT
    features (B, s, s, C)); preprocessing, box frames and post-processing are SAM's.
    """

    def __init__(
        self,
        model: SamHQModel | PeftModel,
        *,
        gradient_checkpointing: bool = False,
        attention: str = "auto",
        hq_token_only: bool = False,
    ) -> None:
        # attention: accepted for the common interface; it selects SAM's ViT attention
        # (co2sam.models.attention) and leaves this encoder's blocks as they are.
        super().__init__(model, gradient_checkpointing=gradient_checkpointing, attention=attention)
        self.hq_token_only = hq_token_only
        """True: the HQ token's mask alone; False (SAM-HQ's default): SAM's + HQ's."""

    def encode(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """Features of (B, 3, S, S) inputs, with gradients (the HF helper is no_grad)."""
        encoder = self.sam.vision_encoder
        if self.gradient_checkpointing and torch.is_grad_enabled():
            with checkpoint_each(encoder.layers):
                output = encoder(pixel_values)
        else:
            output = encoder(pixel_values)
        # The HQ decoder reads only the first global block's output.
        return ImageFeatures(output.last_hidden_state, (output.intermediate_embeddings[0],))

    def embeddings_of(self, features: ImageFeatures) -> torch.Tensor:
        return features.embeddings

    def decode_flat(
        self, features: ImageFeatures, image_index: torch.Tensor, flat_boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image by image, all its boxes as one point batch: the HQ decoder fuses the image's
        embeddings and early features once per image (per box they would cost ~8 GFLOP
        each at ViT-B 1024), then decodes every box independently, as SAM-HQ does."""
        sam = self.sam
        positional = sam.get_image_wide_positional_embeddings()
        masks, ious = [], []
        for image in image_index.unique_consecutive().tolist():
            boxes = flat_boxes[image_index == image]
            sparse, dense = sam.prompt_encoder(
                input_points=None,
                input_labels=None,
                input_boxes=boxes[None].float(),
                input_masks=None,
            )
            selected = features[image : image + 1]
            image_masks, image_iou = sam.mask_decoder(
                image_embeddings=selected.embeddings,
                image_positional_embeddings=positional,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                hq_token_only=self.hq_token_only,
                intermediate_embeddings=list(selected.extras),
            )
            masks.append(image_masks.flatten(0, 2))  # (1, Ni, 1, s, s) -> (Ni, s, s)
            ious.append(image_iou.flatten())
        return torch.cat(masks), torch.cat(ious)
