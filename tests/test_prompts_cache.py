import json

import numpy as np
import pytest

from co2sam.prompts.cache import (
    BoxCacheError,
    BoxCacheWriter,
    MissingBoxesError,
    load_box_cache,
    write_box_cache,
)
from co2sam.records import Boxes

SETTINGS = {
    "origin": "grounding-dino",
    "detector": "tiny",
    "box_threshold": 0.3,
    "text_threshold": 0.25,
    "mode": "all",
    "class_names": ["background", "cat", "dog"],
    "split": "val",
}


def _boxes(seed: int) -> Boxes:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 4))
    corner = rng.uniform(0, 50, (count, 2))
    return Boxes(
        np.concatenate([corner, corner + rng.uniform(1, 20, (count, 2))], axis=1),
        rng.integers(1, 3, count),
        rng.uniform(0, 1, count),
    )


def test_round_trip(tmp_path):
    entries = {f"img{i}": _boxes(i) for i in range(6)}
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, entries)
    cache = load_box_cache(path, {"detector": "tiny", "box_threshold": 0.3})
    assert len(cache) == 6 and cache.origin == "grounding-dino"
    assert cache.class_names == ("background", "cat", "dog")
    for image_id, boxes in entries.items():
        read = cache.get(image_id)
        np.testing.assert_allclose(read.xyxy, boxes.xyxy, atol=0.01)
        np.testing.assert_array_equal(read.classes, boxes.classes)
        np.testing.assert_allclose(read.scores, boxes.scores, atol=1e-5)
    first = path.read_text().splitlines()[0]
    assert json.loads(first)["settings"]["mode"] == "all"


def test_missing_image_is_a_clear_error(tmp_path):
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, {"a": _boxes(0)})
    with pytest.raises(MissingBoxesError, match="'b' is not in the box cache .*val.jsonl"):
        load_box_cache(path)["b"]


def test_mismatched_settings_raise(tmp_path):
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, {"a": _boxes(0)})
    with pytest.raises(BoxCacheError) as error:
        load_box_cache(path, {"box_threshold": 0.35, "mode": "per-class", "detector": "tiny"})
    message = str(error.value)
    assert "val.jsonl" in message and "box_threshold" in message and "mode" in message
    assert "detector" not in message.split("\n", 1)[1].split("Re-run")[0]
    assert "co2sam boxes" in message
    with pytest.raises(FileNotFoundError, match="co2sam boxes"):
        load_box_cache(tmp_path / "nope.jsonl")


def test_resume_after_kill_mid_line(tmp_path):
    path = tmp_path / "train.jsonl"
    ids = [f"img{i}" for i in range(10)]
    with BoxCacheWriter(path, SETTINGS) as writer:
        for image_id in ids[:5]:
            writer.write(image_id, _boxes(int(image_id[3:])))
    # A kill while writing the 6th line leaves half a line behind.
    partial = json.dumps({"id": "img5", "xyxy": [[1.0, 2.0, 3.0, 4.0]]})[:25]
    with path.open("a") as handle:
        handle.write(partial)
    assert len(load_box_cache(path)) == 5  # readers ignore the partial line

    with BoxCacheWriter(path, SETTINGS) as writer:
        assert writer.done == set(ids[:5])
        for image_id in ids:
            if image_id not in writer.done:
                writer.write(image_id, _boxes(int(image_id[3:])))
    lines = path.read_text().splitlines()
    written = [json.loads(line)["id"] for line in lines[1:]]
    assert written == ids  # no duplicate, nothing lost, partial line gone
    cache = load_box_cache(path)
    np.testing.assert_array_equal(cache["img5"].classes, _boxes(5).classes)


def test_resume_with_other_settings_refuses_unless_overwrite(tmp_path):
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, {"a": _boxes(0)})
    other = {**SETTINGS, "text_threshold": 0.5}
    with pytest.raises(BoxCacheError, match="text_threshold"):
        BoxCacheWriter(path, other)
    with BoxCacheWriter(path, other, overwrite=True) as writer:
        assert not writer.done
    assert len(load_box_cache(path, {"text_threshold": 0.5})) == 0


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, {"a": _boxes(0), "b": _boxes(1)})
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{garbage\n" + lines[2])
    with pytest.raises(BoxCacheError, match="line 2"):
        load_box_cache(path)
