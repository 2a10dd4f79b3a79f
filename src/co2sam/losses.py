"""Co2SAM losses as plain functions (SPEC.md, "Training step").

Conventions for every function below, for ONE image with N box prompts:
- mask logits ``(N, H, W)`` float, any resolution (the training step passes the
  masks upsampled to the model input, ``S x S``);
- binary targets ``(N, H, W)`` float in {0, 1} (already thresholded and detached
  by the caller);
- image embeddings ``(C, h, w)`` (C = 256, h = w = S/16);
- low-resolution mask logits ``(N, h', w')`` (h' = w' = S/4).

Two flavours are implemented, chosen by ``LossConfig.compat``:

``paper`` (default, the method as described):
  focal = per-pixel sigmoid focal loss (alpha 0.8, gamma 2), averaged over the
  pixels of a mask; dice = soft dice with smooth 1 per mask; both summed over the
  N boxes. iou = squared error between the predicted IoU and the IoU of
  ``[M_s > 0]`` with the target, summed over boxes. Contrastive prototypes are
  pooled with ``sigmoid(low-res logits)`` (detached): soft, non-negative weights,
  so each prototype is a weighted average of embeddings inside the predicted
  mask. Entropy is computed per image.

``reference`` (the published code, quirks included, see SPEC.md):
  focal is ``alpha * (1 - exp(-BCE))**gamma * BCE`` on the *mean* BCE over all
  masks of the image flattened together, with alpha = number of masks in the
  batch (the third positional argument landing in ``alpha``); dice flattens all
  masks of the image together with smooth = number of masks; the IoU target
  thresholds the student's *logits* at 0.5 and the squared errors are summed
  and divided by the number of masks; contrastive pooling uses the raw
  low-resolution logits; template dice keeps smooth 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from co2sam.config import LossConfig

LOSS_NAMES = ("focal", "dice", "iou", "template", "contrastive", "entropy")
"""Keys of the per-term loss dicts, in the order of the total's formula."""


# --- paper form ------------------------------------------------------------------


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, *, alpha: float = 0.8, gamma: float = 2.0
) -> Tensor:
    """Per-pixel sigmoid focal loss, averaged over each mask's pixels.

    ``logits``, ``targets``: (N, H, W). Returns (N,) one value per mask.
    ``alpha`` weighs foreground pixels, ``1 - alpha`` background pixels.
    """
    logits, targets = logits.float(), targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    return loss.flatten(1).mean(dim=1)


def dice_loss(logits: Tensor, targets: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Soft dice loss ``1 - (2 |p t| + smooth) / (|p| + |t| + smooth)`` per mask.

    ``logits``, ``targets``: (N, H, W); ``p = sigmoid(logits)``. Returns (N,).
    """
    prob = logits.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    intersection = (prob * targets).sum(dim=1)
    dice = (2 * intersection + smooth) / (prob.sum(dim=1) + targets.sum(dim=1) + smooth)
    return 1 - dice


def binary_mask_iou(
    logits: Tensor, targets: Tensor, *, threshold: float = 0.0, inclusive: bool = False
) -> Tensor:
    """IoU between ``[logits > threshold]`` (``>=`` if ``inclusive``) and binary targets.

    ``logits``, ``targets``: (N, H, W). Returns (N,) in [0, 1], no gradient.
    Two empty masks give 0 (the reference's epsilon convention).
    """
    with torch.no_grad():
        pred = (logits >= threshold) if inclusive else (logits > threshold)
        pred, targets = pred.float().flatten(1), targets.float().flatten(1)
        intersection = (pred * targets).sum(dim=1)
        union = pred.sum(dim=1) + targets.sum(dim=1) - intersection
        return intersection / (union + 1e-7)


def iou_loss(
    iou_pred: Tensor, logits: Tensor, targets: Tensor, *, threshold: float = 0.0
) -> Tensor:
    """Squared error between predicted IoU and the IoU of ``[logits > threshold]``, targets.

    ``iou_pred``: (N,); ``logits``, ``targets``: (N, H, W). Returns (N,).
    """
    actual = binary_mask_iou(logits, targets, threshold=threshold)
    return (iou_pred.float() - actual) ** 2


def mask_pooled_prototypes(embeddings: Tensor, weights: Tensor, *, eps: float = 0.0) -> Tensor:
    """Weighted average of embeddings under each mask: one prototype per box.

    ``embeddings``: (C, h, w); ``weights``: (N, h', w') (resized bilinearly to
    (h, w), detached). Returns (N, C). ``eps > 0`` floors the weight sum (for
    non-negative weights); reference mode pools with raw logits and ``eps = 0``,
    where a weight sum close to zero is the published behaviour.
    """
    weights = F.interpolate(
        weights.detach().float()[:, None], size=embeddings.shape[-2:], mode="bilinear"
    )[:, 0]
    pooled = torch.einsum("nhw,chw->nc", weights, embeddings.float())
    total = weights.sum(dim=(1, 2))
    if eps > 0:
        total = total.clamp_min(eps)
    return pooled / total[:, None]


def box_prototypes(embeddings: Tensor, low_res: Tensor, *, pooling: str = "sigmoid") -> Tensor:
    """One prototype per box: channel-normalised embeddings pooled under the box's mask.

    ``embeddings``: (C, h, w), L2-normalised over channels here; ``low_res``: (N, h', w')
    low-resolution mask logits of the same branch (detached here). ``pooling``:
    ``sigmoid`` (weights = sigmoid(logits), paper) or ``logits`` (raw logits,
    reference). Returns (N, C) float32, with gradient into ``embeddings``.
    """
    if pooling not in ("sigmoid", "logits"):
        raise ValueError(f"pooling must be 'sigmoid' or 'logits', got {pooling!r}")
    weights, eps = low_res.detach(), 0.0
    if pooling == "sigmoid":
        weights, eps = weights.float().sigmoid(), 1e-6
    return mask_pooled_prototypes(F.normalize(embeddings.float(), dim=0), weights, eps=eps)


def info_nce(prototypes_u: Tensor, prototypes_t: Tensor, *, temperature: float = 0.3) -> Tensor:
    """InfoNCE with the matching box as the positive (scalar).

    ``prototypes_*``: (N, C). Loss = -log(sum exp(diag S) / sum exp(S)) with
    S = cosine(proto_u, proto_t) / temperature, shape (N, N).
    """
    similarity = F.cosine_similarity(prototypes_u[:, None], prototypes_t[None], dim=2)
    exp = (similarity / temperature).exp()
    return -torch.log(exp.diagonal().sum() / exp.sum())


def contrastive_loss(
    embeddings_u: Tensor,
    embeddings_t: Tensor,
    low_res_u: Tensor,
    low_res_t: Tensor,
    *,
    temperature: float = 0.3,
    pooling: str = "sigmoid",
) -> Tensor:
    """InfoNCE between U-teacher and T-teacher box prototypes (scalar).

    ``embeddings_*``: (C, h, w); ``low_res_*``: (N, h', w') low-resolution mask logits
    of each branch. :func:`box_prototypes` of each branch, then :func:`info_nce`.
    Gradient flows into ``embeddings_u`` (and ``embeddings_t`` if it requires grad).
    """
    proto_u = box_prototypes(embeddings_u, low_res_u, pooling=pooling)
    proto_t = box_prototypes(embeddings_t, low_res_t, pooling=pooling)
    return info_nce(proto_u, proto_t, temperature=temperature)


def contrastive_pooling(config: LossConfig) -> str:
    """How prototypes are pooled under ``config``: ``sigmoid`` (paper) or ``logits``."""
    return "logits" if config.compat == "reference" else "sigmoid"


def entropy_loss(logits: Tensor, *, eps: float = 0.0) -> Tensor:
    """Mean over pixels of the entropy of softmax(logits) across the N boxes (scalar).

    ``logits``: (N, H, W). ``eps = 0`` uses log-softmax (exact, stable); the
    reference uses ``log(p + 1e-10)``. One box gives 0.
    """
    logits = logits.float()
    prob = logits.softmax(dim=0)
    log_prob = torch.log(prob + eps) if eps > 0 else logits.log_softmax(dim=0)
    return -(prob * log_prob).sum(dim=0).mean()


# --- reference form ----------------------------------------------------------------


def reference_focal_loss(
    logits: Tensor, targets: Tensor, *, alpha: float, gamma: float = 2.0
) -> Tensor:
    """The published focal loss: all masks flattened together, on the MEAN BCE (scalar).

    ``alpha * (1 - exp(-BCE))**gamma * BCE``, BCE = mean binary cross-entropy over
    every pixel of every mask in ``logits`` (N, H, W). Computed in float32 with autocast
    off: CUDA autocast refuses ``binary_cross_entropy`` on probabilities.
    """
    prob = logits.float().sigmoid().clamp(0, 1).reshape(-1)
    with torch.autocast(prob.device.type, enabled=False):
        bce = F.binary_cross_entropy(prob, targets.float().reshape(-1), reduction="mean")
    return alpha * (1 - torch.exp(-bce)) ** gamma * bce


def reference_dice_loss(logits: Tensor, targets: Tensor, *, smooth: float) -> Tensor:
    """The published dice loss: all masks of the image flattened together (scalar)."""
    prob = logits.float().sigmoid().clamp(0, 1).reshape(-1)
    targets = targets.float().reshape(-1)
    intersection = (prob * targets).sum()
    return 1 - (2 * intersection + smooth) / (prob.sum() + targets.sum() + smooth)


# --- one image, all terms ----------------------------------------------------------


def image_losses(
    *,
    student_masks: Tensor,
    student_iou: Tensor,
    u_masks: Tensor,
    t_masks: Tensor,
    u_embeddings: Tensor,
    u_low_res: Tensor,
    t_prototypes: Tensor,
    config: LossConfig,
    num_masks: int,
) -> dict[str, Tensor]:
    """All Co2SAM loss terms for one image with N >= 1 boxes (unweighted scalars).

    ``*_masks``: (N, S, S) mask logits at the input resolution (student, U-teacher,
    T-teacher); ``student_iou``: (N,) predicted IoU; ``u_embeddings``: (256, S/16,
    S/16); ``u_low_res``: (N, S/4, S/4) logits; ``t_prototypes``: (N, 256) the
    T-teacher's :func:`box_prototypes` (pooled as :func:`contrastive_pooling` says; the
    step may take them from its template cache). Targets are made here: ``[M_u > 0]``
    (detached) and ``[M_t > 0]``. The template term has gradient through both the
    student's and the U-teacher's masks. ``num_masks`` is the number of masks in the
    whole batch (only the reference quirks use it).
    """
    u_target = (u_masks.detach() > 0).float()
    t_target = (t_masks.detach() > 0).float()
    if config.compat == "reference":
        focal = reference_focal_loss(
            student_masks, u_target, alpha=float(num_masks), gamma=config.focal_gamma
        )
        dice = reference_dice_loss(student_masks, u_target, smooth=float(num_masks))
        actual = binary_mask_iou(student_masks, u_target, threshold=0.5, inclusive=True)
        iou = ((student_iou.float() - actual) ** 2).sum() / num_masks
        template = 0.5 * reference_dice_loss(
            student_masks, t_target, smooth=1.0
        ) + 0.5 * reference_dice_loss(u_masks, t_target, smooth=1.0)
        entropy_eps = 1e-10
    else:
        focal = sigmoid_focal_loss(
            student_masks, u_target, alpha=config.focal_alpha, gamma=config.focal_gamma
        ).sum()
        dice = dice_loss(student_masks, u_target, smooth=config.dice_smooth).sum()
        iou = iou_loss(student_iou, student_masks, u_target, threshold=0.0).sum()
        template = (
            0.5 * dice_loss(student_masks, t_target, smooth=config.dice_smooth)
            + 0.5 * dice_loss(u_masks, t_target, smooth=config.dice_smooth)
        ).sum()
        entropy_eps = 0.0
    u_prototypes = box_prototypes(u_embeddings, u_low_res, pooling=contrastive_pooling(config))
    contrastive = info_nce(u_prototypes, t_prototypes, temperature=config.contrastive_temperature)
    entropy = entropy_loss(student_masks, eps=entropy_eps)
    return {
        "focal": focal,
        "dice": dice,
        "iou": iou,
        "template": template,
        "contrastive": contrastive,
        "entropy": entropy,
    }


def reduce_batch(per_image: list[dict[str, Tensor]], config: LossConfig) -> dict[str, Tensor]:
    """Combine the per-image loss dicts of a batch (at least one image).

    ``paper``: every term is averaged over the images. ``reference``: terms are
    summed over images (the published loop accumulates) and the entropy is the
    last image's only.
    """
    if not per_image:
        raise ValueError("reduce_batch needs at least one image with boxes")
    reduced = {}
    for name in LOSS_NAMES:
        values = torch.stack([losses[name] for losses in per_image])
        if config.compat == "reference":
            reduced[name] = values[-1] if name == "entropy" else values.sum()
        else:
            reduced[name] = values.mean()
    return reduced


def total_loss(losses: dict[str, Tensor], config: LossConfig) -> Tensor:
    """beta*focal + dice + iou + template + contrastive + entropy_weight*entropy.

    Every term has its own weight in ``config`` (``focal_weight`` is beta); a term
    whose weight is 0 is left out (so it need not be finite or reach the graph).
    """
    weights = {
        "focal": config.focal_weight,
        "dice": config.dice_weight,
        "iou": config.iou_weight,
        "template": config.template_weight,
        "contrastive": config.contrastive_weight,
        "entropy": config.entropy_weight,
    }
    terms = [weight * losses[name] for name, weight in weights.items() if weight != 0]
    if not terms:
        raise ValueError("every loss weight is 0: nothing to train")
    return torch.stack(terms).sum()
