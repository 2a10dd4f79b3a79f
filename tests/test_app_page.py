"""The page with nothing given: the demo workspace's models, folders and the three tabs."""

from co2sam.app.models import ADAPTED, PLAIN, SEGMENTER


def test_nothing_given_opens_the_demo_workspace(app_page, app_workspace):
    context = app_page.context
    assert context.models.adapter == app_workspace.adapter
    assert list(context.models.views) == [PLAIN, ADAPTED, SEGMENTER]
    assert context.models.distilled_folder == app_workspace.segmenter
    assert context.class_names == tuple(app_workspace.class_names[1:])
    assert context.reviews == [app_workspace.review] and context.runs == [app_workspace.run]
    assert "PASCAL VOC (20 classes)" in context.class_presets
    assert context.class_presets["the adapter's training data"] == context.class_names
    assert len(context.examples) == 4


def test_the_page_has_the_three_tabs_and_the_ids_the_browser_tests_use(app_page):
    page = app_page.build()
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    for elem_id in ("tab-segment", "tab-review", "tab-run", "classes", "annot", "segment-btn",
                    "result", "areas", "downloads", "review-thumbs", "review-next",
                    "review-prev", "review-flag", "loss-plot", "miou-plot", "iou-bars",
                    "confusion"):  # fmt: skip
        assert elem_id in ids, elem_id
