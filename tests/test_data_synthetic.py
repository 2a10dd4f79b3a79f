import json
import time

import numpy as np
from PIL import Image

from co2sam.data.synthetic import DomainShift, make_synthetic_dataset


def test_layout_and_speed(tmp_path):
    start = time.perf_counter()
    voc = make_synthetic_dataset(tmp_path, num_images=50, image_size=128, seed=0)
    assert time.perf_counter() - start < 2.0
    assert voc == tmp_path / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    train = lists.joinpath("train.txt").read_text().split()
    val = lists.joinpath("val.txt").read_text().split()
    assert (len(train), len(val)) == (40, 10)
    assert lists.joinpath("train_aug.txt").read_text().split() == train
    assert voc.joinpath("classes.txt").read_text().split("\n")[0] == "background"
    with (
        Image.open(voc / "SegmentationClass" / f"{train[0]}.png") as mask,
        Image.open(voc / "SegmentationObject" / f"{train[0]}.png") as instances,
    ):
        assert mask.mode == "P"
        assert instances.size == mask.size == (128, 128)
    labels = json.loads(voc.joinpath("labels.json").read_text())
    assert set(labels) == set(train + val)


def test_co_occurrence_rule(tmp_path):
    voc = make_synthetic_dataset(
        tmp_path, num_images=60, num_classes=4, co_occurrence=[(2, 1, 1.0)], seed=1
    )
    names = voc.joinpath("classes.txt").read_text().split("\n")
    for image_id in voc.joinpath("ImageSets/Segmentation/train.txt").read_text().split():
        present = set(np.unique(np.array(Image.open(voc / f"SegmentationClass/{image_id}.png"))))
        if 2 in present:
            assert 1 in present or names[1] not in present  # class 1 drawn (maybe hidden)
    labels = json.loads(voc.joinpath("labels.json").read_text())
    with_2 = [v for v in labels.values() if names[2] in v]
    assert with_2 and sum(names[1] in v for v in with_2) >= 0.8 * len(with_2)


def test_domain_shift_keeps_layout(tmp_path):
    source = make_synthetic_dataset(tmp_path / "a", num_images=4, seed=5, image_format="png")
    target = make_synthetic_dataset(
        tmp_path / "b",
        num_images=4,
        seed=5,
        image_format="png",
        domain_shift=DomainShift(noise=10, blur=1.0, colour=0.8, background=True),
    )
    image_id = "syn_00000"
    mask_a = np.array(Image.open(source / f"SegmentationClass/{image_id}.png"))
    mask_b = np.array(Image.open(target / f"SegmentationClass/{image_id}.png"))
    np.testing.assert_array_equal(mask_a, mask_b)
    image_a = np.array(Image.open(source / f"JPEGImages/{image_id}.png")).astype(int)
    image_b = np.array(Image.open(target / f"JPEGImages/{image_id}.png")).astype(int)
    assert np.abs(image_a - image_b).mean() > 10


def test_test_split_has_no_masks(tmp_path):
    voc = make_synthetic_dataset(
        tmp_path, num_images=6, splits={"train": 3, "val": 2, "test": 1}, seed=0
    )
    test_ids = voc.joinpath("ImageSets/Segmentation/test.txt").read_text().split()
    assert len(test_ids) == 1
    assert not (voc / "SegmentationClass" / f"{test_ids[0]}.png").exists()
