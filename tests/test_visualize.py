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


@pytest.mark.parametrize(
    "box", [[150, 5, 200, 60], [150, 80, 200, 100], [0, 0, 30, 20], [-10, -10, 5, 5]]
)
def test_box_captions_stay_inside_the_image(box):
    from PIL import ImageDraw

    from co2sam.visualize import _caption_origin

    caption = "green rectangle 0.85"
    size = (200, 100)
    draw = ImageDraw.Draw(Image.new("RGB", size))
    left, top, right, bottom = draw.textbbox(_caption_origin(draw, caption, box[:2], size), caption)
    assert left >= 0 and right <= size[0] and top >= 0 and bottom <= size[1]
    # The caption's fill colour is drawn right up to the image's edge, not past it.
    drawn = overlay(
        np.zeros((size[1], size[0], 3), np.uint8),
        boxes=Boxes(np.array([box]), np.array([1]), np.array([0.85])),
        class_names=["background", "green rectangle"],
    )
    assert (drawn == voc_palette()[1]).all(axis=2).sum() > 50


def test_comparison_grid_legend_names_every_class_colour(tmp_path):
    image = np.zeros((6, 8, 3), np.uint8)
    rows = [(image, _label(), _label(), None)]
    plain = comparison_grid(rows, tmp_path / "plain.png")
    legend = comparison_grid(rows, tmp_path / "legend.png", legend=["background", "a", "b"])
    with Image.open(plain) as a, Image.open(legend) as b:
        assert a.size == b.size
        pixels = np.asarray(b.convert("RGB"))
        assert not np.array_equal(np.asarray(a.convert("RGB")), pixels)
    for colour in voc_palette()[1:3]:  # each class's swatch is in the figure
        assert (pixels == colour).all(axis=2).any()
