"""The Segmenter: images in, per-box mask logits out, around a SAM (with or without LoRA).

Coordinate frames used below:
- *original*: pixels of the image as loaded, (H, W).
- *resized*: the image scaled so that its longest side is S (``image_size``), (h, w).
- *S frame*: the padded SxS model input; the resized image sits in its top-left corner,
  so resized and S-frame coordinates are the same numbers.

The interface every backbone keeps (SAM here; SAM-HQ and SAM 2 in
:mod:`co2sam.models.sam_hq` and :mod:`co2sam.models.sam2` override the marked hooks):
``preprocess``, ``scale_boxes``, ``encode`` -> features, ``decode(features, boxes)``,
``forward`` -> (embeddings E, masks), ``embeddings_of(features)``, ``upscale``,
``postprocess``, ``adapters_disabled``, ``trainable_parameters``. The training step and
the evaluation use nothing else, so they never ask which backbone they run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SamModel

from co2sam.models.attention import set_attention
from co2sam.models.lora import lora_parameters

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM's RGB normalisation mean, in 0-255 pixel units."""
PIXEL_STD = (58.395, 57.12, 57.375)
"""SAM's RGB normalisation std, in 0-255 pixel units."""


@dataclass
class PreparedBatch:
    """Images ready for the encoder.

    pixel_values: (B, 3, S, S) float32, normalised, zero-padded bottom/right.
    resized_sizes: (h, w) of each image inside the S frame.
    original_sizes: (H, W) of each image as given.
    """

    pixel_values: torch.Tensor
    resized_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


@dataclass
class MaskOutput:
    """SAM's answer for the N boxes of one image.

    low_res_logits: (N, 4*S/16, 4*S/16) mask logits (256x256 for real SAM), S frame / 4.
    iou_scores: (N,) predicted IoU of each mask.
    """

    low_res_logits: torch.Tensor
    iou_scores: torch.Tensor


@dataclass
class ImageFeatures:
    """What a decoder needs of B images, for backbones that need more than E.

    embeddings: (B, C, s, s) the image embedding E (what the contrastive loss pools).
    extras: further per-image maps the mask decoder reads, batch first (SAM-HQ: the
        early ViT features; SAM 2: the stride-4 and stride-8 FPN levels).
    Indexing (``features[i]``, ``features[a:b]``, ``features[index_tensor]``) selects
    images in every tensor at once.
    """

    embeddings: torch.Tensor
    extras: tuple[torch.Tensor, ...] = ()

    def __getitem__(self, index) -> ImageFeatures:
        return ImageFeatures(self.embeddings[index], tuple(x[index] for x in self.extras))


@contextlib.contextmanager
def checkpoint_each(blocks: Iterable[nn.Module]) -> Iterator[None]:
    """Inside the block, each of ``blocks`` is recomputed in the backward pass.

    Wraps the modules' ``forward`` in ``torch.utils.checkpoint`` (``use_reentrant=False``,
    the only mode that works with LoRA) and restores it on exit. Used by backbones whose
    encoder collects intermediate outputs, so that the encoder's own ``forward`` still runs.
    """
    patched = []
    try:
        for block in blocks:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
            patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward


def resized_size(original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side of (H, W) to ``image_size`` (SAM's rounding)."""
    height, width = original_size
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Segmenter(nn.Module):
    """SAM (``SamModel``, or a ``PeftModel`` around one) as a box-prompted mask predictor.

    ``encode`` keeps gradients (LoRA trains through it); ``decode`` runs the prompt
    encoder and mask decoder with one mask per box (``multimask_output=False``).
    Works on any device the model is on and under ``torch.autocast``.

    attention: how the image encoder computes attention (:mod:`co2sam.models.attention`;
    ``auto`` folds the relative-position bias into q and k on CUDA).
    """

    def __init__(
        self,
        model: SamModel | PeftModel,
        *,
        gradient_checkpointing: bool = False,
        attention: str = "auto",
    ):
        super().__init__()
        self.model = model
        set_attention(self.sam.vision_encoder, attention)
        self.gradient_checkpointing = gradient_checkpointing
        """Recompute encoder blocks in the backward pass (``use_reentrant=False``)."""
        mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def sam(self) -> SamModel:
        """The underlying ``SamModel`` (LoRA layers, if any, live inside it)."""
        if isinstance(self.model, PeftModel):
            return self.model.get_base_model()
        return self.model

    @property
    def image_size(self) -> int:
        """S: the side of the square model input (1024 for real SAM)."""
        return int(self.sam.config.vision_config.image_size)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Sequence[np.ndarray] | torch.Tensor) -> PreparedBatch:
        """Resize (longest side to S, bilinear), normalise and zero-pad images to SxS.

        images: a list of HWC uint8 RGB arrays (sizes may differ), or a (B, 3, H, W)
        uint8 tensor. Padding happens after normalisation, so padded pixels are 0 in
        normalised space, as in SAM. Runs on the segmenter's device.
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"expected a (B, 3, H, W) tensor, got {tuple(images.shape)}")
            tensors = list(images.to(self.device))
        else:
            tensors = []
            for image in images:
                if image.ndim != 3 or image.shape[2] != 3:
                    raise ValueError(f"expected HWC RGB images, got shape {image.shape}")
                # np.require copies read-only arrays (torch cannot wrap them safely).
                pixels = np.require(image, requirements=["C", "W"])
                tensors.append(torch.from_numpy(pixels).to(self.device))
                tensors[-1] = tensors[-1].permute(2, 0, 1)
        size = self.image_size
        pixel_values = torch.zeros(len(tensors), 3, size, size, device=self.device)
        resized_sizes, original_sizes = [], []
        for index, image in enumerate(tensors):
            original = (int(image.shape[1]), int(image.shape[2]))
            new_h, new_w = self.resized_size(original)
            resized = F.interpolate(
                image[None].float(),
                size=(new_h, new_w),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            normalised = (resized - self.pixel_mean) / self.pixel_std
            pixel_values[index, :, :new_h, :new_w] = normalised[0]
            resized_sizes.append((new_h, new_w))
            original_sizes.append(original)
        return PreparedBatch(pixel_values, resized_sizes, original_sizes)

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an (H, W) image inside the S frame (hook: SAM 2 stretches to SxS)."""
        return resized_size(original_size, self.image_size)

    def scale_boxes(self, xyxy: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (N, 4) XYXY in original pixels -> (N, 4) float XYXY in the S frame.

        x scales by w/W and y by h/H, with (h, w) the rounded resized size (as SAM does).
        """
        boxes = torch.as_tensor(xyxy, dtype=torch.float32, device=self.device).reshape(-1, 4)
        new_h, new_w = self.resized_size(original_size)
        height, width = original_size
        factors = boxes.new_tensor([new_w / width, new_h / height, new_w / width, new_h / height])
        return boxes * factors

    # ------------------------------------------------------------------ model
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, 256, S/16, S/16) from (B, 3, S, S) inputs, with gradients."""
        encoder = self.sam.vision_encoder
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return encoder(pixel_values).last_hidden_state
        hidden_states = encoder.patch_embed(pixel_values)
        if encoder.pos_embed is not None:
            hidden_states = hidden_states + encoder.pos_embed
        for layer in encoder.layers:
            hidden_states = checkpoint(layer, hidden_states, use_reentrant=False)
        return encoder.neck(hidden_states)

    def embeddings_of(self, features: torch.Tensor) -> torch.Tensor:
        """The image embeddings E (B, C, s, s) of what ``encode`` returned (hook)."""
        return features

    def decode(self, features: torch.Tensor, boxes: Sequence[torch.Tensor]) -> list[MaskOutput]:
        """One mask per box: features from ``encode`` (SAM: embeddings (B, 256, s, s)) and
        B tensors (Ni, 4) XYXY, S frame.

        Boxes are decoded independently in SAM, so all boxes of the batch are decoded
        as one flat batch (each with its image's embedding): no padding, exact. Ni may
        be 0. Returns B :class:`MaskOutput` with (Ni, 4s, 4s) logits and (Ni,) IoU.
        """
        embeddings = self.embeddings_of(features)
        if len(boxes) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(boxes)} box lists")
        counts = [int(b.shape[0]) for b in boxes]
        low_res = 4 * embeddings.shape[-1]
        total = sum(counts)
        if total == 0:
            empty = embeddings.new_zeros(0, low_res, low_res)
            return [MaskOutput(empty, embeddings.new_zeros(0)) for _ in boxes]
        image_index = torch.repeat_interleave(
            torch.arange(len(boxes), device=embeddings.device),
            torch.tensor(counts, device=embeddings.device),
        )
        flat_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).to(embeddings.device)
        masks, iou = self.decode_flat(features, image_index, flat_boxes)
        masks = masks.reshape(total, low_res, low_res)
        iou = iou.reshape(total)
        return [
            MaskOutput(m, s) for m, s in zip(masks.split(counts), iou.split(counts), strict=True)
        ]

    def box_prompts(
        self, flat_boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt encoder on (N, 4) XYXY boxes (S frame), one box per prompt: sparse
        and dense prompt embeddings and the image-wide positional embedding, repeated N
        times (what the mask decoder takes with N image embeddings)."""
        sam = self.sam
        sparse, dense = sam.prompt_encoder(
            input_points=None,
            input_labels=None,
            input_boxes=flat_boxes[:, None, :].float(),
            input_masks=None,
        )
        positional = sam.get_image_wide_positional_embeddings().repeat(len(flat_boxes), 1, 1, 1)
        return sparse, dense, positional

    def decode_flat(
        self, features: torch.Tensor, image_index: torch.Tensor, flat_boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder on N boxes at once (hook): box n prompts image ``image_index[n]``
        (non-decreasing: the boxes of image 0, then of image 1, ...).

        flat_boxes: (N, 4) XYXY, S frame. Returns mask logits with N * 4s * 4s elements
        and N IoU predictions (any shape with those counts; ``decode`` reshapes).
        """
        sparse, dense, positional = self.box_prompts(flat_boxes)
        masks, iou = self.sam.mask_decoder(
            image_embeddings=features[image_index],
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks, iou

    def forward(
        self, pixel_values: torch.Tensor, boxes: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[MaskOutput]]:
        """``encode`` then ``decode``: returns (embeddings E, per-image mask outputs)."""
        features = self.encode(pixel_values)
        return self.embeddings_of(features), self.decode(features, boxes)

    # ------------------------------------------------------------------ masks
    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (N, s, s) -> (N, S, S) logits in the S frame (bilinear)."""
        size = self.image_size
        if low_res.shape[0] == 0:
            return low_res.new_zeros(0, size, size)
        return F.interpolate(
            low_res[:, None], size=(size, size), mode="bilinear", align_corners=False
        )[:, 0]

    def postprocess(
        self,
        low_res: torch.Tensor,
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits (N, s, s) -> (N, H, W) logits in the original frame.

        Upsample to SxS, crop the padding away (keep the top-left h x w), resize to (H, W).
        """
        height, width = original_size
        if low_res.shape[0] == 0:
            return low_res.new_zeros(0, height, width)
        new_h, new_w = resized_size
        cropped = self.upscale(low_res)[:, :new_h, :new_w]
        return F.interpolate(
            cropped[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]

    # ------------------------------------------------------------------ adapters
    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Plain SAM inside the block (the T-teacher); a no-op for a model without LoRA."""
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA parameters (selected by name), the only ones that train."""
        return lora_parameters(self.model)
