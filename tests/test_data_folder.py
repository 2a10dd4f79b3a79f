import json

import numpy as np
import pytest
from PIL import Image

from co2sam.config import DataConfig
from co2sam.data import DatasetError, build_dataset
from co2sam.data.folder import FolderDataset
from co2sam.data.image_io import write_label_png


def _make_folder(root, labels_name: str, labels_text: str, masks: bool = False):
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\ndog\nhot dog\n")
    for name in ("a.jpg", "b.png"):
        Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(root / "images" / name)
    (root / labels_name).write_text(labels_text)
    if masks:
        (root / "masks").mkdir()
        write_label_png(root / "masks" / "a.png", np.ones((6, 8), np.uint8))
        write_label_png(root / "masks" / "b.png", np.full((6, 8), 2, np.uint8))
    return root


def test_csv_labels_with_header_and_masks(tmp_path):
    root = _make_folder(
        tmp_path, "labels.csv", "image,labels\na.jpg,cat;Hot Dog\nb,dog\n", masks=True
    )
    dataset = build_dataset(DataConfig(dataset="folder", root=str(root)), "train")
    assert dataset.class_names == ("background", "cat", "dog", "hot dog")
    assert dataset.ids == ["a", "b"] and dataset.has_masks
    first, second = dataset[0], dataset[1]
    assert first.labels == [1, 3] and second.labels == [2]
    assert first.image.shape == (6, 8, 3) and second.mask[0, 0] == 2


def test_json_labels_split_file_and_background_added(tmp_path):
    root = _make_folder(tmp_path, "labels.json", json.dumps({"a.jpg": ["dog"], "b.png": []}))
    (root / "classes.txt").write_text("cat\ndog\n")  # no background line: it is added
    (root / "val.txt").write_text("b\n")
    dataset = FolderDataset(root, "val")
    assert dataset.class_names == ("background", "cat", "dog")
    assert dataset.ids == ["b"] and not dataset.has_masks
    assert dataset[0].mask is None and dataset[0].labels == []
    assert FolderDataset(root, "anything").image_labels(0) == [2]


def test_unknown_class_names_file_line_and_class(tmp_path):
    root = _make_folder(tmp_path / "csv", "labels.csv", "a.jpg,cat\nb.png,cat;zebra\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 2: unknown class 'zebra'"):
        FolderDataset(root)
    text = '{\n "a.jpg": ["cat"],\n "b.png": ["horse"]\n}'
    root = _make_folder(tmp_path / "json", "labels.json", text)
    with pytest.raises(DatasetError, match=r"labels\.json, line 3 .*unknown class 'horse'"):
        FolderDataset(root)


def test_missing_pieces_are_clear_errors(tmp_path):
    root = _make_folder(tmp_path, "labels.csv", "a.jpg,cat\nmissing.jpg,dog\n")
    dataset = FolderDataset(root)
    with pytest.raises(DatasetError, match="missing.jpg"):
        dataset[1]
    (root / "labels.csv").unlink()
    with pytest.raises(DatasetError, match="labels.csv"):
        FolderDataset(root)
