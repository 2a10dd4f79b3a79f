import albumentations as A
import numpy as np
import pytest

from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.data.views import TrainViews, flip_boxes
from co2sam.data.voc import VocDataset


def _instance_boxes(instances: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """XYXY boxes enclosing whole pixels of each instance id (1..254)."""
    ids = [i for i in np.unique(instances) if 0 < i < 255]
    boxes = []
    for i in ids:
        rows, cols = np.nonzero(instances == i)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return np.array(boxes, np.float32), ids


@pytest.fixture(scope="module")
def sample_and_instances(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("views")
    voc = make_synthetic_dataset(root, num_images=2, image_size=(48, 80), seed=2, max_objects=3)
    dataset = VocDataset(voc, "train")
    sample = dataset[0]
    instances = np.array(Image.open(voc / "SegmentationObject" / f"{sample.id}.png"))
    return sample, instances


def test_weak_flip_moves_boxes_with_objects(sample_and_instances):
    sample, instances = sample_and_instances
    boxes, ids = _instance_boxes(instances)
    assert len(boxes) >= 1
    views = TrainViews()
    combos = set()
    for seed in range(24):
        pair = views(sample.image, boxes, np.random.default_rng(seed))
        flipped = instances
        if pair.hflip:
            flipped = flipped[:, ::-1]
        if pair.vflip:
            flipped = flipped[::-1, :]
        combos.add((pair.hflip, pair.vflip))
        expected_image = sample.image
        if pair.hflip:
            expected_image = expected_image[:, ::-1]
        if pair.vflip:
            expected_image = expected_image[::-1]
        np.testing.assert_array_equal(pair.weak, expected_image)
        expected_boxes, _ = _instance_boxes(flipped)
        np.testing.assert_allclose(pair.boxes, expected_boxes, atol=1e-3)
        assert pair.boxes.dtype == np.float32
    assert combos == {(False, False), (True, False), (False, True), (True, True)}


def test_boxes_kept_in_order_even_clipped_or_degenerate():
    image = np.zeros((10, 20, 3), np.uint8)
    boxes = np.array([[-5, 2, 8, 6], [3, 3, 3, 9], [15, 1, 30, 12]], np.float32)
    for seed in range(8):
        pair = TrainViews()(image, boxes, np.random.default_rng(seed))
        assert pair.boxes.shape == (3, 4)
        clipped = np.array([[0, 2, 8, 6], [3, 3, 3, 9], [15, 1, 20, 10]], np.float32)
        expected = flip_boxes(clipped, (10, 20), hflip=pair.hflip, vflip=pair.vflip)
        np.testing.assert_allclose(pair.boxes, expected, atol=1e-3)


def test_strong_view_never_changes_geometry():
    views = TrainViews()
    assert all(isinstance(t, A.ImageOnlyTransform) for t in views.strong_transform.transforms)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :12], image[:, 12:40], image[:, 40:] = 40, 80, 120  # edges after columns 11, 39
    changed = 0
    for seed in range(40):
        strong = views.strong_view(image, np.random.default_rng(seed))
        assert strong.shape == image.shape and strong.dtype == np.uint8
        changed += int(not np.array_equal(strong, image))
        profile = np.abs(np.diff(strong.astype(float).mean(axis=(0, 2))))
        edges = sorted(np.argsort(-profile)[:2].tolist())
        assert abs(edges[0] - 11) <= 1 and abs(edges[1] - 39) <= 1, (seed, edges)
    assert changed > 30  # the strong view does change the pixels


def test_same_seed_same_views(sample_and_instances):
    sample, instances = sample_and_instances
    boxes, _ = _instance_boxes(instances)
    first = TrainViews()(sample.image, boxes, np.random.default_rng(7))
    second = TrainViews()(sample.image, boxes, np.random.default_rng(7))
    np.testing.assert_array_equal(first.weak, second.weak)
    np.testing.assert_array_equal(first.strong, second.strong)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    views = TrainViews(seed=3)
    outputs = [views(sample.image, boxes).strong for _ in range(4)]
    assert any(not np.array_equal(outputs[0], other) for other in outputs[1:])


def test_strong_disabled_copies_weak(sample_and_instances):
    sample, _ = sample_and_instances
    pair = TrainViews(strong=False)(sample.image, np.zeros((0, 4)), np.random.default_rng(0))
    np.testing.assert_array_equal(pair.weak, pair.strong)
    assert pair.boxes.shape == (0, 4)
