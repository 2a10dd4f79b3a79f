"""prompts.compat: reference: the published code's detection stage, piece by piece."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_prompts_text_queries import make_tokenizer

from co2sam.classes import VOC_CLASSES
from co2sam.prompts.reference import (
    box_phrase,
    detector_input,
    phrase_class,
    select_reference_detections,
)
from co2sam.prompts.text_queries import build_queries


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("pottedplant", "pottedplant"),
        ("potted plant", None),  # the published names are written as one word
        ("person dog", "dog"),  # the first class in VOC's order, not the first word
        ("tv monitor", None),
        ("tvmonitor", "tvmonitor"),
        ("a cat on a sofa", "cat"),
        ("", None),
        ("diningtable .", "diningtable"),
    ],
)
def test_phrase_maps_to_the_first_class_whose_name_it_contains(phrase, expected):
    index = phrase_class(phrase, VOC_CLASSES)
    assert index == (0 if expected is None else VOC_CLASSES.index(expected))


def test_detector_input_swaps_channels_resizes_and_pads_for_evaluation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    training = detector_input(image, padded=False, size=64)
    assert training.image.shape == (38, 64, 3) and training.resized == (38, 64)
    by_hand = np.asarray(Image.fromarray(image[..., ::-1].copy()).resize((64, 38), Image.BILINEAR))
    np.testing.assert_array_equal(training.image, by_hand)
    evaluation = detector_input(image, padded=True, size=64)
    assert evaluation.image.shape == (64, 64, 3)
    np.testing.assert_array_equal(evaluation.image[:38], by_hand)
    assert not evaluation.image[38:].any()
    # Boxes map back to the original frame, unclipped (the published code never clips).
    mapped = evaluation.to_original(np.array([[0, 0, 64, 38], [32, 19, 70, 64]], np.float32))
    np.testing.assert_allclose(mapped, [[0, 0, 50, 30], [25, 15, 70 * 50 / 64, 64 * 30 / 38]])


@pytest.fixture()
def tokenizer(tmp_path):
    return make_tokenizer(tmp_path, ["person", "dog", "potted", "##pl", "##ant", "tv"])


def test_box_phrase_decodes_tokens_above_the_text_threshold(tokenizer):
    (query,) = build_queries(tokenizer, {1: ["person"], 2: ["dog"], 3: ["pottedplant"]})
    tokens = tokenizer.convert_ids_to_tokens(list(query.input_ids))
    assert tokens[5:8] == ["potted", "##pl", "##ant"]
    probs = torch.zeros(256)
    probs[[0, 1, 3]] = 0.9  # [CLS] (always ignored), person, dog
    assert box_phrase(probs, query, tokenizer, 0.25) == "person dog"
    probs = torch.zeros(256)
    probs[[5, 6, 7]] = 0.5
    assert box_phrase(probs, query, tokenizer, 0.25) == "pottedplant"
    assert box_phrase(probs, query, tokenizer, 0.6) == ""


def test_selection_keeps_boxes_by_box_score_only(tokenizer):
    names = ("background", "person", "dog", "pottedplant")
    (query,) = build_queries(tokenizer, {1: ["person"], 2: ["dog"], 3: ["pottedplant"]})
    probs = torch.zeros((3, 256))
    probs[0, [1, 3]] = 0.9  # "person dog" -> person (class 1 comes first)
    probs[1, 3] = 0.2  # box score 0.2 < 0.3: dropped
    probs[2, 5] = 0.35  # "potted": no name is a substring -> no class (0), still kept
    boxes = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    found = select_reference_detections(probs, boxes, query, tokenizer, names, 0.3, 0.25, None)
    assert found.classes.tolist() == [1, 0]
    np.testing.assert_allclose(found.scores, [0.9, 0.35])
    np.testing.assert_array_equal(found.xyxy, boxes[[0, 2]].numpy())
    queried = select_reference_detections(probs, boxes, query, tokenizer, names, 0.3, 0.25, 2)
    assert queried.classes.tolist() == [2, 2]  # training: every box is the queried class
