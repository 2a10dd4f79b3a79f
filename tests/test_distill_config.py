import pytest

from co2sam.config import ConfigError
from co2sam.distill.config import DistillConfig, load_distill_config


def test_presets_hold_the_documented_recipe():
    voc = load_distill_config("voc")
    assert isinstance(voc, DistillConfig)
    assert (voc.model.architecture, voc.model.pretrained) == ("segformer", "nvidia/mit-b2")
    assert (voc.data.dataset, voc.data.train_split, voc.data.val_split) == (
        "voc",
        "train_aug",
        "val",
    )
    assert (voc.optim.lr, voc.optim.weight_decay, voc.optim.head_lr_mult) == (6e-5, 0.01, 10.0)
    assert (voc.optim.warmup_steps, voc.optim.poly_power) == (1500, 1.0)
    assert (voc.train.iterations, voc.train.batch_size) == (80000, 16)
    assert voc.augment.ratio_range == [0.5, 2.0] and voc.augment.crop_size == 512
    assert voc.augment.scale == [2048, 512] and voc.augment.cat_max_ratio == 0.75
    coco = load_distill_config("coco")
    assert (coco.data.dataset, coco.data.train_split) == ("coco", "train")
    assert coco.train.iterations == 160000


def test_overrides_apply_and_bad_values_are_refused():
    config = load_distill_config("voc", ["train.iterations=10", "pseudo_labels.min_confidence=0.6"])
    assert config.train.iterations == 10 and config.pseudo_labels.min_confidence == 0.6
    bad = [
        ("pseudo_labels.min_confidence=1.5", "min_confidence"),
        ("model.architecture=deeplab", "model.architecture"),
        ("augment.ratio_range=[2.0,0.5]", "ratio_range"),
        ("optim.clip_grad_norm=0", "clip_grad_norm"),
        ("train.nope=1", "unknown key"),
    ]
    for override, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_distill_config("voc", [override])
    with pytest.raises(ConfigError, match="divide evenly"):
        load_distill_config("voc", ["train.devices=3"])  # 16 images over 3 processes
    with pytest.raises(ConfigError, match="voc, coco"):
        load_distill_config("demo")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_distill_config("coco", ["model.architecture=mask2former"])
    path = config.save(tmp_path / "config.yaml")
    assert load_distill_config(str(path)) == config
