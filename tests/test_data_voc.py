import numpy as np
import pytest
from PIL import Image

from co2sam.classes import IGNORE_INDEX, VOC_CLASSES
from co2sam.config import DataConfig
from co2sam.data import DatasetError, build_dataset
from co2sam.data.image_io import write_label_png
from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.data.voc import VocDataset


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_synthetic_dataset(
        root / "VOCdevkit", num_images=12, num_classes=3, image_size=64, seed=0,
        splits={"train": 6, "val": 4, "test": 2},
    )  # fmt: skip
    return root


def test_counts_per_split_and_search_from_above(voc_root):
    config = DataConfig(dataset="voc", root=str(voc_root))
    sizes = {split: len(build_dataset(config, split)) for split in ("train", "train_aug", "val")}
    assert sizes == {"train": 6, "train_aug": 6, "val": 4}
    test = build_dataset(config, "test")
    assert len(test) == 2 and not test.has_masks
    sample = test[0]
    assert sample.mask is None and sample.labels == []
    assert test.root.name == "VOC2012"


def test_labels_are_classes_in_mask_and_ignore_kept(voc_root):
    dataset = build_dataset(DataConfig(dataset="voc", root=str(voc_root)), "train")
    assert dataset.class_names[0] == "background" and len(dataset.class_names) == 4
    seen_ignore = False
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.image.dtype == np.uint8 and sample.image.shape == (64, 64, 3)
        values = set(np.unique(sample.mask).tolist())
        assert values <= {0, 1, 2, 3, IGNORE_INDEX}
        assert sample.labels == sorted(values - {0, IGNORE_INDEX})
        assert dataset.image_labels(index) == sample.labels
        seen_ignore |= IGNORE_INDEX in values
    assert seen_ignore


def test_palette_png_read_as_indices(tmp_path):
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 15  # person: colour (192, 128, 128) in the VOC palette
    mask[0, :] = IGNORE_INDEX
    write_label_png(voc / "SegmentationClass" / "a.png", mask)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(voc / "JPEGImages" / "a.jpg")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    dataset = VocDataset(tmp_path, "val")
    assert dataset.class_names == VOC_CLASSES
    sample = dataset[0]
    np.testing.assert_array_equal(sample.mask, mask)
    assert sample.labels == [15]


def test_train_aug_pairs_format_and_aug_masks(tmp_path):
    voc = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationAug").mkdir(parents=True)
    for image_id, value in (("x1", 3), ("x2", 4)):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        write_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", np.full((4, 4), value))
    write_label_png(voc / "SegmentationClass" / "x1.png", np.full((4, 4), 9, np.uint8))
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text(
        "/JPEGImages/x1.jpg /SegmentationClassAug/x1.png\n"
        "/JPEGImages/x2.jpg /SegmentationClassAug/x2.png\n"
    )
    dataset = VocDataset(voc, "train_aug")
    assert dataset.ids == ["x1", "x2"]
    assert [dataset[i].labels for i in range(2)] == [[3], [4]]  # Aug masks win for train_aug


def test_wrong_layout_names_expected_folder(tmp_path):
    with pytest.raises(DatasetError, match="VOC2012"):
        VocDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="data.root"):
        build_dataset(DataConfig(dataset="voc", root=""), "train")
