import numpy as np
import pytest
import torch
from PIL import Image

from co2sam.classes import voc_palette
from co2sam.records import Boxes
from co2sam.visualize import (
    colorize,
    comparison_grid,
    confusion_matrix_figure,
    load_label_png,
    overlay,
    save_label_png,
)


def _label():
    label = np.zeros((6, 8), np.int64)
    label[1:4, 2:6] = 12
    label[5, :] = 255
    return label


def test_label_png_round_trip_with_voc_palette(tmp_path):
    path = save_label_png(tmp_path / "a" / "x.png", torch.from_numpy(_label()))
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.size == (8, 6)
        palette = np.array(image.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(palette, voc_palette())
    assert np.array_equal(load_label_png(path), _label())


def test_label_png_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        save_label_png(tmp_path / "x.png", np.full((2, 2), 300))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        save_label_png(tmp_path / "x.png", np.zeros((2, 2, 3)))


def test_colorize_and_overlay_tint_objects_only():
    image = np.full((6, 8, 3), 100, np.uint8)
    label = _label()
    assert np.array_equal(colorize(label)[2, 3], voc_palette()[12])
    blended = overlay(image, label, alpha=0.5)
    assert np.array_equal(blended[0, 0], image[0, 0])  # background untouched
    assert np.array_equal(blended[5, 0], image[5, 0])  # ignore untouched
    expected = np.round(0.5 * 100 + 0.5 * voc_palette()[12].astype(float)).astype(np.uint8)
    assert np.array_equal(blended[2, 3], expected)


def test_overlay_draws_boxes_in_class_colour():
    image = np.zeros((40, 60, 3), np.uint8)
    boxes = Boxes(np.array([[5, 5, 50, 35]]), np.array([1]), np.array([0.8]))
    drawn = overlay(image, boxes=boxes, class_names=["background", "aeroplane"])
    assert drawn.shape == image.shape
    assert np.array_equal(drawn[30, 5], voc_palette()[1])  # left edge of the box


def test_figures_are_written(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    path = confusion_matrix_figure(matrix, ["bg", "a", "b"], tmp_path / "cm.png")
    with Image.open(path) as figure:
        assert figure.size[0] > 100
    image = np.zeros((6, 8, 3), np.uint8)
    grid = comparison_grid([(image, _label(), _label(), None)] * 2, tmp_path / "grid.png")
    assert grid.is_file()
    with pytest.raises(ValueError, match="expected 4"):
        comparison_grid([(image, _label())], tmp_path / "bad.png")
