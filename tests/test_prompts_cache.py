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


def test_a_second_writer_is_refused_while_the_first_works(tmp_path):
    """Two real processes on one cache: the second refuses at once, nothing is mangled."""
    import subprocess
    import sys
    import textwrap

    from co2sam.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, num_images=6, num_classes=2, image_size=32, seed=0,
                           splits={"val": 6})  # fmt: skip
    cache = tmp_path / "co2sam_boxes" / "val.jsonl"
    first = textwrap.dedent(
        f"""
        import sys
        from co2sam.config import load_config
        from co2sam.data import build_dataset
        from co2sam.prompts import oracle_boxes
        from co2sam.prompts.build import build_box_cache

        config = load_config(None, ["data.dataset=synthetic", "data.root={tmp_path}"])
        dataset = build_dataset(config.data, "val")

        def slow_oracle(samples):
            print("detecting", flush=True)
            sys.stdin.readline()  # hold the cache open until the test says go
            return [oracle_boxes(sample) for sample in samples]

        build_box_cache(config, "val", dataset, origin="oracle", detector=slow_oracle,
                        progress=False)
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", first], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "detecting"
        second = subprocess.run(
            [sys.executable, "-c", "from co2sam.cli import app; app()", "boxes", "--oracle",
             "--data-root", str(tmp_path), "--set", "data.dataset=synthetic", "--split", "val"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "another process is writing the box cache" in " ".join(second.stderr.split())
        holder.stdin.write("\n" * 6)
        holder.stdin.flush()
        assert holder.wait(timeout=120) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdin.close()
        holder.stdout.close()
    lines = cache.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines[1:]]
    assert len(ids) == len(set(ids)) == 6
    assert len(load_box_cache(cache, {"origin": "oracle"})) == 6


def test_parts_of_a_killed_sharded_run_are_merged_once_in_split_order(tmp_path):
    from co2sam.prompts.cache import part_path

    path = tmp_path / "val.jsonl"
    order = [f"img{i}" for i in range(6)]
    with BoxCacheWriter(path, SETTINGS) as writer:
        writer.write("img0", _boxes(0))
    for rank, ids in ((0, ["img2", "img4"]), (1, ["img0", "img3", "img1"])):
        with BoxCacheWriter(part_path(path, rank), SETTINGS) as part:
            for image_id in ids:
                part.write(image_id, _boxes(int(image_id[-1])))
    with part_path(path, 1).open("a") as handle:
        handle.write('{"id": "img5", "xy')  # rank 1 was killed mid-line
    with BoxCacheWriter(path, SETTINGS) as writer:
        assert writer.merge_parts(order) == 4
    lines = path.read_text().splitlines()[1:]
    assert [json.loads(line)["id"] for line in lines] == ["img0", "img1", "img2", "img3", "img4"]
    assert not list(tmp_path.glob("val.part-*"))


def test_write_box_cache_replaces_only_with_overwrite(tmp_path):
    path = write_box_cache(tmp_path / "val.jsonl", SETTINGS, {"a": _boxes(0)})
    with pytest.raises(BoxCacheError, match="already exists .*1 images.*--overwrite"):
        write_box_cache(path, SETTINGS, {"b": _boxes(1)})
    write_box_cache(path, SETTINGS, {"b": _boxes(1)}, overwrite=True)
    assert set(load_box_cache(path)) == {"b"}
