import pytest
import torch

from co2sam.config import OptimConfig
from co2sam.train.schedule import build_optimizer, lr_factor


def test_paper_schedule_values():
    factor = OptimConfig()  # warm-up 250, x0.1 at 60,000, x0.01 at 86,666
    values = {
        step: lr_factor(
            step, warmup_steps=factor.warmup_steps, milestones=factor.milestones, gamma=0.1
        )
        for step in (0, 1, 125, 249, 250, 59_999, 60_000, 86_665, 86_666, 200_000)
    }
    assert values[0] == 0.0
    assert values[1] == pytest.approx(1 / 250)
    assert values[125] == pytest.approx(0.5)
    assert values[249] == pytest.approx(249 / 250)
    assert values[250] == 1.0 and values[59_999] == 1.0
    assert values[60_000] == pytest.approx(0.1) and values[86_665] == pytest.approx(0.1)
    assert values[86_666] == pytest.approx(0.01) and values[200_000] == pytest.approx(0.01)


def test_lambda_lr_follows_the_schedule():
    config = OptimConfig(lr=1e-3, warmup_steps=4, milestones=[6, 8])
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler = build_optimizer([parameter], config)
    assert optimizer.defaults["weight_decay"] == config.weight_decay
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    assert seen == pytest.approx(expected)


def test_no_warmup_and_no_parameters():
    assert lr_factor(0, warmup_steps=0, milestones=[], gamma=0.1) == 1.0
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], OptimConfig())


def test_schedule_counted_in_images_keeps_the_decay_epoch_under_ddp():
    from co2sam.train.schedule import make_lr_lambda

    steps = OptimConfig(warmup_steps=4, milestones=[8, 12])
    images = OptimConfig(warmup_steps=4, milestones=[8, 12], schedule_unit="image")
    # 4 processes at batch 1: a step is 4 images
    assert [make_lr_lambda(steps, 4)(s) for s in (1, 3, 8)] == pytest.approx([0.25, 0.75, 0.1])
    assert [make_lr_lambda(images, 4)(s) for s in (0, 1, 2, 3)] == pytest.approx([0, 1, 0.1, 0.01])
    assert make_lr_lambda(images, 1)(8) == make_lr_lambda(steps, 1)(8)  # one process: the same
    with pytest.raises(ValueError, match="schedule_unit"):
        OptimConfig(schedule_unit="epoch")
