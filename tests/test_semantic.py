import pytest
import torch

from co2sam.semantic import class_scores, semantic_map

NUM_CLASSES = 4  # background + 3


def _box_logits(height, width, rows, cols, inside, outside=-5.0):
    logits = torch.full((height, width), outside)
    logits[rows, cols] = inside
    return logits


def test_overlapping_boxes_of_two_classes_take_the_higher_weighted_logit():
    # class 1 covers columns 0..3 with logit 2, class 2 covers columns 2..5 with logit 3.
    # confidences 0.9 and 0.5: overlap scores 1.8 (class 1) vs 1.5 (class 2) -> class 1.
    logits = torch.stack(
        [
            _box_logits(2, 6, slice(None), slice(0, 4), 2.0),
            _box_logits(2, 6, slice(None), slice(2, 6), 3.0),
        ]
    )
    labels = semantic_map(logits, torch.tensor([1, 2]), torch.tensor([0.9, 0.5]), NUM_CLASSES)
    expected = torch.tensor([[1, 1, 1, 1, 2, 2]] * 2)
    assert torch.equal(labels, expected)
    assert labels.dtype == torch.int64


def test_two_boxes_of_one_class_take_the_max():
    logits = torch.stack(
        [
            _box_logits(1, 4, slice(None), slice(0, 2), 1.0),
            _box_logits(1, 4, slice(None), slice(1, 3), 4.0),
            _box_logits(1, 4, slice(None), slice(0, 4), 3.0),
        ]
    )
    # class 1 boxes: max(1, 4) * 1.0 at col 1; class 2: 3 * 1.0 everywhere.
    labels = semantic_map(logits, torch.tensor([1, 1, 2]), torch.tensor([1.0, 1.0, 1.0]), 4)
    assert labels.tolist() == [[2, 1, 1, 2]]


def test_box_with_negative_logits_everywhere_paints_nothing():
    logits = torch.stack(
        [
            torch.full((3, 3), -0.1),
            _box_logits(3, 3, 0, slice(None), 1.0, outside=-1.0),
        ]
    )
    labels = semantic_map(logits, torch.tensor([3, 1]), torch.tensor([0.99, 0.4]), NUM_CLASSES)
    expected = torch.tensor([[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    assert torch.equal(labels, expected)
    scores = class_scores(logits, torch.tensor([3, 1]), torch.tensor([0.99, 0.4]), NUM_CLASSES)
    assert scores[0].tolist() == [[0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert scores[2].abs().sum() == 0  # class without boxes scores 0
    assert (scores[3] < 0).all()


def test_no_boxes_is_all_background():
    labels = semantic_map(torch.zeros((0, 5, 7)), torch.zeros(0), torch.zeros(0), NUM_CLASSES)
    assert labels.shape == (5, 7)
    assert (labels == 0).all()


def test_label_guided_drops_boxes_of_classes_not_in_the_image():
    logits = torch.stack(
        [
            _box_logits(1, 4, slice(None), slice(0, 4), 5.0),  # class 3, wrong class, strong
            _box_logits(1, 4, slice(None), slice(0, 2), 1.0),  # class 1, in the labels
        ]
    )
    classes, confidences = torch.tensor([3, 1]), torch.tensor([0.9, 0.9])
    open_labels = semantic_map(logits, classes, confidences, NUM_CLASSES)
    guided = semantic_map(logits, classes, confidences, NUM_CLASSES, allowed_classes=[1])
    assert open_labels.tolist() == [[3, 3, 3, 3]]
    assert guided.tolist() == [[1, 1, 0, 0]]
    nothing_allowed = semantic_map(logits, classes, confidences, NUM_CLASSES, allowed_classes=[])
    assert (nothing_allowed == 0).all()


def test_exact_tie_goes_to_the_lower_class_index():
    logits = torch.ones((2, 2, 2))
    labels = semantic_map(logits, torch.tensor([3, 2]), torch.tensor([0.5, 0.5]), NUM_CLASSES)
    assert (labels == 2).all()


def test_semantic_map_agrees_with_argmax_of_class_scores():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((12, 9, 11), generator=generator) * 3
    classes = torch.randint(1, 21, (12,), generator=generator)
    confidences = torch.rand(12, generator=generator)
    for allowed in (None, [2, 5, 7, 11]):
        labels = semantic_map(logits, classes, confidences, 21, allowed)
        scores = class_scores(logits, classes, confidences, 21, allowed)
        assert torch.equal(labels, scores.argmax(dim=0))


def test_rejects_classes_out_of_range_and_mismatched_lengths():
    with pytest.raises(ValueError, match="1..3"):
        semantic_map(torch.zeros((1, 2, 2)), torch.tensor([0]), torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="box classes"):
        semantic_map(torch.zeros((2, 2, 2)), torch.tensor([1]), torch.tensor([1.0]), 4)
