import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from co2sam.classes import voc_palette
from co2sam.cli import app
from co2sam.predict import class_areas, list_images, read_boxes_json

runner = CliRunner()
CLASSES = ("background", "dog", "sofa")


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (44, 36, 3), np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_read_boxes_json_by_name_and_index(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({
        "a.jpg": [{"xyxy": [1, 2, 20, 25], "class": "sofa", "score": 0.7},
                  {"xyxy": [0, 0, 5, 5], "class": 1}],
        "b": [],
    }))  # fmt: skip
    boxes = read_boxes_json(path, CLASSES)
    assert set(boxes) == {"a", "b"}
    assert boxes["a"].classes.tolist() == [2, 1]
    assert boxes["a"].scores.tolist() == pytest.approx([0.7, 1.0])
    assert len(boxes["b"]) == 0


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"xyxy": [0, 0, 5, 5], "class": "cat"}, "unknown class 'cat'"),
        ({"xyxy": [0, 0, 5, 5], "class": 3}, "outside 1..2"),
        ({"xyxy": [5, 0, 1, 5], "class": 1}, "x1 > x0"),
        ({"class": 1}, "needs 'xyxy'"),
    ],
)
def test_read_boxes_json_names_the_bad_entry(tmp_path, entry, message):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.jpg": [entry]}))
    with pytest.raises(ValueError, match=message):
        read_boxes_json(path, CLASSES)


def test_class_areas():
    label = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])
    areas = class_areas(label, CLASSES)
    assert areas == {
        "background": {"pixels": 2, "fraction": 0.25},
        "dog": {"pixels": 2, "fraction": 0.25},
        "sofa": {"pixels": 4, "fraction": 0.5},
    }


def test_list_images(image_folder):
    assert [p.name for p in list_images(image_folder)] == ["a.jpg", "b.png"]
    assert list_images(image_folder / "a.jpg") == [image_folder / "a.jpg"]
    with pytest.raises(FileNotFoundError):
        list_images(image_folder / "nothing")


def test_predict_command_writes_labels_overlays_and_details(image_folder, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "a.jpg": [{"xyxy": [2, 2, 30, 25], "class": "dog", "score": 0.9},
                  {"xyxy": [20, 5, 48, 28], "class": "sofa", "score": 0.6}],
    }))  # fmt: skip
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(image_folder), "--classes", "dog,sofa", "--sam", "tiny",
         "--boxes", str(boxes), "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name, size in (("a.jpg", (50, 30)), ("b.png", (36, 44))):
        with Image.open(out / "labels" / f"{name}.png") as label:
            assert label.mode == "P" and label.size == size
            palette = np.array(label.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
            assert np.array_equal(palette, voc_palette())
            assert set(np.unique(np.array(label)).tolist()) <= {0, 1, 2}
        with Image.open(out / "overlays" / f"{name}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == size
    details = json.loads((out / "details" / "a.jpg.json").read_text())
    assert [box["class"] for box in details["boxes"]] == ["dog", "sofa"]
    assert sum(area["pixels"] for area in details["areas"].values()) == 50 * 30
    b_details = json.loads((out / "details" / "b.png.json").read_text())
    assert b_details["areas"] == {"background": {"pixels": 36 * 44, "fraction": 1.0}}
    assert b_details["boxes"] == []


def test_predict_command_needs_one_box_source_and_classes(image_folder):
    result = runner.invoke(app, ["predict", str(image_folder), "--classes", "dog", "--sam", "tiny"])
    assert result.exit_code == 2
    assert "--detector" in " ".join(result.output.split())
    result = runner.invoke(
        app, ["predict", str(image_folder), "--sam", "tiny", "--boxes", "x.json"]
    )
    assert result.exit_code == 2
    assert "--classes" in " ".join(result.output.split())


def test_predict_segments_every_readable_image_and_keeps_clashing_names_apart(
    image_folder, tmp_path
):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(image_folder / "a.png")
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "a.jpg": [{"xyxy": [2, 2, 30, 25], "class": "dog"}],
        "a.png": [{"xyxy": [1, 1, 10, 10], "class": "sofa"}],
    }))  # fmt: skip
    out = tmp_path / "out"
    args = ["predict", str(image_folder), "--classes", "dog,sofa", "--sam", "tiny",
            "--boxes", str(boxes), "--out", str(out), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 unreadable image(s)" in text and "broken.jpg" in text
    assert "replace the file, or remove it" in text and "split list" not in text
    assert "3 image(s) segmented" in text
    assert sorted(p.name for p in (out / "labels").glob("*.png")) == [
        "a.jpg.png", "a.png.png", "b.png.png"
    ]  # fmt: skip
    first = json.loads((out / "details" / "a.jpg.json").read_text())
    second = json.loads((out / "details" / "a.png.json").read_text())
    assert first["size"] == {"height": 30, "width": 50} and first["boxes"][0]["class"] == "dog"
    assert second["size"] == {"height": 20, "width": 24} and second["boxes"][0]["class"] == "sofa"
    assert (out / "skipped.txt").read_text().startswith("broken.jpg\t")

    again = runner.invoke(app, args)  # the same run: nothing left to segment
    assert again.exit_code == 0
    assert "0 image(s) segmented" in " ".join(again.output.split())
    assert "(3 more done by an earlier run)" in " ".join(again.output.split())
    other = runner.invoke(app, [*args[:-4], "--out", str(out), "--device", "cpu",
                                "--adapter", str(tmp_path / "x")])  # fmt: skip
    assert other.exit_code == 2 and "another run" in " ".join(other.output.split())


def test_an_image_added_later_renames_no_output_and_counts_are_this_runs(image_folder, tmp_path):
    out = tmp_path / "out"
    boxes = tmp_path / "none.json"
    boxes.write_text("{}")
    args = ["predict", str(image_folder), "--classes", "dog,sofa", "--sam", "tiny",
            "--boxes", str(boxes), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    first = sorted(path.name for path in out.rglob("*") if path.is_file())
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(image_folder / "a.png")
    result = runner.invoke(app, args)  # a.png now shares a.jpg's stem
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 image(s) segmented" in text and "(2 more done by an earlier run)" in text
    assert "outputs of 3" in text
    assert sorted(p.name for p in (out / "labels").glob("*.png")) == [
        "a.jpg.png", "a.png.png", "b.png.png"
    ]  # fmt: skip
    now = sorted(path.name for path in out.rglob("*") if path.is_file())
    assert set(first) <= set(now)  # nothing renamed, nothing left over from before
    assert len(now) == len(first) + 3  # the new image's label, overlay and details


def test_predict_command_with_a_segmenter_needs_no_boxes(image_folder, tmp_path):
    import torch

    from co2sam.models.segmentation_net import build_net, save_net

    torch.manual_seed(0)
    folder = save_net(build_net("segformer", "tiny", CLASSES), tmp_path / "best", {})
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(image_folder), "--segmenter", str(folder), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for name, size in (("a.jpg", (50, 30)), ("b.png", (36, 44))):
        with Image.open(out / "labels" / f"{name}.png") as label:
            assert label.mode == "P" and label.size == size
            assert set(np.unique(np.array(label)).tolist()) <= {0, 1, 2}
    details = json.loads((out / "details" / "a.jpg.json").read_text())
    assert details["mode"] == "open" and details["predictor"] == "segmenter"
    assert "boxes" not in details
    assert sum(area["pixels"] for area in details["areas"].values()) == 50 * 30
    refused = runner.invoke(
        app, ["predict", str(image_folder), "--segmenter", str(folder), "--classes", "dog"]
    )
    assert refused.exit_code == 2 and "runs alone" in " ".join(refused.output.split())


def test_a_rerun_trusts_the_files_not_the_log(image_folder, tmp_path):
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [{"xyxy": [2, 2, 30, 25], "class": "dog"}]}))
    args = ["predict", str(image_folder), "--classes", "dog,sofa", "--sam", "tiny",
            "--boxes", str(boxes), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    label = out / "labels" / "a.jpg.png"
    made = label.read_bytes()
    label.unlink()  # a deleted output: the image is done again
    again = runner.invoke(app, args, terminal_width=200)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "redoing 1 image(s) an earlier run finished (1 missing; e.g. labels/a.jpg.png" in text
    assert "1 image(s) segmented" in text and "(1 more done by an earlier run)" in text
    assert label.read_bytes() == made
    # an input that became unreadable since: listed, its old outputs removed and not counted
    (image_folder / "b.png").write_bytes((image_folder / "b.png").read_bytes()[:40])
    broken = runner.invoke(app, args, terminal_width=200)
    assert broken.exit_code == 0, broken.output
    text = " ".join(broken.output.split())
    assert "1 unreadable image(s), not segmented (earlier outputs of 1 of them removed)" in text
    assert "b.png" in text and "0 image(s) segmented" in text
    assert "(1 more done by an earlier run); outputs of 1 in" in text
    assert not list(out.rglob("b.png.*"))
    assert (out / "skipped.txt").read_text().startswith("b.png\t")
