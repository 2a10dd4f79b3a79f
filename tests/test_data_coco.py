import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from typer.testing import CliRunner

from co2sam.classes import COCO_CATEGORY_IDS, IGNORE_INDEX
from co2sam.cli import app
from co2sam.config import DataConfig
from co2sam.data import build_dataset
from co2sam.data.coco import prepare_coco

PERSON, DOG, CAR = 1, 18, 3  # COCO category ids


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def coco_files(tmp_path):
    images_dir = tmp_path / "train2014"
    images_dir.mkdir()
    images = [
        {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 50},
        {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 30, "width": 30},
        {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "height": 20, "width": 20},
    ]
    for info in images:
        Image.fromarray(np.zeros((info["height"], info["width"], 3), np.uint8)).save(
            images_dir / info["file_name"]
        )
    crowd = np.zeros((40, 50), np.uint8, order="F")
    crowd[30:40, 0:20] = 1
    dense = np.zeros((30, 30), np.uint8)
    dense[5:20, 5:25] = 1
    compressed = mask_utils.encode(np.asfortranarray(dense))
    compressed["counts"] = compressed["counts"].decode()
    annotations = [  # small one listed first: painting must follow area, not file order
        {"id": 10, "image_id": 1, "category_id": DOG, "iscrowd": 0, "area": 100.0,
         "segmentation": _box_polygon(10, 10, 20, 20), "bbox": [10, 10, 10, 10]},
        {"id": 11, "image_id": 1, "category_id": PERSON, "iscrowd": 0, "area": 900.0,
         "segmentation": _box_polygon(5, 5, 35, 35), "bbox": [5, 5, 30, 30]},
        {"id": 12, "image_id": 1, "category_id": CAR, "iscrowd": 1, "area": 200.0,
         "segmentation": {"counts": _uncompressed(crowd), "size": [40, 50]},
         "bbox": [0, 30, 20, 10]},
        {"id": 13, "image_id": 2, "category_id": CAR, "iscrowd": 0, "area": 300.0,
         "segmentation": compressed, "bbox": [5, 5, 20, 15]},
    ]  # fmt: skip
    categories = [{"id": c, "name": str(c)} for c in (PERSON, CAR, DOG)]
    instances = tmp_path / "instances_train2014.json"
    instances.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return instances, images_dir


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def _expected_mask(instances, image_id: int) -> np.ndarray:
    coco = COCO(str(instances))
    info = coco.imgs[image_id]
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=lambda a: -a["area"])
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for ann in anns:
        value = IGNORE_INDEX if ann["iscrowd"] else COCO_CATEGORY_IDS.index(ann["category_id"]) + 1
        mask[coco.annToMask(ann) > 0] = value
    return mask


def test_masks_match_pycocotools_in_area_order(coco_files, tmp_path):
    instances, images_dir = coco_files
    out = tmp_path / "prepared"
    summary = prepare_coco(instances, images_dir, out, workers=1, progress=False)
    assert summary.split == "train"
    assert (summary.written, summary.resumed) == (2, 0)
    assert summary.unannotated == ["COCO_train2014_000000000003"]
    assert (out / "train.txt").read_text().split() == [
        "COCO_train2014_000000000001",
        "COCO_train2014_000000000002",
    ]
    assert (out / "train_unannotated.txt").read_text().split() == ["COCO_train2014_000000000003"]
    for image_id in (1, 2):
        with Image.open(out / "masks" / f"COCO_train2014_{image_id:012d}.png") as written:
            assert written.mode == "P"
            np.testing.assert_array_equal(np.array(written), _expected_mask(instances, image_id))
    first = np.array(Image.open(out / "masks" / "COCO_train2014_000000000001.png"))
    assert first[15, 15] == COCO_CATEGORY_IDS.index(DOG) + 1  # small dog drawn over person
    assert first[35, 2] == IGNORE_INDEX  # crowd region
    labels = json.loads((out / "labels.json").read_text())
    assert labels["COCO_train2014_000000000001"] == [1, COCO_CATEGORY_IDS.index(DOG) + 1]

    dataset = build_dataset(DataConfig(dataset="coco", root=str(out)), "train")
    assert len(dataset) == 2 and dataset.class_names[1] == "person"
    sample = dataset[0]
    assert sample.image.shape == (40, 50, 3)
    np.testing.assert_array_equal(sample.mask, first)
    assert sample.labels == [1, 17]


def test_rerun_resumes_and_pool_matches(coco_files, tmp_path):
    instances, images_dir = coco_files
    out = tmp_path / "prepared"
    prepare_coco(instances, images_dir, out, workers=2, progress=False)
    np.testing.assert_array_equal(
        np.array(Image.open(out / "masks" / "COCO_train2014_000000000001.png")),
        _expected_mask(instances, 1),
    )
    again = prepare_coco(instances, images_dir, out, workers=1, progress=False)
    assert (again.written, again.resumed) == (0, 2)
    (out / "masks" / "COCO_train2014_000000000002.png").unlink()
    third = prepare_coco(instances, images_dir, out, workers=1, progress=False)
    assert (third.written, third.resumed) == (1, 1)
    with pytest.raises(ValueError, match="--crowd ignore"):
        prepare_coco(instances, images_dir, out, crowd="class", progress=False)


def test_crowd_modes(coco_files, tmp_path):
    instances, images_dir = coco_files
    for mode, expected in (("class", COCO_CATEGORY_IDS.index(CAR) + 1), ("skip", 0)):
        out = tmp_path / mode
        prepare_coco(instances, images_dir, out, crowd=mode, workers=1, progress=False)
        mask = np.array(Image.open(out / "masks" / "COCO_train2014_000000000001.png"))
        assert mask[35, 2] == expected
        labels = json.loads((out / "labels.json").read_text())["COCO_train2014_000000000001"]
        assert (3 in labels) == (mode == "class")


def test_cli_prepare_coco(coco_files, tmp_path):
    instances, images_dir = coco_files
    out = tmp_path / "cli"
    args = ["prepare", "coco", "--instances", str(instances), "--images", str(images_dir)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "masks").glob("*.png"))) == 2
    bad = CliRunner().invoke(app, [*args, "--out", str(out), "--crowd", "maybe"])
    assert bad.exit_code != 0 and "--crowd" in bad.output
