import numpy as np
import pytest
import torch

from co2sam.config import LossConfig, OptimConfig
from co2sam.losses import dice_loss
from co2sam.sam import Segmenter, attach_lora, load_sam
from co2sam.train.data import TrainBatch
from co2sam.train.schedule import build_optimizer
from co2sam.train.step import forward_branches, training_step
from co2sam.train.template_cache import TemplateCache


def _image(height, width, squares):
    image = np.full((height, width, 3), 30, np.uint8)
    for (x0, y0, x1, y1), colour in squares:
        image[y0:y1, x0:x1] = colour
    return image


def _batch(with_empty=True):
    first = _image(96, 128, [((10, 10, 50, 60), (220, 40, 40)), ((70, 30, 120, 90), (40, 200, 60))])
    second = _image(80, 80, [((20, 15, 60, 70), (50, 60, 230))])
    images = [first, second]
    boxes = [
        np.array([[8, 8, 52, 62], [68, 28, 122, 92]], np.float32),
        np.array([[18, 13, 62, 72]], np.float32),
    ]
    ids = ["a", "b"]
    if with_empty:
        images.append(_image(64, 64, []))
        boxes.append(np.zeros((0, 4), np.float32))
        ids.append("empty")
    strong = [np.clip(image.astype(int) + 25, 0, 255).astype(np.uint8) for image in images]
    classes = [np.ones(len(b), np.int64) for b in boxes]
    return TrainBatch(ids, images, strong, boxes, classes)


@pytest.fixture()
def segmenter():
    torch.manual_seed(0)
    return Segmenter(attach_lora(load_sam("tiny")))


def _sharpened_tiny_sam():
    """Tiny random SAM with mask logits of order 1 (its raw ones are ~0.06, too flat)."""
    sam = load_sam("tiny")
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(10.0)
            mlp.proj_out.bias.mul_(10.0)
    return sam


def _lora_grad(segmenter):
    return sum(
        float(p.grad.abs().sum()) for p in segmenter.trainable_parameters() if p.grad is not None
    )


def _train(segmenter, batch, steps, config=None, lr=1e-3):
    optim = OptimConfig(lr=lr, warmup_steps=0, milestones=[])
    optimizer, _ = build_optimizer(segmenter.trainable_parameters(), optim)
    history = []
    for _ in range(steps):
        total, logs = training_step(segmenter, batch, config or LossConfig())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({name: float(value) for name, value in logs.items()})
    return history


def test_step_skips_images_without_boxes_and_counts_them(segmenter):
    total, logs = training_step(segmenter, _batch(), LossConfig())
    assert total.requires_grad and torch.isfinite(total)
    assert logs["images"] == 2 and logs["skipped"] == 1 and logs["boxes"] == 3
    assert all(not value.requires_grad for value in logs.values())
    empty = TrainBatch(["e"], [_image(32, 32, [])], [_image(32, 32, [])], [np.zeros((0, 4))], [])
    total, logs = training_step(segmenter, empty, LossConfig())
    assert total is None and logs["skipped"] == 1


def test_branch_shapes_and_t_teacher_is_plain_sam(segmenter):
    batch = _batch()
    plain = Segmenter(load_sam("tiny"))  # same tiny weights, no LoRA

    def plain_masks():
        with torch.no_grad():
            return forward_branches(plain, batch).template.masks

    before = forward_branches(segmenter, batch)
    size = segmenter.image_size
    assert before.u_teacher.embeddings.shape == (2, 256, size // 16, size // 16)
    assert [p.shape for p in before.template.prototypes] == [(2, 256), (1, 256)]
    assert [m.shape for m in before.student.masks] == [(2, size, size), (1, size, size)]
    assert [m.shape for m in before.u_teacher.low_res] == [(2, size // 4, size // 4), (1, 32, 32)]
    for ours, reference in zip(before.template.masks, plain_masks(), strict=True):
        torch.testing.assert_close(ours, reference)

    frozen = {n: p.clone() for n, p in segmenter.named_parameters() if "lora_" not in n}
    lora = {n: p.clone() for n, p in segmenter.named_parameters() if "lora_" in n}
    _train(segmenter, batch, steps=3, lr=1e-2)
    after = forward_branches(segmenter, batch)
    for ours, reference in zip(after.template.masks, plain_masks(), strict=True):
        torch.testing.assert_close(ours, reference)  # the T-teacher is still plain SAM
    assert not torch.allclose(after.u_teacher.masks[0], before.u_teacher.masks[0])
    for name, value in segmenter.named_parameters():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name
    assert any(not torch.equal(p, lora[n]) for n, p in segmenter.named_parameters() if n in lora)


def test_gradients_reach_lora_through_student_and_u_teacher(segmenter):
    batch = _batch(with_empty=False)
    # Student only: focal against the detached target [M_u > 0].
    branches = forward_branches(segmenter, batch)
    target = (branches.u_teacher.masks[0].detach() > 0).float()
    student_only = dice_loss(branches.student.masks[0], target).sum()
    student_only.backward()
    assert _lora_grad(segmenter) > 0
    assert branches.u_teacher.masks[0].grad_fn is not None  # U-teacher keeps its graph
    segmenter.zero_grad()
    # U-teacher only: its half of the template term (the T-teacher target has no graph).
    branches = forward_branches(segmenter, batch)
    assert branches.template.masks[0].grad_fn is None
    template_target = (branches.template.masks[0] > 0).float()
    u_only = dice_loss(branches.u_teacher.masks[0], template_target).sum()
    u_only.backward()
    assert _lora_grad(segmenter) > 0


def test_training_on_one_batch_lowers_the_loss():
    torch.manual_seed(0)
    segmenter = Segmenter(attach_lora(_sharpened_tiny_sam()))
    history = _train(segmenter, _batch(with_empty=False), steps=24, lr=1e-2)
    totals = [h["total"] for h in history]
    assert np.mean(totals[-3:]) < totals[0] - 0.1, totals
    # the student learns to agree with the U-teacher across views
    assert history[-1]["dice"] < 0.8 * history[0]["dice"]


def test_reference_mode_and_no_strong_view(segmenter):
    config = LossConfig(compat="reference", strong_view=False, entropy_weight=0.0)
    history = _train(segmenter, _batch(with_empty=False), steps=2, config=config)
    assert all(np.isfinite(h["total"]) for h in history)


def _step_with_grads(segmenter, batch, cache=None, config=None):
    segmenter.zero_grad(set_to_none=True)
    total, logs = training_step(segmenter, batch, config or LossConfig(), cache)
    total.backward()
    grads = {n: p.grad.clone() for n, p in segmenter.named_parameters() if p.grad is not None}
    return float(total.detach()), logs, grads


def _count_encoder_images(segmenter):
    seen = []
    segmenter.sam.vision_encoder.register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape[0])
    )
    return seen


@pytest.mark.parametrize("compat", ["paper", "reference"])
def test_template_cache_gives_the_same_step_without_the_t_teacher_forward(compat):
    torch.manual_seed(0)
    segmenter = Segmenter(attach_lora(_sharpened_tiny_sam()))
    with torch.no_grad():  # LoRA on, so that the T-teacher and U-teacher differ
        for param in segmenter.trainable_parameters():
            param.normal_(0, 0.05)
    batch, config = _batch(), LossConfig(compat=compat)
    encoded = _count_encoder_images(segmenter)
    plain_total, plain_logs, plain_grads = _step_with_grads(segmenter, batch, config=config)
    assert encoded == [2, 4] and plain_logs["templates_cached"] == 0  # T, then U + student

    cache = TemplateCache(max_bytes=2**20)
    encoded.clear()
    first_total, first_logs, first_grads = _step_with_grads(segmenter, batch, cache, config)
    assert encoded == [2, 4] and first_logs["templates_cached"] == 0
    assert len(cache) == 2 and (cache.hits, cache.misses) == (0, 2)
    encoded.clear()
    second_total, second_logs, second_grads = _step_with_grads(segmenter, batch, cache, config)
    assert encoded == [4] and second_logs["templates_cached"] == 2  # no T-teacher forward
    assert cache.hit_rate == 0.5
    for total, grads in ((first_total, first_grads), (second_total, second_grads)):
        assert total == pytest.approx(plain_total, rel=1e-6, abs=1e-7)
        assert grads.keys() == plain_grads.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7)


def test_template_cache_recomputes_new_views_only():
    torch.manual_seed(0)
    segmenter = Segmenter(attach_lora(load_sam("tiny")))
    batch = _batch(with_empty=False)
    cache = TemplateCache(max_bytes=2**20)
    training_step(segmenter, batch, LossConfig(), cache)
    flipped = TrainBatch(
        batch.image_ids,
        [batch.weak[0], np.ascontiguousarray(batch.weak[1][::-1])],  # a new view of "b"
        batch.strong,
        batch.boxes,
        batch.box_classes,
    )
    encoded = _count_encoder_images(segmenter)
    _, logs = training_step(segmenter, flipped, LossConfig(), cache)
    assert encoded == [1, 4] and logs["templates_cached"] == 1
    assert len(cache) == 3


def test_full_template_cache_keeps_nothing_more_and_still_trains():
    torch.manual_seed(0)
    segmenter = Segmenter(attach_lora(load_sam("tiny")))
    cache = TemplateCache(max_bytes=0)
    encoded = _count_encoder_images(segmenter)
    for _ in range(2):
        total, logs = training_step(segmenter, _batch(), LossConfig(), cache)
        assert torch.isfinite(total) and logs["templates_cached"] == 0
    assert len(cache) == 0 and cache.bytes == 0 and encoded == [2, 4, 2, 4]
