"""A training step with the structure of the published Co2SAM loop (the benchmark baseline).

What the published training loop does for one image (its ``adaptation.py``, ``model.py``,
``losses.py`` and ``sam_lora.py``, read for this benchmark; SPEC.md, "Training step"):

- batch size 1, float32 (on CUDA the published script sets
  ``torch.set_float32_matmul_precision("high")``: TF32 matmuls; the benchmark sets it for
  every case on CUDA);
- Grounding DINO once per labelled class, on the un-augmented image, at every step;
- three full model calls: a template model (a separate copy of the LoRA model, made
  before training, run without gradient) on the weak view, then the LoRA model on the
  weak view and again on the strong view. Each call encodes its view alone, then
  decodes all boxes of the image in one prompt-encoder + mask-decoder call and
  upsamples the low-resolution logits to the S x S input;
- SAM's image encoder keeps its fused ``qkv`` Linear; LoRA adds ``B_q A_q x`` and
  ``B_v A_v x`` to the q and v columns of its output (:class:`FusedQkvLora`); attention
  is computed as Meta's code does (scores, bias added, softmax: transformers' ``eager``);
- the losses of the image over all its masks at once, in the published form (focal on
  the mean BCE, alpha and smooth = number of masks, IoU target at logits >= 0.5,
  raw-logit contrastive pooling, entropy over the boxes);
- backward, Adam step, learning-rate scheduler step, and ``torch.cuda.empty_cache()``
  twice per step (on CUDA).

The baseline is built from a :class:`co2sam.sam.Segmenter`'s weights (base and LoRA), so
both loops compute the same function and can be timed side by side in one process. It
is this benchmark's re-implementation of the published structure, not the published
code itself. Not used by co2sam.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from common import Work
from torch import Tensor, nn

from co2sam.sam import Segmenter


class FusedQkvLora(nn.Module):
    """SAM's fused qkv Linear with rank-r LoRA on its q and v outputs, as published.

    x: (..., C) -> (..., 3C) = ``qkv(x)`` with ``B_q A_q x`` added to the first C
    columns and ``B_v A_v x`` to the last C.
    """

    def __init__(
        self, qkv: nn.Linear, lora_q: tuple[Tensor, Tensor], lora_v: tuple[Tensor, Tensor]
    ):
        super().__init__()
        self.qkv = qkv
        self.width = qkv.in_features
        rank = lora_q[0].shape[0]
        self.a_q, self.b_q, self.a_v, self.b_v = (
            nn.Linear(*shape, bias=False, device=qkv.weight.device)
            for shape in ((self.width, rank), (rank, self.width)) * 2
        )
        with torch.no_grad():
            for linear, weight in zip(
                (self.a_q, self.b_q, self.a_v, self.b_v), (*lora_q, *lora_v), strict=True
            ):
                linear.weight.copy_(weight)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x)
        qkv[..., : self.width] += self.b_q(self.a_q(x))
        qkv[..., -self.width :] += self.b_v(self.a_v(x))
        return qkv


def _lora_pair(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """(A, B) weights of a peft LoRA Linear (zeros-like B if it has none)."""
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


def published_model(segmenter: Segmenter) -> Segmenter:
    """A copy of ``segmenter``'s SAM with fused qkv + q/v LoRA (same weights), trainable LoRA.

    Only the LoRA matrices require gradients. The copy is a plain ``SamModel`` wrapped in
    a Segmenter for its preprocessing, box scaling, decoding and upsampling helpers, with
    Meta's way of computing attention (``eager``), whatever ``segmenter`` uses.
    """
    sam = copy.deepcopy(segmenter.sam)
    for layer in sam.vision_encoder.layers:
        split = layer.attn.qkv
        layer.attn.qkv = FusedQkvLora(split.fused(), _lora_pair(split.q), _lora_pair(split.v))
    for name, param in sam.named_parameters():
        param.requires_grad_(any(f".{part}." in name for part in ("a_q", "b_q", "a_v", "b_v")))
    return Segmenter(sam, attention="eager").to(segmenter.device)


def _model_call(model: Segmenter, pixel_values: Tensor, boxes: Tensor) -> tuple:
    """One published ``Model.forward``: encode one view, decode all its boxes at once.

    Returns (E (256, s, s), low-res logits (N, 1, S/4, S/4), masks (N, S, S), IoU (N, 1)).
    """
    embeddings = model.encode(pixel_values)
    output = model.decode(embeddings, [boxes])[0]
    low_res = output.low_res_logits[:, None]
    masks = F.interpolate(low_res, model.image_size, mode="bilinear", align_corners=False)[:, 0]
    return embeddings[0], low_res, masks, output.iou_scores[:, None]


def _focal(logits: Tensor, target: Tensor, alpha: float, gamma: float = 2.0) -> Tensor:
    prob = logits.sigmoid().clamp(0, 1).reshape(-1)
    bce = F.binary_cross_entropy(prob, target.reshape(-1), reduction="mean")
    return alpha * (1 - torch.exp(-bce)) ** gamma * bce


def _dice(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    prob = logits.sigmoid().clamp(0, 1).reshape(-1)
    target = target.reshape(-1)
    return 1 - (2 * (prob * target).sum() + smooth) / (prob.sum() + target.sum() + smooth)


def _contrastive(u_embed: Tensor, t_embed: Tensor, u_low: Tensor, t_low: Tensor) -> Tensor:
    u_normal, t_normal = F.normalize(u_embed, dim=0), F.normalize(t_embed, dim=0)
    size = u_normal.shape[-2:]
    u_weights = F.interpolate(u_low, size, mode="bilinear", align_corners=False).detach()
    t_weights = F.interpolate(t_low, size, mode="bilinear", align_corners=False).detach()
    u_protos = (u_normal * u_weights).sum(dim=(-1, -2)) / u_weights.sum(dim=(-1, -2))
    t_protos = (t_normal * t_weights).sum(dim=(-1, -2)) / t_weights.sum(dim=(-1, -2))
    similarity = F.cosine_similarity(u_protos[:, None], t_protos[None], dim=2) / 0.3
    positives = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    return -torch.log(similarity.masked_select(positives).exp().sum() / similarity.exp().sum())


def _calc_iou(logits: Tensor, target: Tensor) -> Tensor:
    pred = (logits >= 0.5).float()
    intersection = (pred * target).sum(dim=(1, 2))
    union = pred.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) - intersection
    return (intersection / (union + 1e-7))[:, None]


def published_losses(template: tuple, u_teacher: tuple, student: tuple, beta: float) -> Tensor:
    """The published total loss of one image, over all its N masks at once.

    Each branch is :func:`_model_call`'s tuple. The entropy term is the published one
    (softmax across the N masks at every pixel).
    """
    t_embed, t_low, t_masks, _ = template
    u_embed, u_low, u_masks, _ = u_teacher
    _, _, s_masks, s_iou = student
    num_masks = len(s_masks)
    probabilities = s_masks.softmax(dim=0)
    entropy = -(probabilities * torch.log(probabilities + 1e-10)).sum(dim=0).mean()
    contrastive = _contrastive(u_embed, t_embed, u_low.detach(), t_low.detach())
    t_target = (t_masks > 0).float()
    template_loss = 0.5 * _dice(s_masks, t_target) + 0.5 * _dice(u_masks, t_target)
    u_target = (u_masks > 0).float()
    focal = _focal(s_masks, u_target, alpha=float(num_masks))
    dice = _dice(s_masks, u_target, smooth=float(num_masks))
    iou = F.mse_loss(s_iou, _calc_iou(s_masks, u_target), reduction="sum") / num_masks
    return beta * focal + dice + iou + template_loss + contrastive + entropy


class PublishedStructureStep:
    """One optimisation step per call, structured as the published loop (module docstring).

    segmenter: co2sam's Segmenter whose weights the baseline copies (it is not trained).
    prompter: a Grounding DINO prompter run once per labelled class on every call (None:
    boxes from a cache). Views (weak, strong) are made beforehand, as by a data loader.
    """

    def __init__(self, segmenter: Segmenter, prompter: Any | None, *, lr: float = 1e-4):
        self.model = published_model(segmenter)
        self.template = copy.deepcopy(self.model).requires_grad_(False)
        self.prompter = prompter
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / 250)
        )

    def __call__(self, work: Work, strong_image: Any, beta: float = 30.0) -> float:
        model = self.model
        if self.prompter is not None:
            for label in work.labels:  # one detector call per labelled class, as published
                self.prompter(work.image, labels=[label])  # random weights: boxes unused
        weak = model.preprocess([work.image])
        strong = model.preprocess([strong_image])
        boxes = model.scale_boxes(torch.from_numpy(work.boxes), weak.original_sizes[0])
        with torch.no_grad():
            template = _model_call(self.template, weak.pixel_values, boxes)
        u_teacher = _model_call(model, weak.pixel_values, boxes)
        student = _model_call(model, strong.pixel_values, boxes)
        loss = published_losses(template, u_teacher, student, beta)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        value = float(loss.detach())
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        return value
