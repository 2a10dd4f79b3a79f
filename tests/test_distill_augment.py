import numpy as np

from co2sam.distill.augment import TrainAugment, crop_window
from co2sam.distill.config import AugmentConfig
from co2sam.inference.segmenter import fit_scale


def _image_and_label(height=48, width=80):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), np.uint8)
    label[10:30, 20:50] = 1
    label[:3] = 255
    return image, label


def test_same_generator_state_gives_the_same_crop():
    augment = TrainAugment(AugmentConfig(scale=[256, 64], crop_size=64))
    image, label = _image_and_label()
    first = augment(image, label, np.random.default_rng([1, 2, 3]))
    again = augment(image, label, np.random.default_rng([1, 2, 3]))
    other = augment(image, label, np.random.default_rng([1, 2, 4]))
    assert first[0].shape == (3, 64, 64) and first[0].dtype == np.float32
    assert first[1].shape == (64, 64) and first[1].dtype == np.int64
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_small_images_are_padded_with_ignored_labels_and_zero_pixels():
    config = AugmentConfig(scale=[64, 16], ratio_range=[1.0, 1.0], crop_size=32, photometric=False)
    image, label = _image_and_label(24, 40)  # fitted to 16 x 27, smaller than the crop
    pixels, crop = TrainAugment(config)(image, label, np.random.default_rng(0))
    assert (crop[16:] == 255).all() and (crop[:, 27:] == 255).all()
    assert (pixels[:, 16:] == 0).all() and (pixels[:, :, 27:] == 0).all()
    assert set(np.unique(crop[:16, :27])) <= {0, 1, 255}


def test_flip_moves_the_label_with_the_image():
    config = AugmentConfig(
        scale=[80, 48], ratio_range=[1.0, 1.0], crop_size=80, hflip=1.0, photometric=False
    )
    image, label = _image_and_label()
    pixels, crop = TrainAugment(config)(image, label, np.random.default_rng(0))
    assert np.array_equal(crop[:48], label[:, ::-1])


def test_fit_scale_keeps_the_image_inside_long_by_short():
    assert fit_scale(375, 500, (2048, 512)) == 512 / 375  # VOC: short side to 512
    assert fit_scale(100, 1000, (2048, 512)) == 2048 / 1000  # a panorama: long side caps


def test_crops_dominated_by_one_class_are_redrawn():
    label = np.zeros((100, 100), np.uint8)
    label[:, 60:] = 1  # a 40-pixel-wide strip of class 1
    for seed in range(20):
        left, top, right, bottom = crop_window(label, 50, 0.75, np.random.default_rng(seed))
        values, counts = np.unique(label[top:bottom, left:right], return_counts=True)
        assert len(values) == 2 and counts.max() / counts.sum() < 0.75
