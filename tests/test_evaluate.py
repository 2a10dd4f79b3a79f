import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from co2sam.classes import voc_palette
from co2sam.cli import app
from co2sam.config import load_config
from co2sam.data import build_dataset, make_synthetic_dataset
from co2sam.evaluate import evaluate_model, modes_of
from co2sam.metrics import ConfusionMatrix
from co2sam.prompts import oracle_boxes
from co2sam.records import Boxes
from co2sam.sam import Segmenter, attach_lora, load_sam, save_adapter

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root,
        num_images=7,
        num_classes=4,
        image_size=(40, 56),
        splits={"train": 3, "val": 4},
        max_objects=2,
    )
    return root


@pytest.fixture(scope="module")
def dataset(data_root):
    config = load_config(None, ["data.dataset=synthetic", f"data.root={data_root}"])
    return build_dataset(config.data, "val")


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_sam("tiny")).eval()


def with_false_box(sample):
    """Oracle boxes plus a whole-image box of a class the image does not contain."""
    boxes = oracle_boxes(sample)
    absent = next(c for c in range(1, 5) if c not in sample.labels)
    height, width = sample.mask.shape
    return Boxes(
        np.concatenate([boxes.xyxy, [[0, 0, width, height]]]),
        np.concatenate([boxes.classes, [absent]]),
        np.concatenate([boxes.scores, [1.0]]),
    )


def test_evaluate_model_scores_every_image_in_both_modes(segmenter, dataset):
    seen = []
    results = evaluate_model(
        segmenter, dataset, with_false_box, batch_size=3, progress=False, on_prediction=seen.append
    )
    assert set(results) == {"label-guided", "open"}
    assert len(seen) == 2 * len(dataset)
    recomputed = {mode: ConfusionMatrix(5) for mode in results}
    for prediction in seen:
        sample = prediction.sample
        label_map = prediction.label_map.cpu()
        assert label_map.shape == sample.mask.shape
        if prediction.mode == "label-guided":  # the false class is filtered out
            assert set(label_map.unique().tolist()) <= {0, *sample.labels}
        recomputed[prediction.mode].update(label_map, torch.from_numpy(sample.mask))
    for mode, metrics in results.items():
        assert metrics["mode"] == mode
        assert metrics["num_images"] == len(dataset)
        assert metrics["confusion_matrix"] == recomputed[mode].matrix.tolist()
        for key in (
            "miou",
            "iou_per_class",
            "precision",
            "recall",
            "pixel_accuracy",
            "mean_accuracy",
            "fw_iou",
            "classes_present",
        ):
            assert key in metrics
    assert not segmenter.training


def test_batch_size_does_not_change_predictions(segmenter, dataset):
    maps = {}
    for batch_size in (1, 4):
        collected = []
        evaluate_model(
            segmenter,
            dataset,
            oracle_boxes,
            modes=("open",),
            batch_size=batch_size,
            progress=False,
            on_prediction=lambda p, c=collected: c.append(p.label_map.cpu()),
        )
        maps[batch_size] = torch.cat([m.flatten() for m in collected])
    agreement = (maps[1] == maps[4]).float().mean()
    assert agreement > 0.999


def test_limit_and_no_boxes(segmenter, dataset):
    results = evaluate_model(
        segmenter, dataset, lambda sample: Boxes(), modes=("open",), limit=2, progress=False
    )
    metrics = results["open"]
    assert metrics["num_images"] == 2
    assert metrics["recall"][0] == 1.0  # no boxes: everything is background
    assert metrics["precision"][1:] == [None] * 4  # no object predicted


def test_modes_of():
    assert modes_of("both") == ("label-guided", "open")
    assert modes_of("open") == ("open",)
    with pytest.raises(ValueError, match="mode"):
        modes_of("closed")


def _assert_palette_png(path, size):
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.size == size
        palette = np.array(image.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(palette, voc_palette())


def test_evaluate_command_writes_report_pngs_and_figures(data_root, dataset, tmp_path):
    adapter = save_adapter(attach_lora(load_sam("tiny")), tmp_path / "adapter", base="tiny")
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--set",
            "data.dataset=synthetic",
            "--set",
            "data.num_workers=0",
            "--data-root",
            str(data_root),
            "--adapter",
            str(adapter),
            "--boxes",
            "oracle",
            "--out",
            str(out),
            "--overlays",
            "--device",
            "cpu",
            "--voc-test-format",
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "label-guided mode" in output and "open mode" in output
    report = json.loads((out / "report.json").read_text())
    assert report["modes"] == ["label-guided", "open"]
    assert report["adapter"] == str(adapter)
    assert report["sam"] == "tiny"
    assert report["box_source"]["origin"] == "oracle"
    assert report["config"]["data"]["dataset"] == "synthetic"
    assert report["results"]["open"]["mode"] == "open"
    for mode in ("label-guided", "open"):
        assert (out / mode / "confusion_matrix.png").is_file()
        for sample in dataset:
            height, width = sample.mask.shape
            _assert_palette_png(out / mode / "predictions" / f"{sample.id}.png", (width, height))
            with Image.open(out / mode / "overlays" / f"{sample.id}.png") as overlay:
                assert overlay.mode == "RGB" and overlay.size == (width, height)
    test_folder = out / "results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.stem for p in test_folder.glob("*.png")) == sorted(dataset.ids)


def test_evaluate_command_reports_user_errors(data_root, tmp_path):
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--set",
            "data.dataset=synthetic",
            "--data-root",
            str(data_root),
            "--sam",
            "tiny",
            "--boxes",
            str(tmp_path / "missing.jsonl"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2
    assert "missing.jsonl" in "".join(result.output.split())  # rich may wrap long paths
