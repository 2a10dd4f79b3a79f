"""The Segment tab's handlers, called as Gradio calls them, without a browser."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from co2sam.app.models import ADAPTED, PLAIN, SEGMENTER


def test_class_names_drive_the_drawing_panel(app_page):
    import gradio as gr

    tab = app_page.segment
    update = tab.on_classes("cat, dog")
    assert update["label_list"] == ["cat", "dog"] and update["label"].endswith("(cat, dog)")
    assert tab.on_classes("cat, cat") == gr.update()  # typing: no change until it is valid
    with pytest.raises(gr.Error, match="typed twice"):
        tab.class_list("cat, cat")
    assert tab.on_preset("PASCAL VOC (20 classes)").startswith("aeroplane, bicycle")


def test_a_demo_example_comes_with_its_boxes(app_page, app_workspace):
    value, classes = app_page.segment.on_example(Path(app_workspace.examples[1]["image"]).stem)
    assert value["image"].shape == (128, 128, 3)
    assert value["boxes"] == app_workspace.examples[1]["boxes"]
    assert classes == ", ".join(app_workspace.class_names[1:])


def test_segment_shows_results_errors_and_the_three_models(app_page, app_workspace, tmp_path):
    import gradio as gr

    tab = app_page.segment
    example = app_workspace.examples[0]
    drawing = {"image": example["image"], "boxes": example["boxes"], "orientation": 0}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    extra = tmp_path / "extra.png"
    Image.open(example["image"]).save(extra)
    steps = []
    classes = ", ".join(app_workspace.class_names[1:])
    state, view, result, areas, gallery, files, note, status = tab.segment(
        drawing, [str(broken), str(extra)], classes, None, lambda *a, **k: steps.append(a[0])
    )
    outcomes = state["outcomes"]
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "not an image" in outcomes[1].error and "--detector" in outcomes[2].problem(ADAPTED)
    assert list(outcomes[2].label_maps) == [SEGMENTER]  # no boxes: the segmenter alone
    assert view["value"] == ADAPTED and view["choices"] == [PLAIN, ADAPTED, SEGMENTER]
    base, masks = result["value"]
    assert [name for _, name in masks] == list(app_workspace.class_names[1:])
    assert set(result["color_map"]) == set(app_workspace.class_names[1:])
    assert sum(row[1] for row in areas) == 128 * 128
    assert len(gallery) == 3 and gallery[1][1].startswith("broken: error:")
    assert [Path(f).name for f in files] == [f"{outcomes[0].name}.png", f"{outcomes[0].name}.json"]
    assert "1 of 3 image(s) segmented (adapted (Co2SAM))" in status and "broken" in status
    assert steps[0] == (0, 3) and steps[-1] == (3, 3)

    plain = tab.show(state, PLAIN)
    assert plain[0]["label"].endswith(PLAIN)
    label_maps = outcomes[0].label_maps
    for index, (mask, _) in enumerate(plain[0]["value"][1], start=1):
        np.testing.assert_array_equal(mask, (label_maps[PLAIN] == index).astype(np.float32))
    result, areas, gallery, files, note, status = tab.show(state, SEGMENTER)
    base, masks = result["value"]
    np.testing.assert_array_equal(base, outcomes[0].image)  # no boxes drawn for it
    assert [name for _, name in masks] == list(app_workspace.class_names[1:])
    assert sum(row[1] for row in areas) == 128 * 128
    assert "no boxes, no class names" in note and "2 of 3 image(s) segmented" in status
    assert len(files) == 4  # the drawn image and the one without boxes
    segmenter_only = tab.segment(None, [str(extra)], "", SEGMENTER)  # no class names needed
    assert segmenter_only[0]["outcomes"][0].error is None
    chosen = tab.select_result(state, ADAPTED, 1)
    assert chosen[0]["selected"] == 1 and chosen[1]["label"] == "broken: error"
    assert "error" in chosen[5]
    with pytest.raises(gr.Error, match="upload an image"):
        tab.segment(None, [], classes, None)
