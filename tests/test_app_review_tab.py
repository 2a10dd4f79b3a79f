"""The Review tab's handlers, called as Gradio calls them, without a browser."""

from pathlib import Path

import pytest


@pytest.fixture
def review(app_page, app_workspace):
    flagged = Path(app_workspace.review) / "flagged.txt"
    flagged.unlink(missing_ok=True)
    yield app_page.review, app_page.context.reviews[0]
    flagged.unlink(missing_ok=True)


def test_review_opens_steps_selects_and_flags(review):
    tab, key = review
    opened = tab.open(key, None, None)
    state, mode, sort, about = opened[:4]
    thumbs, image, label, truth, info, legend, flag = opened[4:]
    assert mode["value"] == "label-guided" and sort["value"] == "IoU (worst first)"
    assert len(state["order"]) == 4 and len(thumbs["value"]) == 4
    assert image.shape == label.shape == truth.shape == (256, 256, 3)  # 128 px, shown x2
    assert "1 of 4" in info and "IoU" in info and "background" in legend
    assert flag["value"] == "Flag" and "split train" in about
    ious = tab.folder(key).ious("label-guided")
    assert [ious[i] for i in state["order"]] == sorted(ious.values())

    back = tab.step(state, -1)  # wraps to the last image
    assert back[0]["index"] == 3 and "4 of 4" in back[5]
    picked = tab.select(state, 2)
    assert picked[0]["index"] == 2 and state["order"][2] in picked[5]
    flagged = tab.flag(picked[0])
    assert "flagged" in flagged[5] and flagged[7]["value"] == "Unflag"
    assert "⚑" in flagged[1]["value"][2][1]
    assert (Path(key) / "flagged.txt").read_text() == f"{state['order'][2]}\n"
    tab.flag(picked[0])
    assert (Path(key) / "flagged.txt").read_text() == ""


def test_sorting_by_id(review):
    tab, key = review
    state = tab.open(key, "label-guided", "id")[0]
    assert state["order"] == sorted(state["order"]) and state["sort"] == "id"


def test_review_reads_only_the_folders_it_was_given(app_page, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="not one of the folders"):
        app_page.review.folder(str(tmp_path))
    assert "--review" in app_page.review.open(None, None, None)[3]
