import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.config import load_config
from co2sam.data import build_dataset, make_synthetic_dataset
from co2sam.prompts import box_source, default_cache_path, load_box_cache, oracle_boxes
from co2sam.prompts.build import build_box_cache
from co2sam.prompts.coco_import import import_coco_results
from co2sam.prompts.oracle import dataset_instance_mask
from co2sam.records import Boxes

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_images=8, num_classes=3, image_size=48, seed=3)
    return root


def _config(root, *overrides):
    return load_config(None, [f"data.root={root}", "data.dataset=synthetic", *overrides])


def test_oracle_cache_via_cli_resumes_without_duplicates(data_root, tmp_path):
    out = tmp_path / "val.jsonl"
    args = ["boxes", "--data-root", str(data_root), "--set", "data.dataset=synthetic"]
    args += ["--split", "train", "--oracle", "--out", str(out)]
    first = runner.invoke(app, [*args, "--limit", "2"])
    assert first.exit_code == 0, first.output
    assert len(load_box_cache(out)) == 2
    with out.open("a") as handle:  # killed while writing the third image
        handle.write('{"id": "x", "xyxy": [[1')
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    dataset = build_dataset(_config(data_root).data, "train")
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()[1:]]
    assert ids == dataset.ids
    cache = load_box_cache(out, {"origin": "oracle", "split": "train"})
    for index, image_id in enumerate(dataset.ids):
        sample = dataset[index]
        instances = dataset_instance_mask(dataset, image_id)  # SegmentationObject PNG
        assert instances is not None
        expected = oracle_boxes(sample, instances)
        np.testing.assert_allclose(cache[image_id].xyxy, expected.xyxy)
        assert sorted(set(cache[image_id].classes.tolist())) == sample.labels


def test_detector_cache_feeds_box_source(data_root):
    config = _config(data_root, "prompts.max_boxes=1", "prompts.mode=per-class")
    dataset = build_dataset(config.data, "val")
    calls = []

    def fake_detector(samples):
        calls.append([sample.id for sample in samples])
        return [Boxes([[0, 0, 9, 9], [1, 1, 5, 5]], [1, 2], [0.4, 0.8]) for _ in samples]

    path = build_box_cache(config, "val", dataset, detector=fake_detector, progress=False)
    assert path == default_cache_path(config, "val")
    assert load_box_cache(path).settings["mode"] == "per-class"
    source = box_source(config, "val", dataset)
    boxes = source(dataset[0])
    assert boxes.classes.tolist() == [2] and boxes.scores.tolist() == pytest.approx([0.8])
    build_box_cache(config, "val", dataset, detector=fake_detector, progress=False)
    assert len(calls) == len(dataset.ids)  # second run: nothing left to detect

    result = runner.invoke(
        app,
        ["boxes", "--data-root", str(data_root), "--set", "data.dataset=synthetic",
         "--split", "val", "--mode", "all"],
    )  # fmt: skip
    assert result.exit_code != 0 and "mode" in result.output and "--overwrite" in result.output


def test_coco_results_import_round_trip(data_root, tmp_path):
    config = _config(data_root, f"prompts.cache_dir={tmp_path}")
    dataset = build_dataset(config.data, "val")
    first, second = dataset.ids[0], dataset.ids[-1]
    results = [
        {"image_id": first, "category_id": 2, "bbox": [1.5, 2.0, 10.0, 20.0], "score": 0.9},
        {"image_id": first + ".jpg", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.2},
        {"image_id": second, "category_id": 3, "bbox": [4, 4, 4, 4], "score": 0.7},
        {"image_id": "not_in_split", "category_id": 3, "bbox": [4, 4, 4, 4], "score": 0.7},
    ]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(results))
    result = runner.invoke(
        app,
        ["import-boxes", "--coco-results", str(dets), "--data-root", str(data_root),
         "--set", "data.dataset=synthetic", "--set", f"prompts.cache_dir={tmp_path}",
         "--split", "val", "--score-threshold", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 detections of other images skipped" in " ".join(result.output.split())
    cache = load_box_cache(default_cache_path(config, "val"), {"origin": "import"})
    assert set(cache) == set(dataset.ids)
    np.testing.assert_allclose(cache[first].xyxy, [[1.5, 2.0, 11.5, 22.0]])
    assert cache[first].classes.tolist() == [2] and cache[second].classes.tolist() == [3]
    assert all(len(cache[i]) == 0 for i in dataset.ids if i not in (first, second))
    assert box_source(config, "val", dataset).origin == "import"


def test_integer_ids_and_coco_category_ids(tmp_path):
    from co2sam.classes import COCO_CLASSES

    ids = ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    results = [
        {"image_id": 42, "category_id": 90, "bbox": [0, 0, 1, 1], "score": 0.5},  # toothbrush
        {"image_id": 73, "category_id": 13, "bbox": [0, 0, 1, 1], "score": 0.5},  # stop sign
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    boxes, _ = import_coco_results(path, ids, COCO_CLASSES)
    assert boxes[ids[0]].classes.tolist() == [80]
    assert boxes[ids[1]].classes.tolist() == [COCO_CLASSES.index("stop sign")]
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"images": [{"id": 7, "file_name": ids[1] + ".jpg"}]}))
    path.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}]))
    boxes, _ = import_coco_results(path, ids, COCO_CLASSES, images=images)
    assert boxes[ids[1]].classes.tolist() == [1] and len(boxes[ids[0]]) == 0
    with pytest.raises(ValueError, match="category_id 12"):
        path.write_text(json.dumps([{"image_id": 42, "category_id": 12, "bbox": [0, 0, 1, 1]}]))
        import_coco_results(path, ids, COCO_CLASSES)
    with pytest.raises(ValueError, match="no image id matches"):
        path.write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}]))
        import_coco_results(path, ids, COCO_CLASSES)


def test_boxes_stop_on_a_bad_image_or_leave_it_out(tmp_path):
    make_synthetic_dataset(tmp_path, num_images=4, num_classes=2, image_size=32, seed=0,
                           splits={"val": 4})  # fmt: skip
    ids = (tmp_path / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    (tmp_path / "VOC2012/JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"not an image")
    args = ["boxes", "--oracle", "--data-root", str(tmp_path), "--set", "data.dataset=synthetic",
            "--split", "val"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and f"{ids[1]}.jpg" in " ".join(result.output.split())
    assert not (tmp_path / "co2sam_boxes" / "val.jsonl").exists()
    result = runner.invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    cache = load_box_cache(tmp_path / "co2sam_boxes" / "val.jsonl")
    assert sorted(cache) == sorted(ids[:1] + ids[2:])
    skipped = (tmp_path / "co2sam_boxes" / "val.skipped.txt").read_text()
    assert skipped.startswith(f"{ids[1]}\t")
    shutil.copy(tmp_path / "VOC2012/JPEGImages" / f"{ids[0]}.jpg",
                tmp_path / "VOC2012/JPEGImages" / f"{ids[1]}.jpg")  # fmt: skip
    result = runner.invoke(app, args)  # fixed: the cache is completed, nothing skipped
    assert result.exit_code == 0, result.output
    assert sorted(load_box_cache(tmp_path / "co2sam_boxes" / "val.jsonl")) == sorted(ids)
    assert not (tmp_path / "co2sam_boxes" / "val.skipped.txt").exists()


def test_import_boxes_refuses_to_replace_a_cache_without_overwrite(data_root, tmp_path):
    dataset = build_dataset(_config(data_root).data, "val")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": dataset.ids[0], "category_id": 1,
                                 "bbox": [0, 0, 4, 4], "score": 0.9}]))  # fmt: skip
    args = ["import-boxes", "--coco-results", str(dets), "--data-root", str(data_root),
            "--set", "data.dataset=synthetic", "--split", "val",
            "--out", str(tmp_path / "val.jsonl")]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_integer_ids_match_whole_ids_not_trailing_digits(tmp_path):
    ids = ["2008_000009", "000000000073", "COCO_val2014_000000000042", "img42"]
    results = [
        {"image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
        for image_id in (9, 73, 42)
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    boxes, summary = import_coco_results(path, ids, ("background", "cat"))
    assert len(boxes["2008_000009"]) == 0 and len(boxes["img42"]) == 0
    assert len(boxes["000000000073"]) == 1 and len(boxes["COCO_val2014_000000000042"]) == 1
    assert summary.skipped_images == 1  # id 9 matches no whole id
