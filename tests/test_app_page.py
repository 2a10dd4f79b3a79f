"""The page's handlers, called as Gradio calls them, without a browser."""

from pathlib import Path

import numpy as np
import pytest
from app_support import need
from PIL import Image

from co2sam.app.models import ADAPTED, PLAIN


@pytest.fixture(scope="module")
def page(app_workspace):
    need("gradio")
    need("gradio_image_annotation")
    from co2sam.app.page import Page
    from co2sam.app.server import build_context
    from co2sam.app.settings import AppSettings

    return Page(build_context(AppSettings(demo_dir=app_workspace.root)))


@pytest.fixture
def review(page, app_workspace):
    flagged = Path(app_workspace.review) / "flagged.txt"
    flagged.unlink(missing_ok=True)
    key = page.context.reviews[0]
    yield page, key
    flagged.unlink(missing_ok=True)


def test_nothing_given_opens_the_demo_workspace(page, app_workspace):
    context = page.context
    assert context.models.adapter == app_workspace.adapter
    assert list(context.models.views) == [PLAIN, ADAPTED]
    assert context.class_names == tuple(app_workspace.class_names[1:])
    assert context.reviews == [app_workspace.review] and context.runs == [app_workspace.run]
    assert "PASCAL VOC (20 classes)" in context.class_presets
    assert context.class_presets["the adapter's training data"] == context.class_names


def test_class_names_drive_the_drawing_panel(page):
    import gradio as gr

    update = page.on_classes("cat, dog")
    assert update["label_list"] == ["cat", "dog"] and update["label"].endswith("(cat, dog)")
    assert page.on_classes("cat, cat") == gr.update()  # typing: no change until it is valid
    with pytest.raises(gr.Error, match="typed twice"):
        page.class_list("cat, cat")
    assert page.on_preset("PASCAL VOC (20 classes)").startswith("aeroplane, bicycle")


def test_a_demo_example_comes_with_its_boxes(page, app_workspace):
    value, classes = page.on_example(Path(app_workspace.examples[1]["image"]).stem)
    assert value["image"].shape == (128, 128, 3)
    assert value["boxes"] == app_workspace.examples[1]["boxes"]
    assert classes == ", ".join(app_workspace.class_names[1:])


def test_segment_shows_results_errors_and_both_models(page, app_workspace, tmp_path):
    import gradio as gr

    example = app_workspace.examples[0]
    drawing = {"image": example["image"], "boxes": example["boxes"], "orientation": 0}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    extra = tmp_path / "extra.png"
    Image.open(example["image"]).save(extra)
    steps = []
    classes = ", ".join(app_workspace.class_names[1:])
    state, view, result, areas, gallery, files, note, status = page.segment(
        drawing, [str(broken), str(extra)], classes, None, lambda *a, **k: steps.append(a[0])
    )
    outcomes = state["outcomes"]
    assert [o.error is None for o in outcomes] == [True, False, False]
    assert "not an image" in outcomes[1].error and "--detector" in outcomes[2].error
    assert view["value"] == ADAPTED and view["choices"] == [PLAIN, ADAPTED]
    base, masks = result["value"]
    assert [name for _, name in masks] == list(app_workspace.class_names[1:])
    assert set(result["color_map"]) == set(app_workspace.class_names[1:])
    assert sum(row[1] for row in areas) == 128 * 128
    assert len(gallery) == 3 and gallery[1][1].startswith("broken: error:")
    assert [Path(f).name for f in files] == [f"{outcomes[0].name}.png", f"{outcomes[0].name}.json"]
    assert "1 of 3 image(s) segmented" in status and "broken" in status
    assert steps[0] == (0, 3) and steps[-1] == (3, 3)

    plain = page.show(state, PLAIN)
    assert plain[0]["label"].endswith(PLAIN)
    label_maps = outcomes[0].label_maps
    plain_masks = [mask for mask, _ in plain[0]["value"][1]]
    assert all(
        np.array_equal(mask, (label_maps[PLAIN] == index + 1).astype(np.float32))
        for index, mask in enumerate(plain_masks)
    )
    chosen = page.select_result(state, ADAPTED, 1)
    assert chosen[0]["selected"] == 1 and chosen[1]["label"] == "broken: error"
    assert "error" in chosen[5]
    with pytest.raises(gr.Error, match="upload an image"):
        page.segment(None, [], classes, None)


def test_review_opens_steps_selects_and_flags(review):
    page, key = review
    opened = page.review_open(key, None, None)
    state, mode, sort, about = opened[:4]
    thumbs, image, label, truth, info, legend, flag = opened[4:]
    assert mode["value"] == "label-guided" and sort["value"] == "IoU (worst first)"
    assert len(state["order"]) == 4 and len(thumbs["value"]) == 4
    assert image.shape == label.shape == truth.shape == (256, 256, 3)  # 128 px, shown x2
    assert "1 of 4" in info and "IoU" in info and "background" in legend
    assert flag["value"] == "Flag"
    ious = page.review_folder(key).ious("label-guided")
    assert [ious[i] for i in state["order"]] == sorted(ious.values())

    back = page.review_step(state, -1)  # wraps to the last image
    assert back[0]["index"] == 3 and "4 of 4" in back[5]
    picked = page.review_select(state, 2)
    assert picked[0]["index"] == 2 and state["order"][2] in picked[5]
    flagged = page.review_flag(picked[0])
    assert "flagged" in flagged[5] and flagged[7]["value"] == "Unflag"
    assert "⚑" in flagged[1]["value"][2][1]
    folder = Path(key)
    assert (folder / "flagged.txt").read_text() == f"{state['order'][2]}\n"
    page.review_flag(picked[0])
    assert (folder / "flagged.txt").read_text() == ""


def test_review_reads_only_the_folders_it_was_given(page, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="not one of the folders"):
        page.review_folder(str(tmp_path))
    with pytest.raises(gr.Error, match="not one of the run folders"):
        page.run_folder("/etc")
    assert "--review" in page.review_open(None, None, None)[3]


def test_run_tab_curves_bars_and_confusion(page):
    key = page.context.runs[0]
    summary, losses, mious, epoch, bars, confusion = page.run_open(key)
    assert "best epoch" in summary
    assert {"total", "focal", "dice"} <= set(losses["term"])
    assert sorted(set(mious["mode"])) == ["label-guided", "open"]
    assert [value for _, value in epoch["choices"]] == [1, 2]
    run = page.run_folder(key)
    assert epoch["value"] == run.best_epoch()
    assert list(bars["value"]["class"]) == bars["sort"]
    assert len(bars["value"]) == len(run.per_class_iou(run.best_epoch(), "label-guided"))
    assert Image.open(confusion).size[0] > 100
    open_bars, _ = page.run_validation(key, 1, "open")
    expected = [row["IoU"] for row in run.per_class_iou(1, "open")]
    assert list(open_bars["value"]["IoU"]) == pytest.approx(expected)
