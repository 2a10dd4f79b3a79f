import shutil

import numpy as np
import pytest
from PIL import Image

from co2sam.data.image_io import DatasetError, read_label_png, write_label_png
from co2sam.data.voc import VocDataset
from co2sam.distill.augment import TrainAugment
from co2sam.distill.config import AugmentConfig
from co2sam.distill.data import PseudoLabelFolder, PseudoLabelSet, check_pseudo_labels


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, num_images=4, num_classes=2, image_size=40, seed=0, splits={"train": 4}
    )


@pytest.fixture
def pseudo(voc, tmp_path):
    """A pseudo-label folder for the train split: the true masks, confidence 0.8 / 0.2."""
    dataset = VocDataset(voc, "train")
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "Confidence").mkdir()
    for image_id in dataset.ids:
        shutil.copy(voc / "SegmentationClass" / f"{image_id}.png", tmp_path / "SegmentationClass")
        confidence = np.full((40, 40), 204, np.uint8)
        confidence[:, :10] = 51
        Image.fromarray(confidence).save(tmp_path / "Confidence" / f"{image_id}.png")
    return dataset, PseudoLabelFolder.find(tmp_path)


def test_folder_is_found_from_itself_or_its_label_folder(pseudo, tmp_path):
    _, folder = pseudo
    assert PseudoLabelFolder.find(tmp_path / "SegmentationClass") == folder
    with pytest.raises(DatasetError, match="--pseudo-labels"):
        PseudoLabelFolder.find(tmp_path / "Confidence")


def test_matching_pseudo_labels_pass_the_check(pseudo):
    dataset, folder = pseudo
    check_pseudo_labels(dataset, folder, confidence=True)


def test_mismatched_folders_are_refused_naming_every_file(pseudo):
    dataset, folder = pseudo
    ids = dataset.ids
    folder.label_path(ids[0]).unlink()
    write_label_png(folder.label_path(ids[1]), np.zeros((20, 40), np.uint8))
    wrong = read_label_png(folder.label_path(ids[2]))
    wrong[0, 0] = 7  # 2 classes + background: 0..2 and 255 only
    write_label_png(folder.label_path(ids[2]), wrong)
    folder.confidence_path(ids[3]).unlink()
    with pytest.raises(DatasetError) as error:
        check_pseudo_labels(dataset, folder, confidence=True)
    message = str(error.value)
    assert "5 problem(s) in 4 images" in message  # image 1's confidence is now too big
    assert f"{ids[0]}.png: missing" in message
    assert f"{ids[1]}.png: 40x20 but its image" in message
    assert f"Confidence/{ids[1]}.png: size differs" in message
    assert f"{ids[2]}.png: values [7] outside 0..2 and 255" in message
    assert f"Confidence/{ids[3]}.png: missing" in message
    assert "re-run `co2sam pseudo-labels`" in message
    check_pseudo_labels(dataset, folder, ids=[])  # nothing to check, nothing refused


def test_low_confidence_pixels_are_ignored(pseudo):
    dataset, folder = pseudo
    augment = TrainAugment(AugmentConfig())
    plain = PseudoLabelSet(dataset, folder, augment, seed=0)
    filtered = PseudoLabelSet(dataset, folder, augment, seed=0, min_confidence=0.5)
    _, label = plain.read(0)
    _, kept = filtered.read(0)
    assert (kept[:, :10] == 255).all()  # confidence 0.2 < 0.5
    assert np.array_equal(kept[:, 10:], label[:, 10:])  # confidence 0.8


def test_items_are_fixed_by_seed_epoch_and_index(pseudo):
    dataset, folder = pseudo
    config = AugmentConfig(scale=[64, 32], crop_size=32)
    items = PseudoLabelSet(dataset, folder, TrainAugment(config), seed=3)
    first = items[1]
    items.set_epoch(1)
    other_epoch = items[1]
    items.set_epoch(0)
    again = items[1]
    assert first[0].shape == (3, 32, 32) and first[1].shape == (32, 32)
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()
    assert not (first[0] == other_epoch[0]).all()
