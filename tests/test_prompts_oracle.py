import numpy as np
import pytest

from co2sam.prompts.oracle import oracle_boxes
from co2sam.prompts.simulate import perturb_boxes
from co2sam.records import Boxes, Sample


def _sample() -> tuple[Sample, np.ndarray]:
    mask = np.zeros((40, 60), np.uint8)
    instances = np.zeros((40, 60), np.uint8)
    mask[5:15, 10:20] = 1  # cat, instance 1
    instances[5:15, 10:20] = 1
    mask[5:15, 20:30] = 1  # a second cat touching the first: one component
    instances[5:15, 20:30] = 2
    mask[25:35, 40:55] = 2  # dog
    instances[25:35, 40:55] = 3
    mask[24, 40:55] = 255  # void border
    instances[24, 40:55] = 255
    mask[0:2, 0:2] = 2  # 4-pixel speck, dropped by min_area
    image = np.zeros((40, 60, 3), np.uint8)
    return Sample(image=image, mask=mask, labels=[1, 2], id="x"), instances


def test_components_enclose_each_class_region():
    sample, _ = _sample()
    boxes = oracle_boxes(sample)
    assert boxes.classes.tolist() == [1, 2]
    np.testing.assert_array_equal(boxes.xyxy, [[10, 5, 30, 15], [40, 25, 55, 35]])
    np.testing.assert_array_equal(boxes.scores, [1.0, 1.0])
    assert len(oracle_boxes(sample, min_area=1)) == 3


def test_instances_give_one_box_each():
    sample, instances = _sample()
    boxes = oracle_boxes(sample, instances)
    assert boxes.classes.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(boxes.xyxy, [[10, 5, 20, 15], [20, 5, 30, 15], [40, 25, 55, 35]])
    for (x0, y0, x1, y1), instance_id in zip(boxes.xyxy.astype(int), (1, 2, 3), strict=True):
        inside = np.zeros_like(instances, bool)
        inside[y0:y1, x0:x1] = True
        assert (instances == instance_id)[~inside].sum() == 0  # encloses the instance


def test_no_mask_is_a_clear_error():
    sample, _ = _sample()
    sample.mask = None
    with pytest.raises(ValueError, match="no"):
        oracle_boxes(sample)


def _many_boxes(count: int) -> Boxes:
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 300, (count, 2))
    xyxy = np.concatenate([corner, corner + rng.uniform(20, 100, (count, 2))], axis=1)
    return Boxes(xyxy, rng.integers(1, 4, count), np.ones(count))


def test_perturb_is_deterministic_and_respects_rates():
    boxes = _many_boxes(2000)
    first = perturb_boxes(boxes, (480, 640), np.random.default_rng(7))
    second = perturb_boxes(boxes, (480, 640), np.random.default_rng(7))
    np.testing.assert_array_equal(first.xyxy, second.xyxy)
    np.testing.assert_array_equal(first.scores, second.scores)
    different = perturb_boxes(boxes, (480, 640), np.random.default_rng(8))
    assert not np.array_equal(first.scores, different.scores)

    true = first.scores >= 0.5
    assert abs(true.sum() / 2000 - 0.9) < 0.03  # miss_rate 0.1
    assert abs((~true).sum() / 2000 - 0.2) < 0.03  # false_rate 0.2
    assert first.scores[true].max() <= 0.9 and first.scores[~true].max() < 0.5
    assert set(first.classes.tolist()) <= {1, 2, 3}
    xyxy = first.xyxy
    assert (xyxy[:, 0] >= 0).all() and (xyxy[:, 2] <= 640).all() and (xyxy[:, 3] <= 480).all()
    assert (xyxy[:, 2] > xyxy[:, 0]).all() and (xyxy[:, 3] > xyxy[:, 1]).all()


def test_perturb_jitter_scales_with_box_size():
    boxes = _many_boxes(500)
    moved = perturb_boxes(
        boxes, (2000, 2000), np.random.default_rng(1), miss_rate=0.0, false_rate=0.0, jitter=0.05
    )
    assert len(moved) == 500
    width = boxes.xyxy[:, 2] - boxes.xyxy[:, 0]
    relative = np.abs(moved.xyxy[:, 0] - boxes.xyxy[:, 0]) / width
    assert 0.02 < relative.mean() < 0.06  # E|N(0, 0.05)| = 0.04
    exact = perturb_boxes(
        boxes, (2000, 2000), np.random.default_rng(1), miss_rate=0.0, false_rate=0.0, jitter=0.0
    )
    np.testing.assert_allclose(exact.xyxy, boxes.xyxy, atol=1e-3)


def test_perturb_false_boxes_use_given_labels_and_empty_input():
    empty = perturb_boxes(Boxes(), (100, 100), np.random.default_rng(0))
    assert len(empty) == 0
    boxes = _many_boxes(300)
    noisy = perturb_boxes(
        boxes, (480, 640), np.random.default_rng(0), miss_rate=1.0, false_rate=1.0, labels=[9]
    )
    assert len(noisy) == 300 and set(noisy.classes.tolist()) == {9}
