import pytest

from co2sam.distill.config import DistillOptimConfig
from co2sam.distill.schedule import build_optimizer, lr_factor, parameter_groups
from co2sam.models.segmentation_net import build_net


def test_warm_up_then_poly_decay_to_zero():
    kwargs = {"total_steps": 1000, "warmup_steps": 100, "warmup_ratio": 1e-6, "power": 1.0}
    assert lr_factor(0, **kwargs) == pytest.approx(1e-6)
    assert lr_factor(50, **kwargs) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(100, **kwargs) == 1.0
    assert lr_factor(550, **kwargs) == pytest.approx(0.5)
    assert lr_factor(1000, **kwargs) == 0.0
    no_warmup = {**kwargs, "warmup_steps": 0, "power": 0.9}
    assert lr_factor(500, **no_warmup) == pytest.approx(0.5**0.9)


def test_groups_give_the_head_ten_times_the_lr_and_norms_no_weight_decay():
    net = build_net("segformer", "tiny", ["background", "a"])
    config = DistillOptimConfig(lr=1e-4, head_lr_mult=10.0, weight_decay=0.01)
    groups = {g["name"]: g for g in parameter_groups(net, net.backbone_prefixes(), config)}
    assert set(groups) == {"backbone", "backbone-norm", "head", "head-norm"}
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone-norm"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.01
    classifier = net.hf.decode_head.classifier.weight
    assert any(p is classifier for p in groups["head"]["params"])
    batch_norm = net.hf.decode_head.batch_norm.weight
    assert any(p is batch_norm for p in groups["head-norm"]["params"])
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len(list(net.parameters()))
    optimizer, scheduler = build_optimizer(net, net.backbone_prefixes(), config, total_steps=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0] * 4, abs=1e-7)
