import json

import numpy as np
import pytest
from PIL import Image

from co2sam.app import segment
from co2sam.app.models import AppModels, View, index_map
from co2sam.app.segment import InputImage, SegmentError
from co2sam.classes import voc_palette
from co2sam.data.image_io import read_label_png
from co2sam.records import Boxes

NAMES = ("background", "cat", "dog")


SEGMENTER_CLASSES = ("background", "bird", "dog")


def BoxFiller(detect=None, segmenter=False):  # noqa: N802 (stands in for a class)
    """Stand-in models: each SAM view fills every box with its class (``shift`` moves
    them); the segmenter view (no boxes) labels the top half ``bird``, in its own classes."""
    models = AppModels(None, base="stand-in", detect=detect)
    models.calls = []

    def filler(shift):
        def fill(image, boxes, class_names):
            if not shift:
                models.calls.append((image.shape, len(boxes), len(class_names)))
            label = np.zeros(image.shape[:2], np.uint8)
            for (x0, y0, x1, y1), cls in zip(boxes.xyxy, boxes.classes, strict=True):
                label[int(y0) + shift : int(y1), int(x0) : int(x1)] = cls
            return label

        return fill

    def top_half_bird(image, boxes, class_names):
        own = np.zeros(image.shape[:2], np.int64)
        own[: image.shape[0] // 2] = 1
        return index_map(SEGMENTER_CLASSES, class_names)[own]

    models.views = {"plain SAM": View(filler(0)), "adapted (Co2SAM)": View(filler(2))}
    if segmenter:
        models.views["segmenter"] = View(top_half_bird, SEGMENTER_CLASSES, needs_boxes=False)
    return models


def write_image(path, height=40, width=60, value=120):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return str(path)


def test_parse_class_names():
    assert segment.parse_class_names(" cat, dog\nbird ") == ("background", "cat", "dog", "bird")
    for text, message in [
        ("", "at least one"),
        ("cat, Background", "background"),
        ("cat, dog, cat", "typed twice: cat"),
    ]:
        with pytest.raises(SegmentError, match=message):
            segment.parse_class_names(text)


def test_class_colours_are_the_label_pngs_palette():
    colours = segment.class_colours(NAMES)
    palette = voc_palette()
    assert colours["dog"] == "#{:02x}{:02x}{:02x}".format(*palette[2])


def test_drawn_boxes_take_their_class_and_are_clipped():
    drawn = [
        {"label": "dog", "xmin": 50, "ymin": 5, "xmax": 10, "ymax": 30},  # corners swapped
        {"label": "cat", "xmin": -5, "ymin": 20, "xmax": 70, "ymax": 90},  # beyond the image
    ]
    boxes = segment.drawn_boxes(drawn, NAMES, (40, 60))
    np.testing.assert_allclose(boxes.xyxy, [[10, 5, 50, 30], [0, 20, 60, 40]])
    assert boxes.classes.tolist() == [2, 1] and boxes.scores.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ({"label": "bird", "xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9}, "'bird', which is not"),
        ({"label": "", "xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9}, "class ''"),
        ({"label": "cat", "xmin": 70, "ymin": 1, "xmax": 90, "ymax": 9}, "outside the image"),
    ],
)
def test_drawn_boxes_refuse_unknown_classes_and_empty_boxes(box, message):
    with pytest.raises(SegmentError, match=message):
        segment.drawn_boxes([box], NAMES, (40, 60))


def test_load_upload_limits_pixels_refuses_svg_and_non_images(tmp_path):
    path = write_image(tmp_path / "big.png", 40, 60)
    with pytest.raises(SegmentError, match="40 x 60|60 x 40"):
        segment.load_upload(path, max_pixels=2000)
    assert segment.load_upload(path, max_pixels=2400).shape == (40, 60, 3)
    svg = tmp_path / "x.svg"
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    with pytest.raises(SegmentError, match="SVG"):
        segment.load_upload(svg, max_pixels=10**6)
    eps = tmp_path / "drawing.png"  # the name does not matter: the content does
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(SegmentError, match="is in the EPS format"):
        segment.load_upload(eps, max_pixels=10**6)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(SegmentError, match="notes.png is not an image"):
        segment.load_upload(text, max_pixels=10**6)


def test_load_upload_applies_the_pages_rotation(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[0, 0] = 255  # top-left
    Image.fromarray(image).save(tmp_path / "a.png")
    turned = segment.load_upload(tmp_path / "a.png", 10**6, orientation=1)
    assert turned.shape == (30, 20, 3) and turned[0, -1, 0] == 255  # clockwise: top-right


def test_unique_names_are_file_safe_and_distinct():
    taken = set()
    names = [segment.unique_name(p, taken) for p in ["/x/a b.png", "/y/a b.jpg", "/z/..png"]]
    assert names == ["a_b", "a_b-2", "image"]


def test_segment_images_keeps_going_after_a_failed_image(tmp_path):
    good = write_image(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    drawn = [{"label": "cat", "xmin": 10, "ymin": 10, "xmax": 30, "ymax": 30}]
    inputs = [
        InputImage("good", good, drawn=drawn),
        InputImage("broken", str(broken), drawn=drawn),
        InputImage("nobox", good),  # no drawn boxes and no detector
    ]
    steps = []
    models = BoxFiller()
    outcomes = segment.segment_images(
        models, inputs, NAMES, max_pixels=10**6, progress=lambda *a: steps.append(a)
    )
    assert [o.error is None for o in outcomes] == [True, False, False]
    assert "broken.png is not an image" in outcomes[1].error
    assert "draw at least one box" in outcomes[2].error
    assert steps[0] == (0, 3, "good") and steps[-1] == (3, 3, "")
    assert models.calls == [((40, 60, 3), 1, 3)]
    assert outcomes[0].box_origin == "drawn"
    assert (outcomes[0].label_maps["plain SAM"] == 1).sum() == 400


def test_images_without_drawn_boxes_take_the_detectors(tmp_path):
    path = write_image(tmp_path / "a.png")
    found = Boxes(np.array([[0, 0, 10, 10]], np.float32), np.array([2]), np.array([0.7]))
    models = BoxFiller(detect=lambda image, names: found if names == NAMES else Boxes())
    (outcome,) = segment.segment_images(models, [InputImage("a", path)], NAMES, max_pixels=10**6)
    assert outcome.error is None and outcome.box_origin == "detector"
    assert outcome.boxes.scores.tolist() == pytest.approx([0.7])
    models.detect = lambda image, names: Boxes()
    (empty,) = segment.segment_images(models, [InputImage("a", path)], NAMES, max_pixels=10**6)
    assert "found none of the classes" in empty.error


def test_what_the_page_shows_and_downloads(tmp_path):
    path = write_image(tmp_path / "a.png")
    drawn = [
        {"label": "cat", "xmin": 0, "ymin": 0, "xmax": 20, "ymax": 10},
        {"label": "dog", "xmin": 30, "ymin": 20, "xmax": 40, "ymax": 40},
    ]
    failed = tmp_path / "b.png"
    failed.write_text("no")
    outcomes = segment.segment_images(
        BoxFiller(),
        [InputImage("a", path, drawn=drawn), InputImage("b", str(failed), drawn=drawn)],
        NAMES,
        max_pixels=10**6,
    )
    good, bad = outcomes
    base, masks = segment.annotated_view(good, "plain SAM", NAMES)
    assert base.shape == (40, 60, 3) and not np.array_equal(base, good.image)  # boxes drawn
    assert [name for _, name in masks] == ["cat", "dog"]
    assert masks[0][0].sum() == 200 and masks[1][0].sum() == 200
    rows = segment.area_rows(good, "plain SAM", NAMES)
    assert rows == [["background", 2000, 83.33], ["cat", 200, 8.33], ["dog", 200, 8.33]]
    shifted = segment.area_rows(good, "adapted (Co2SAM)", NAMES)
    assert shifted[1][1] == 160  # the other view: the other label map
    assert segment.caption(good, "plain SAM", NAMES) == "a: cat 8.3%, dog 8.3%"
    assert segment.caption(bad, "plain SAM", NAMES).startswith("b: error: b.png is not")
    assert segment.thumbnail(bad, "plain SAM").shape[2] == 3

    files = segment.write_downloads(outcomes, "adapted (Co2SAM)", NAMES, tmp_path / "out")
    assert [f.name for f in files] == ["a.png", "a.json"]  # nothing for the failed image
    np.testing.assert_array_equal(read_label_png(files[0]), good.label_maps["adapted (Co2SAM)"])
    with Image.open(files[0]) as image:
        assert image.mode == "P"
    details = json.loads(files[1].read_text())
    assert details["model"] == "adapted (Co2SAM)" and details["mode"] == "open"
    assert details["areas"]["cat"]["pixels"] == 160
    assert details["boxes"][1] == {
        "xyxy": [30.0, 20.0, 40.0, 40.0],
        "class": "dog",
        "class_index": 2,
        "score": 1.0,
        "origin": "drawn",
    }
    again = segment.boxes_for_drawing(good, NAMES)
    assert [(b["label"], b["xmin"], b["ymax"]) for b in again] == [("cat", 0, 10), ("dog", 30, 40)]
    with pytest.raises(SegmentError, match="not segmented"):
        segment.area_rows(bad, "plain SAM", NAMES)


def test_the_segmenter_segments_images_without_boxes_in_the_pages_classes(tmp_path):
    path = write_image(tmp_path / "a.png")
    drawn = [{"label": "cat", "xmin": 0, "ymin": 0, "xmax": 20, "ymax": 10}]
    inputs = [InputImage("drawn", path, drawn=drawn), InputImage("bare", path)]
    models = BoxFiller(segmenter=True)
    drawn_outcome, bare = segment.segment_images(models, inputs, NAMES, max_pixels=10**6)
    names, shown = models.class_lists(NAMES)
    assert names == ("background", "cat", "dog", "bird")  # bird: the segmenter's, appended
    assert shown["segmenter"] == ("bird", "dog") and shown["plain SAM"] == ("cat", "dog")

    assert drawn_outcome.error is None and list(drawn_outcome.label_maps) == [
        "plain SAM",
        "adapted (Co2SAM)",
        "segmenter",
    ]
    assert bare.error is None and list(bare.label_maps) == ["segmenter"]  # no boxes: no SAM
    assert "draw at least one box" in bare.problem("plain SAM")
    assert "the segmenter needs none" in bare.problem("adapted (Co2SAM)")
    assert bare.problem("segmenter") is None
    assert (bare.label_maps["segmenter"][:20] == 3).all()  # bird is class 3 on the page
    assert not bare.label_maps["segmenter"][20:].any()

    base, masks = segment.annotated_view(drawn_outcome, "segmenter", names, shown["segmenter"])
    np.testing.assert_array_equal(base, drawn_outcome.image)  # its view draws no boxes
    assert [name for _, name in masks] == ["bird", "dog"] and masks[0][0].sum() == 1200
    sam_base, _ = segment.annotated_view(drawn_outcome, "plain SAM", names, shown["plain SAM"])
    assert not np.array_equal(sam_base, drawn_outcome.image)
    rows = segment.area_rows(bare, "segmenter", names, shown["segmenter"])
    assert rows == [["background", 1200, 50.0], ["bird", 1200, 50.0], ["dog", 0, 0.0]]
    assert segment.caption(bare, "segmenter", names, shown["segmenter"]) == "bare: bird 50.0%"
    assert segment.caption(bare, "plain SAM", names).startswith("bare: error: no boxes")
    with pytest.raises(SegmentError, match="draw at least one box"):
        segment.area_rows(bare, "plain SAM", names)

    files = segment.write_downloads([drawn_outcome, bare], "segmenter", names, tmp_path / "s")
    assert [f.name for f in files] == ["drawn.png", "drawn.json", "bare.png", "bare.json"]
    details = json.loads(files[1].read_text())
    assert details["model"] == "segmenter" and details["mode"] == "open"
    assert details["boxes"] == [] and details["class_names"] == list(names)
    assert details["areas"]["bird"]["pixels"] == 1200
    sam_files = segment.write_downloads([drawn_outcome, bare], "plain SAM", names, tmp_path / "p")
    assert [f.name for f in sam_files] == ["drawn.png", "drawn.json"]  # bare: no SAM result


def test_without_a_box_free_view_class_names_are_required():
    assert segment.parse_class_names("", allow_empty=True) == ("background",)
    with pytest.raises(SegmentError, match="at least one"):
        segment.parse_class_names("")


def test_the_detector_is_not_asked_without_class_names(tmp_path):
    path = write_image(tmp_path / "a.png")
    asked = []
    models = BoxFiller(detect=lambda image, names: asked.append(names), segmenter=True)
    (outcome,) = segment.segment_images(
        models, [InputImage("a", path)], ("background",), max_pixels=10**6
    )
    assert asked == [] and list(outcome.label_maps) == ["segmenter"]
    assert "type the class names" in outcome.problem("plain SAM")
