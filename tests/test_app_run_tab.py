"""The Run tab's handlers, called as Gradio calls them, without a browser."""

import pytest
from PIL import Image


def test_run_tab_curves_bars_and_confusion(app_page):
    tab = app_page.run
    key = app_page.context.runs[0]
    summary, losses, mious, epoch, bars, confusion = tab.open(key)
    assert "best epoch" in summary
    assert {"total", "focal", "dice"} <= set(losses["term"])
    assert sorted(set(mious["mode"])) == ["label-guided", "open"]
    assert [value for _, value in epoch["choices"]] == [1, 2]
    run = tab.folder(key)
    assert epoch["value"] == run.best_epoch()
    assert list(bars["value"]["class"]) == bars["sort"]
    assert len(bars["value"]) == len(run.per_class_iou(run.best_epoch(), "label-guided"))
    with Image.open(confusion) as image:
        assert image.size[0] > 100
    open_bars, _ = tab.validation(key, 1, "open")
    expected = [row["IoU"] for row in run.per_class_iou(1, "open")]
    assert list(open_bars["value"]["IoU"]) == pytest.approx(expected)


def test_run_tab_reads_only_the_runs_it_was_given(app_page):
    import gradio as gr

    with pytest.raises(gr.Error, match="not one of the run folders"):
        app_page.run.folder("/etc")
    assert "--run" in app_page.run.open(None)[0]
