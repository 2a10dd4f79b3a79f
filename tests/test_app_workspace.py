import json
from pathlib import Path

import pytest

from co2sam.app.review import ReviewFolder
from co2sam.app.runs import RunFolder
from co2sam.app.workspace import (
    MARKER_FILE,
    READY_FILE,
    WorkspaceError,
    default_workspace_dir,
    prepare_demo_workspace,
)


def test_the_workspace_holds_a_run_pseudo_labels_and_examples(app_workspace):
    workspace = app_workspace
    assert workspace.usable()
    assert (Path(workspace.adapter) / "co2sam_adapter.json").is_file()
    assert Path(workspace.adapter).parent == Path(workspace.run)
    run = RunFolder(workspace.run)
    assert [entry["epoch"] for entry in run.validations()] == [1, 2]  # validated every epoch
    review = ReviewFolder(workspace.review)
    assert review.kind == "pseudo-labels" and review.modes == ["label-guided"]
    assert len(review.ids("label-guided")) == 4  # limit=4
    assert all(value is not None for value in review.ious("label-guided").values())
    assert review.class_names == tuple(workspace.class_names)
    assert len(workspace.examples) == 4
    segmenter = json.loads((Path(workspace.segmenter) / "co2sam_segmenter.json").read_text())
    assert Path(workspace.segmenter).name == "best"  # validated on the target's val masks
    assert segmenter["class_names"] == list(workspace.class_names)
    for example in workspace.examples:
        assert Path(example["image"]).is_file()
        for box in example["boxes"]:
            assert box["label"] in workspace.class_names[1:]
            assert box["xmax"] > box["xmin"] and box["ymax"] > box["ymin"]


def test_a_finished_workspace_is_reused(app_workspace):
    ready = Path(app_workspace.root) / READY_FILE
    stamp = ready.stat().st_mtime_ns
    again = prepare_demo_workspace(app_workspace.root)
    assert again == app_workspace and ready.stat().st_mtime_ns == stamp


def test_an_unfinished_workspace_is_made_again_and_a_foreign_folder_refused(tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / MARKER_FILE).write_text("")
    (unfinished / "data").mkdir()  # killed half-way: no ready file
    made = prepare_demo_workspace(unfinished, limit=2, distill_steps=2)
    assert made.usable() and json.loads((unfinished / READY_FILE).read_text())["run"] == made.run

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    with pytest.raises(WorkspaceError, match="not a co2sam app workspace"):
        prepare_demo_workspace(foreign)
    assert (foreign / "holiday.jpg").exists()


def test_a_workspace_of_other_demo_code_is_not_used(app_workspace):
    from dataclasses import replace

    assert app_workspace.fingerprint and app_workspace.usable()
    assert not replace(app_workspace, fingerprint="0" * 16).usable()


def test_default_folder_is_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_workspace_dir().parent == tmp_path / "co2sam"
