import math

import pytest
import torch

from co2sam.config import LossConfig
from co2sam.losses import (
    LOSS_NAMES,
    binary_mask_iou,
    box_prototypes,
    contrastive_loss,
    contrastive_pooling,
    dice_loss,
    entropy_loss,
    image_losses,
    iou_loss,
    reduce_batch,
    reference_dice_loss,
    reference_focal_loss,
    sigmoid_focal_loss,
    total_loss,
)

LN3 = math.log(3.0)
# One 2x2 mask: probabilities 0.5, 0.75 / 0.75, 0.5 against target 1, 1 / 0, 0.
LOGITS = torch.tensor([[[0.0, LN3], [LN3, 0.0]]])
TARGET = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])


def test_sigmoid_focal_per_pixel():
    expected = (
        0.8 * 0.25 * math.log(2)  # p=0.5, t=1
        + 0.8 * (1 / 16) * math.log(4 / 3)  # p=0.75, t=1
        + 0.2 * (9 / 16) * math.log(4)  # p=0.75, t=0
        + 0.2 * 0.25 * math.log(2)  # p=0.5, t=0
    ) / 4
    value = sigmoid_focal_loss(LOGITS, TARGET, alpha=0.8, gamma=2.0)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_reference_focal_on_mean_bce():
    bce = (math.log(2) + math.log(4 / 3) + math.log(4) + math.log(2)) / 4
    expected = 3 * (1 - math.exp(-bce)) ** 2 * bce  # alpha = number of masks = 3
    value = reference_focal_loss(LOGITS, TARGET, alpha=3.0, gamma=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("compat", ["paper", "reference"])
def test_losses_run_under_autocast_as_cuda_allows(compat, monkeypatch):
    """CUDA autocast refuses binary_cross_entropy on probabilities (CPU autocast does not):
    emulate that refusal, then train-step losses must still run in bf16 autocast."""
    plain = torch.nn.functional.binary_cross_entropy

    def refuse_under_autocast(*args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("binary_cross_entropy is unsafe to autocast")
        return plain(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy", refuse_under_autocast)
    inputs = _image_inputs()
    config = LossConfig(compat=compat)
    expected = image_losses(**inputs, config=config, num_masks=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = image_losses(**inputs, config=config, num_masks=2)
    assert losses["focal"].dtype == torch.float32
    assert losses["focal"].item() == pytest.approx(expected["focal"].item(), rel=1e-3)


def test_dice_per_mask_and_reference_flattened():
    # paper: intersection 1.25, sum p 2.5, sum t 2 -> 1 - 3.5 / 5.5
    assert dice_loss(LOGITS, TARGET, smooth=1.0).item() == pytest.approx(4 / 11, rel=1e-5)
    # two masks: the second has p = 0.5 everywhere against an all-ones target.
    logits = torch.cat([LOGITS, torch.zeros(1, 2, 2)])
    target = torch.cat([TARGET, torch.ones(1, 2, 2)])
    per_mask = dice_loss(logits, target, smooth=1.0)
    assert per_mask.tolist() == pytest.approx([4 / 11, 1 - 5 / 7], rel=1e-5)
    # reference: all pixels together, smooth = number of masks (2):
    # intersection 3.25, sum p 4.5, sum t 6 -> 1 - 8.5 / 12.5
    value = reference_dice_loss(logits, target, smooth=2.0)
    assert value.item() == pytest.approx(1 - 8.5 / 12.5, rel=1e-5)


def test_iou_thresholds_differ_between_modes():
    logits = torch.tensor([[[0.3, 2.0], [-1.0, -1.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert binary_mask_iou(logits, target, threshold=0.0).item() == pytest.approx(1.0)
    reference = binary_mask_iou(logits, target, threshold=0.5, inclusive=True)
    assert reference.item() == pytest.approx(0.5)
    loss = iou_loss(torch.tensor([0.5]), logits, target, threshold=0.0)
    assert loss.item() == pytest.approx(0.25)


def _contrastive_inputs():
    embeddings_u = torch.randn(2, 2, 2)
    embeddings_u[:, 0, 0] = torch.tensor([3.0, 0.0])
    embeddings_u[:, 0, 1] = torch.tensor([0.0, 2.0])
    embeddings_t = torch.randn(2, 2, 2)
    embeddings_t[:, 0, 0] = torch.tensor([1.0, 1.0])
    embeddings_t[:, 0, 1] = torch.tensor([0.0, 5.0])
    masks = torch.full((2, 2, 2), -50.0)
    masks[0, 0, 0] = 50.0
    masks[1, 0, 1] = 50.0
    return embeddings_u, embeddings_t, masks


def test_contrastive_info_nce_paper():
    embeddings_u, embeddings_t, masks = _contrastive_inputs()
    # prototypes: u = (1, 0), (0, 1); t = (1, 1)/sqrt2, (0, 1)
    a, b = math.exp(math.sqrt(0.5) / 0.3), math.exp(1 / 0.3)
    expected = -math.log((a + b) / (a + 1 + a + b))
    value = contrastive_loss(embeddings_u, embeddings_t, masks, masks, temperature=0.3)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_contrastive_reference_pools_with_raw_logits():
    embeddings_u, embeddings_t, _ = _contrastive_inputs()
    embeddings_u[:, 1, 1] = torch.tensor([0.0, 1.0])
    weights = torch.zeros(2, 2, 2)
    weights[0, 0, 0], weights[0, 1, 1] = 2.0, -1.0  # a negative logit pulls away
    weights[1, 0, 1] = 1.0
    embeddings_t[:, 1, 1] = torch.tensor([0.0, 1.0])
    # u0 = 2*(1,0) - (0,1) -> (2,-1)/sqrt5; t0 = 2*(1,1)/sqrt2 - (0,1); u1 = t1 = (0,1)
    u0 = torch.tensor([2.0, -1.0]) / math.sqrt(5)
    t0 = torch.tensor([math.sqrt(2), math.sqrt(2) - 1])
    t0 = t0 / t0.norm()
    e = torch.tensor([0.0, 1.0])
    sim = torch.tensor([[u0 @ t0, u0 @ e], [e @ t0, 1.0]]) / 0.3
    expected = -torch.log(sim.exp().diagonal().sum() / sim.exp().sum())
    value = contrastive_loss(
        embeddings_u, embeddings_t, weights, weights, temperature=0.3, pooling="logits"
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    paper = contrastive_loss(embeddings_u, embeddings_t, weights, weights, temperature=0.3)
    assert paper.item() != pytest.approx(value.item(), rel=1e-3)


def test_entropy_across_boxes():
    logits = torch.tensor([[[0.0, LN3]], [[0.0, 0.0]]])  # 2 boxes, 1x2 pixels
    expected = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert entropy_loss(logits).item() == pytest.approx(expected, rel=1e-5)
    assert entropy_loss(logits, eps=1e-10).item() == pytest.approx(expected, rel=1e-5)
    assert entropy_loss(logits[:1]).item() == pytest.approx(0.0, abs=1e-7)


def _image_inputs(requires_grad=False):
    torch.manual_seed(0)
    student = torch.tensor([[[0.3, 2.0], [-1.0, -1.0]], [[1.0, -2.0], [0.7, 0.2]]])
    u = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[1.0, -1.0], [1.0, -1.0]]])
    t = torch.tensor([[[1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [1.0, -1.0]]])
    student.requires_grad_(requires_grad)
    u.requires_grad_(requires_grad)
    return {
        "student_masks": student,
        "student_iou": torch.tensor([0.9, 0.4]),
        "u_masks": u,
        "t_masks": t,
        "u_embeddings": torch.randn(4, 2, 2),
        "u_low_res": torch.randn(2, 4, 4),
        "t_prototypes": torch.randn(2, 4),
    }


@pytest.mark.parametrize("compat", ["paper", "reference"])
def test_image_losses_contrastive_is_contrastive_loss_of_the_two_branches(compat):
    torch.manual_seed(1)
    config = LossConfig(compat=compat)
    pooling = contrastive_pooling(config)
    assert pooling == ("logits" if compat == "reference" else "sigmoid")
    embeddings_t, low_res_t = torch.randn(4, 2, 2), torch.randn(2, 4, 4)
    inputs = _image_inputs()
    inputs["t_prototypes"] = box_prototypes(embeddings_t, low_res_t, pooling=pooling)
    losses = image_losses(**inputs, config=config, num_masks=2)
    expected = contrastive_loss(
        inputs["u_embeddings"], embeddings_t, inputs["u_low_res"], low_res_t, pooling=pooling
    )
    assert losses["contrastive"].item() == pytest.approx(expected.item(), rel=1e-6)
    other = box_prototypes(embeddings_t, low_res_t.flip(0), pooling=pooling)
    inputs["t_prototypes"] = other
    changed = image_losses(**inputs, config=config, num_masks=2)["contrastive"]
    assert changed.item() != pytest.approx(expected.item(), rel=1e-3)


def test_image_losses_paper_matches_the_parts():
    inputs = _image_inputs()
    config = LossConfig()
    losses = image_losses(**inputs, config=config, num_masks=2)
    assert set(losses) == set(LOSS_NAMES)
    student, u, t = inputs["student_masks"], inputs["u_masks"], inputs["t_masks"]
    u_target, t_target = (u > 0).float(), (t > 0).float()
    assert losses["focal"].item() == pytest.approx(sigmoid_focal_loss(student, u_target).sum())
    assert losses["dice"].item() == pytest.approx(dice_loss(student, u_target).sum().item())
    # student box 0 IoU with [u > 0]: 1 (0.3 > 0); box 1: {(0,0),(1,0),(1,1)} vs {(0,0),(1,0)}
    expected_iou = (0.9 - 1.0) ** 2 + (0.4 - 2 / 3) ** 2
    assert losses["iou"].item() == pytest.approx(expected_iou, rel=1e-5)
    template = 0.5 * dice_loss(student, t_target) + 0.5 * dice_loss(u, t_target)
    assert losses["template"].item() == pytest.approx(template.sum().item())


def test_image_losses_reference_quirks():
    inputs = _image_inputs()
    config = LossConfig(compat="reference")
    losses = image_losses(**inputs, config=config, num_masks=3)
    student, u, t = inputs["student_masks"], inputs["u_masks"], inputs["t_masks"]
    u_target, t_target = (u > 0).float(), (t > 0).float()
    focal = reference_focal_loss(student, u_target, alpha=3.0)
    assert losses["focal"].item() == pytest.approx(focal.item())
    dice = reference_dice_loss(student, u_target, smooth=3.0)
    assert losses["dice"].item() == pytest.approx(dice.item())
    # logits thresholded at 0.5: box 0 keeps only 2.0 (IoU 1/2); box 1 keeps 1.0, 0.7 (IoU 1)
    expected_iou = ((0.9 - 0.5) ** 2 + (0.4 - 1.0) ** 2) / 3
    assert losses["iou"].item() == pytest.approx(expected_iou, rel=1e-5)
    template = 0.5 * reference_dice_loss(student, t_target, smooth=1.0)
    template = template + 0.5 * reference_dice_loss(u, t_target, smooth=1.0)
    assert losses["template"].item() == pytest.approx(template.item())


def test_template_has_gradient_through_student_and_u_teacher():
    inputs = _image_inputs(requires_grad=True)
    losses = image_losses(**inputs, config=LossConfig(), num_masks=2)
    losses["template"].backward()
    assert inputs["student_masks"].grad.abs().sum() > 0
    assert inputs["u_masks"].grad.abs().sum() > 0
    inputs = _image_inputs(requires_grad=True)
    losses = image_losses(**inputs, config=LossConfig(), num_masks=2)
    losses["focal"].backward()  # the target [M_u > 0] is detached
    assert inputs["u_masks"].grad is None or inputs["u_masks"].grad.abs().sum() == 0


def test_reduce_batch_and_total():
    first = {name: torch.tensor(float(i + 1)) for i, name in enumerate(LOSS_NAMES)}
    second = {name: torch.tensor(10.0 * (i + 1)) for i, name in enumerate(LOSS_NAMES)}
    paper = reduce_batch([first, second], LossConfig())
    assert paper["focal"].item() == pytest.approx(5.5)
    assert paper["entropy"].item() == pytest.approx(33.0)
    reference = reduce_batch([first, second], LossConfig(compat="reference"))
    assert reference["focal"].item() == pytest.approx(11.0)
    assert reference["entropy"].item() == pytest.approx(60.0)  # last image only
    config = LossConfig(focal_weight=30.0, entropy_weight=0.0)
    # 30*1 + 2 + 3 + 4 + 5 (entropy weight 0)
    assert total_loss(first, config).item() == pytest.approx(44.0)
    ablated = LossConfig(focal_weight=20.0, template_weight=0.0, contrastive_weight=0.0)
    assert total_loss(first, ablated).item() == pytest.approx(20 + 2 + 3 + 6)
    with pytest.raises(ValueError, match="at least one image"):
        reduce_batch([], LossConfig())
