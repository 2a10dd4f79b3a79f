from pathlib import Path

import numpy as np
import pytest

from co2sam.config import load_config
from co2sam.prompts import (
    BoxCacheError,
    box_source,
    class_prompts,
    default_cache_path,
    detector_settings,
    oracle_boxes,
    write_box_cache,
)
from co2sam.prompts.source import cache_source
from co2sam.records import Boxes, Sample

CLASSES = ("background", "cat", "diningtable")


class TinyDataset:
    class_names = CLASSES

    def __init__(self, count: int = 3) -> None:
        self.ids = [f"im{i}" for i in range(count)]

    def __getitem__(self, index: int) -> Sample:
        mask = np.zeros((32, 32), np.uint8)
        mask[4 : 10 + index, 4:12] = 1
        return Sample(np.zeros((32, 32, 3), np.uint8), mask, [1], self.ids[index])


def _config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"data.root={tmp_path}", "data.dataset=synthetic", *overrides])


def test_default_cache_path(tmp_path):
    assert default_cache_path(_config(tmp_path), "val") == tmp_path / "co2sam_boxes" / "val.jsonl"
    other = _config(tmp_path, f"prompts.cache_dir={tmp_path / 'c'}")
    assert default_cache_path(other, "train_aug") == tmp_path / "c" / "train_aug.jsonl"


def test_oracle_source_caps_boxes(tmp_path):
    dataset = TinyDataset()
    source = box_source(_config(tmp_path, "prompts.source=oracle"), "val", dataset)
    assert source.origin == "oracle" and "oracle" in source.description
    boxes = source(dataset[2])
    np.testing.assert_array_equal(boxes.xyxy, [[4, 4, 12, 12]])


def test_oracle_source_refuses_a_split_without_masks_before_any_image(tmp_path):
    from co2sam.data.image_io import DatasetError

    dataset = TinyDataset()
    dataset.has_masks, dataset.root = False, tmp_path / "photos"
    with pytest.raises(DatasetError, match=r"split 'train' of .*photos has none"):
        box_source(_config(tmp_path, "prompts.source=oracle"), "train", dataset)


def test_cache_source_checks_settings_and_completeness(tmp_path):
    config = _config(tmp_path, "prompts.max_boxes=2")
    dataset = TinyDataset()
    path = default_cache_path(config, "val")
    path.parent.mkdir(parents=True)
    many = Boxes(np.tile([[0, 0, 5, 5]], (4, 1)), [1, 1, 2, 2], [0.1, 0.9, 0.5, 0.7])
    entries = {image_id: many for image_id in dataset.ids}
    write_box_cache(path, detector_settings(config, "val", CLASSES), entries)
    source = box_source(config, "val", dataset)
    assert source.origin == "grounding-dino"
    np.testing.assert_allclose(source(dataset[0]).scores, [0.9, 0.7])  # top 2, in order

    stricter = _config(tmp_path, "prompts.box_threshold=0.5")
    with pytest.raises(BoxCacheError, match="box_threshold"):
        box_source(stricter, "val", dataset)
    with pytest.raises(BoxCacheError, match="lacks 2 image") as raised:
        box_source(config, "val", TinyDataset(5))
    options = f"--data-root {tmp_path} --set data.dataset=synthetic"
    assert f"complete it with `co2sam boxes --split val {options}`" in str(raised.value)
    with pytest.raises(FileNotFoundError) as raised:
        box_source(config, "train_aug", dataset)
    assert f"make it with `co2sam boxes --split train_aug {options}`" in str(raised.value)
    assert "<split>" not in str(raised.value)
    other = _config(tmp_path, "prompts.detector=IDEA-Research/grounding-dino-tiny")
    with pytest.raises(FileNotFoundError, match="--detector IDEA-Research/grounding-dino-tiny"):
        box_source(other, "test", dataset)


def test_a_named_cache_file_keeps_its_own_settings(tmp_path):
    config = _config(tmp_path, "prompts.box_threshold=0.5")
    dataset = TinyDataset()
    path = tmp_path / "elsewhere.jsonl"
    many = Boxes([[0, 0, 5, 5]], [1], [0.9])
    written = detector_settings(_config(tmp_path), "train", CLASSES)  # other split, threshold
    write_box_cache(path, written, {image_id: many for image_id in dataset.ids})
    source = cache_source(config, "val", dataset, path)
    assert source.settings["box_threshold"] == 0.30 and str(path) in source.description
    with pytest.raises(BoxCacheError, match="lacks 2 image"):
        cache_source(config, "val", TinyDataset(5), path)
    written["class_names"] = ["background", "dog", "cat"]
    write_box_cache(path, written, {image_id: many for image_id in dataset.ids}, overwrite=True)
    with pytest.raises(BoxCacheError, match="class_names"):
        cache_source(config, "val", dataset, path)


def test_imported_or_oracle_caches_skip_detector_checks(tmp_path):
    config = _config(tmp_path)
    dataset = TinyDataset()
    entries = {image_id: oracle_boxes(dataset[i]) for i, image_id in enumerate(dataset.ids)}
    settings = {"origin": "oracle", "class_names": list(CLASSES), "split": "val"}
    write_box_cache(default_cache_path(config, "val"), settings, entries)
    source = box_source(config, "val", dataset)
    assert source.origin == "oracle" and len(source(dataset[1])) == 1
    settings["class_names"] = ["background", "dog", "cat"]
    write_box_cache(default_cache_path(config, "val"), settings, entries, overwrite=True)
    with pytest.raises(BoxCacheError, match="class_names"):
        box_source(config, "val", dataset)


def test_class_prompts_and_synonyms():
    assert class_prompts(CLASSES) == [["cat"], ["dining table"]]
    assert class_prompts(CLASSES, ["cat=cat|kitten"]) == [["cat", "kitten"], ["dining table"]]
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        class_prompts(CLASSES, ["dog=puppy"])
