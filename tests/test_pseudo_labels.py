import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from co2sam.classes import voc_palette
from co2sam.cli import app
from co2sam.config import load_config
from co2sam.data import build_dataset, make_synthetic_dataset
from co2sam.data.image_io import read_label_png
from co2sam.prompts import oracle_boxes
from co2sam.pseudo_labels import export_pseudo_labels
from co2sam.sam import Segmenter, load_sam

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, num_images=5, num_classes=3, image_size=(36, 48), splits={"train": 3, "val": 2}
    )
    return root


def test_export_pseudo_labels_writes_voc_layout(data_root, tmp_path):
    config = load_config(None, ["data.dataset=synthetic", f"data.root={data_root}"])
    dataset = build_dataset(config.data, "train")
    segmenter = Segmenter(load_sam("tiny"))
    metrics = export_pseudo_labels(
        segmenter, dataset, oracle_boxes, tmp_path / "pl", split="train", progress=False
    )
    assert metrics["mode"] == "label-guided"
    assert metrics["num_written"] == metrics["num_images"] == len(dataset)
    ids = (tmp_path / "pl/ImageSets/Segmentation/train.txt").read_text().split()
    assert ids == dataset.ids
    for sample in dataset:
        label = read_label_png(tmp_path / "pl/SegmentationClass" / f"{sample.id}.png")
        assert label.shape == sample.mask.shape
        assert set(np.unique(label).tolist()) <= {0, *sample.labels}


def test_pseudo_labels_command(data_root, tmp_path):
    out = tmp_path / "pseudo"
    result = runner.invoke(
        app,
        ["pseudo-labels", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
         "--data-root", str(data_root), "--split", "train", "--sam", "tiny",
         "--boxes", "oracle", "--mode", "open", "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "open mode" in " ".join(result.output.split())
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "open" and report["split"] == "train"
    assert report["box_source"]["origin"] == "oracle"
    assert report["metrics"]["num_images"] == 3 and report["metrics"]["miou"] is not None
    pngs = sorted((out / "SegmentationClass").glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as image:
        assert image.mode == "P" and image.size == (48, 36)
        palette = np.array(image.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(palette, voc_palette())


def test_pseudo_labels_command_rejects_bad_mode(data_root):
    result = runner.invoke(
        app, ["pseudo-labels", "--data-root", str(data_root), "--sam", "tiny", "--mode", "both"]
    )
    assert result.exit_code == 2
    assert "label-guided or open" in " ".join(result.output.split())


def test_pseudo_labels_stop_on_a_corrupt_image_or_skip_it(tmp_path):
    root = tmp_path / "data"
    make_synthetic_dataset(root, num_images=3, num_classes=3, image_size=32, splits={"train": 3})
    ids = (root / "VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    image = root / "VOC2012/JPEGImages" / f"{ids[2]}.jpg"
    image.write_bytes(image.read_bytes()[:200])
    args = ["pseudo-labels", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
            "--data-root", str(root), "--split", "train", "--sam", "tiny", "--boxes", "oracle",
            "--device", "cpu", "--out", str(tmp_path / "pl")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and f"{ids[2]}.jpg" in " ".join(result.output.split())
    result = runner.invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    listed = (tmp_path / "pl/ImageSets/Segmentation/train.txt").read_text().split()
    assert listed == ids[:2]
    report = json.loads((tmp_path / "pl/report.json").read_text())
    assert report["metrics"]["num_written"] == 2 and report["skipped"][0]["id"] == ids[2]
    assert (tmp_path / "pl/skipped.txt").read_text().startswith(ids[2])


def test_confidences_and_their_quality_are_written(data_root, tmp_path):
    config = load_config(None, ["data.dataset=synthetic", f"data.root={data_root}"])
    dataset = build_dataset(config.data, "train")
    metrics = export_pseudo_labels(
        Segmenter(load_sam("tiny")), dataset, oracle_boxes, tmp_path / "pl", progress=False
    )
    for sample in dataset:
        with Image.open(tmp_path / "pl" / "Confidence" / f"{sample.id}.png") as image:
            assert image.mode == "L" and image.size == sample.mask.shape[::-1]
    rows = metrics["confidence_quality"]
    assert [row["min_confidence"] for row in rows] == [0.5, 0.6, 0.7, 0.8, 0.9]
    kept = [row["pixels_kept"] for row in rows]
    assert all(0 <= value <= 1 for value in kept) and kept == sorted(kept, reverse=True)
    none = export_pseudo_labels(
        Segmenter(load_sam("tiny")), dataset, oracle_boxes, tmp_path / "none",
        progress=False, confidence=False,
    )  # fmt: skip
    assert not (tmp_path / "none" / "Confidence").exists() and none["confidence_quality"] == []


def test_pseudo_labels_report_their_quality_and_feed_distill(data_root, tmp_path):
    out = tmp_path / "pseudo"
    result = runner.invoke(
        app,
        ["pseudo-labels", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
         "--data-root", str(data_root), "--split", "train", "--sam", "tiny",
         "--boxes", "oracle", "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "pseudo-label quality" in output and "pseudo-label mIoU" in output
    assert "pixels kept" in output
    report = json.loads((out / "report.json").read_text())
    quality = report["quality"]
    assert quality["miou"] == report["metrics"]["miou"] and quality["num_images"] == 3
    assert len(quality["by_min_confidence"]) == 5

    from co2sam.distill.config import load_distill_config
    from co2sam.distill.loop import distill

    config = load_distill_config(None, [
        "model.pretrained=tiny", "data.dataset=synthetic", f"data.root={data_root}",
        "data.train_split=train", "data.num_workers=0", f"pseudo_labels.dir={out}",
        "pseudo_labels.min_confidence=0.6", "augment.scale=[96,36]", "augment.crop_size=36",
        "train.accelerator=cpu", "train.batch_size=2", "train.iterations=1",
        "train.val_every=0", f"train.out_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    assert distill(config, progress=False).step == 1


def _command(data_root, out):
    return ["pseudo-labels", "--set", "data.dataset=synthetic", "--data-root", str(data_root),
            "--split", "train", "--sam", "tiny", "--boxes", "oracle", "--out", str(out),
            "--device", "cpu"]  # fmt: skip


def test_a_rerun_redoes_pseudo_labels_whose_files_are_missing_or_truncated(data_root, tmp_path):
    out = tmp_path / "pl"
    first = runner.invoke(app, _command(data_root, out), terminal_width=200)
    assert first.exit_code == 0, first.output
    labels = sorted((out / "SegmentationClass").glob("*.png"))
    confidences = sorted((out / "Confidence").glob("*.png"))
    written = {path: path.read_bytes() for path in (*labels, *confidences)}
    labels[0].write_bytes(written[labels[0]][:60])  # truncated
    confidences[1].unlink()
    again = runner.invoke(app, _command(data_root, out), terminal_width=200)
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "redoing 2 image(s) an earlier run finished (1 truncated, 1 missing" in said
    assert "resuming: 1 of 3 images done" in said
    for path, data in written.items():  # redone, bit for bit
        assert path.read_bytes() == data, path
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["num_written"] == 3 and report["quality"]["num_images"] == 3


def test_a_damaged_pseudo_label_in_the_quality_step_is_one_error_line(data_root, tmp_path):
    out = tmp_path / "pl"
    assert runner.invoke(app, _command(data_root, out)).exit_code == 0
    # the cheap check passes (signature and closing chunk whole), the pixels do not
    damaged = sorted((out / "Confidence").glob("*.png"))[0]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:16] + b"\0" * (len(data) - 28) + data[-12:])
    result = runner.invoke(app, _command(data_root, out), terminal_width=300)
    assert result.exit_code == 2, result.output
    said = "".join(result.output.split())
    assert f"error:cannotread{damaged}" in said, result.output
    assert "deleteitandrunthesame`co2sampseudo-labels`commandagain" in said
    assert "Traceback" not in result.output
    damaged.unlink()  # the fix the line gives
    assert runner.invoke(app, _command(data_root, out)).exit_code == 0
