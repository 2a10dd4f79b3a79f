import numpy as np
import pytest
import torch

from co2sam.semantic import class_scores, reference_semantic_map, semantic_map

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
    with pytest.raises(ValueError, match="0..3"):
        semantic_map(torch.zeros((1, 2, 2)), torch.tensor([4]), torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="box classes"):
        semantic_map(torch.zeros((2, 2, 2)), torch.tensor([1]), torch.tensor([1.0]), 4)


def test_boxes_whose_phrase_matched_no_class_are_dropped():
    logits = torch.stack([_box_logits(2, 4, slice(None), slice(0, 2), 3.0)] * 2)
    labels = semantic_map(logits, torch.tensor([0, 2]), torch.tensor([0.9, 0.5]), NUM_CLASSES)
    assert labels[:, :2].eq(2).all() and labels[:, 2:].eq(0).all()


# --- eval.compat: reference ---------------------------------------------------------


def _published_assembly(logits, classes, scores, num_classes, size, labels):
    """The published evaluation's steps, written out as it orders them (numpy, the
    published class indexing with background last and a spare all-zero channel)."""
    objects = num_classes - 1
    published = np.where(classes > 0, classes - 1, objects)  # no class -> background box
    stack = np.zeros((num_classes + 1, *logits.shape[-2:]), np.float32)
    weighted = logits * scores[:, None, None]
    for channel in np.unique(published):
        stack[channel] = weighted[published == channel].max(axis=0)
    stack[objects, stack.max(axis=0) <= 0] = 1.0
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(stack)[None], size=size, mode="bilinear", align_corners=False
    )[0].numpy()[:-1]
    if labels is not None:
        kept = np.zeros_like(resized)
        for label in labels:
            kept[label - 1] = resized[label - 1]
        kept[objects] = resized[objects]
        resized = kept
    index = np.argmax(resized, axis=0)
    return np.where(index == objects, 0, index + 1)


def test_reference_pixel_of_a_non_label_box_becomes_the_first_class_not_background():
    # class 3 (not in the labels) claims columns 0..1; class 2 (a label) columns 2..3.
    logits = torch.stack(
        [
            _box_logits(2, 4, slice(None), slice(0, 2), 4.0),
            _box_logits(2, 4, slice(None), slice(2, 4), 4.0),
        ]
    )
    classes, scores = torch.tensor([3, 2]), torch.tensor([0.9, 0.8])
    paper = semantic_map(logits, classes, scores, NUM_CLASSES, allowed_classes=[2])
    reference = reference_semantic_map(logits, classes, scores, NUM_CLASSES, (2, 4), [2])
    assert paper.tolist() == [[0, 0, 2, 2]] * 2
    assert reference.tolist() == [[1, 1, 2, 2]] * 2  # index 0 of the published order
    # Open mode keeps every class either way.
    open_map = reference_semantic_map(logits, classes, scores, NUM_CLASSES, (2, 4))
    assert open_map.tolist() == [[3, 3, 2, 2]] * 2


def test_reference_background_box_erases_foreground():
    logits = torch.stack(
        [
            _box_logits(2, 4, slice(None), slice(0, 4), 2.0),
            _box_logits(2, 4, slice(None), slice(0, 2), 5.0),
        ]
    )
    classes, scores = torch.tensor([1, 0]), torch.tensor([0.9, 0.9])  # 0: no class
    reference = reference_semantic_map(logits, classes, scores, NUM_CLASSES, (2, 4), [1])
    assert reference.tolist() == [[0, 0, 1, 1]] * 2
    assert semantic_map(logits, classes, scores, NUM_CLASSES, [1]).eq(1).all()


@pytest.mark.parametrize("labels", [None, [1, 3], [2]])
def test_reference_assembly_equals_the_published_steps(labels):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((7, 24, 32), generator=generator) * 3
    classes = torch.tensor([1, 2, 3, 0, 2, 3, 1])
    scores = torch.rand(7, generator=generator)
    size = (37, 50)
    ours = reference_semantic_map(logits, classes, scores, NUM_CLASSES, size, labels)
    expected = _published_assembly(
        logits.numpy(), classes.numpy(), scores.numpy(), NUM_CLASSES, size, labels
    )
    assert ours.shape == size
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_reference_equals_paper_without_non_label_boxes_at_the_same_size():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn((5, 16, 16), generator=generator) * 3
    classes, scores = torch.tensor([1, 2, 2, 3, 1]), torch.rand(5, generator=generator)
    for labels in (None, [1, 2, 3]):
        paper = semantic_map(logits, classes, scores, NUM_CLASSES, labels)
        reference = reference_semantic_map(logits, classes, scores, NUM_CLASSES, (16, 16), labels)
        assert torch.equal(paper, reference)


def test_reference_no_boxes_is_all_background():
    labels = reference_semantic_map(
        torch.zeros((0, 4, 4)), torch.zeros(0), torch.zeros(0), NUM_CLASSES, (6, 5), [1]
    )
    assert labels.shape == (6, 5) and labels.eq(0).all()


def test_label_confidence_is_the_winning_claim_or_one_minus_the_strongest():
    from co2sam.semantic import label_confidence

    # box 1 (class 1, score 0.8) covers columns 0..1 with logit 2; box 2 (class 2, score
    # 0.5) covers column 1..2 with logit 4; elsewhere logit -5.
    logits = torch.stack(
        [
            _box_logits(1, 4, slice(None), slice(0, 2), 2.0),
            _box_logits(1, 4, slice(None), slice(1, 3), 4.0),
        ]
    )
    classes, scores = torch.tensor([1, 2]), torch.tensor([0.8, 0.5])
    labels = semantic_map(logits, classes, scores, NUM_CLASSES)
    assert labels.tolist() == [[1, 2, 2, 0]]  # column 1: 2 * 0.8 = 1.6 < 4 * 0.5 = 2.0
    confidence = label_confidence(logits, classes, scores, labels, NUM_CLASSES)
    claim = lambda logit, score: score * torch.sigmoid(torch.tensor(logit)).item()  # noqa: E731
    expected = [
        claim(2.0, 0.8),
        claim(4.0, 0.5),
        claim(4.0, 0.5),
        1 - max(claim(-5.0, 0.8), claim(-5.0, 0.5)),
    ]
    assert confidence.shape == (1, 4) and confidence.dtype == torch.float32
    assert confidence[0].tolist() == pytest.approx(expected)
    # label-guided without class 2: its box no longer claims anything
    guided = semantic_map(logits, classes, scores, NUM_CLASSES, allowed_classes=[1])
    guided_confidence = label_confidence(logits, classes, scores, guided, NUM_CLASSES, [1])
    assert guided.tolist() == [[1, 1, 0, 0]]
    assert guided_confidence[0, 2].item() == pytest.approx(1 - claim(-5.0, 0.8))
    nothing = label_confidence(logits[:0], classes[:0], scores[:0], labels * 0, NUM_CLASSES)
    assert torch.equal(nothing, torch.ones(1, 4))
