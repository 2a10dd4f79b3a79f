"""The pre-flight finds what check-data finds, and bad files never crash a run."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.config import load_config
from co2sam.data import build_dataset
from co2sam.data.check import scan_dataset
from co2sam.data.image_io import DatasetError, probe_image, read_image
from co2sam.data.preflight import (
    PreflightError,
    SkipLog,
    SkipPlaceholders,
    SkipUnreadable,
    SplitSubset,
    preflight,
)
from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.records import Boxes

runner = CliRunner()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def broken(tmp_path):
    """A VOC-layout split with one file of each kind of error, and a clean image."""
    voc = make_synthetic_dataset(
        tmp_path, num_images=8, num_classes=3, image_size=40, seed=1, splits={"train": 8}
    )
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    images, masks = voc / "JPEGImages", voc / "SegmentationClass"
    _truncate(images / f"{ids[0]}.jpg")  # truncated JPEG (its header reads fine)
    (images / f"{ids[1]}.jpg").unlink()  # missing image
    values = np.array(Image.open(masks / f"{ids[2]}.png"))
    values[0, 0] = 77
    Image.fromarray(values).save(masks / f"{ids[2]}.png")  # value outside 0..3 and 255
    Image.open(masks / f"{ids[3]}.png").resize((20, 40)).save(masks / f"{ids[3]}.png")
    (masks / f"{ids[4]}.png").unlink()  # missing mask
    _truncate(masks / f"{ids[5]}.png", 0.6)  # truncated mask PNG
    return tmp_path, ids


def _config(root, *overrides):
    return load_config(None, ["data.dataset=synthetic", f"data.root={root}", *overrides])


def test_preflight_reports_exactly_what_check_data_reports(broken):
    root, ids = broken
    dataset = build_dataset(_config(root).data, "train", check_masks=False)
    full = scan_dataset(dataset)  # check-data's scan (full reads)
    with pytest.raises(PreflightError) as raised:
        preflight(dataset, workers=2)
    errors = {(p.image_id, p.problem) for p in full if p.level == "error"}
    assert {(p.image_id, p.problem) for p in raised.value.problems} == errors
    assert {image_id for image_id, _ in errors} == set(ids[:6])
    assert "--skip-bad" in str(raised.value) and "6 image(s)" in str(raised.value)


def test_skip_bad_leaves_the_bad_images_out_and_lists_them(broken):
    root, ids = broken
    dataset = build_dataset(_config(root).data, "train", check_masks=False)
    log = SkipLog(root / "run" / "skipped.txt", echo=False)
    kept, problems = preflight(dataset, skip_bad=True, log=log)
    assert isinstance(kept, SplitSubset) and kept.ids == ids[6:]
    assert [sample.id for sample in kept] == ids[6:]  # the rest reads fine
    assert kept.class_names == dataset.class_names and kept.image_labels(0)
    listed = log.listed()
    assert list(listed) == ids[:6]
    assert "outside 0..3" in listed[ids[2]] and "missing mask" in listed[ids[4]]
    assert len(problems) >= 6


def test_probe_image_agrees_with_read_image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (12, 20, 3), np.uint8)
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(pixels).save(tmp_path / "plain.bmp")
    for name in ("rot.jpg", "plain.png", "plain.bmp"):
        assert probe_image(tmp_path / name) == read_image(tmp_path / name).shape[:2], name
    for name in ("rot.jpg", "plain.png"):
        _truncate(tmp_path / name, 0.7)
        with pytest.raises(DatasetError, match=name):
            probe_image(tmp_path / name)


def test_files_that_fail_mid_run_become_placeholders_logged_once(broken, capsys):
    root, ids = broken
    dataset = build_dataset(_config(root).data, "train", check_masks=False)
    log = SkipLog(root / "skipped.txt")
    guarded = SkipUnreadable(dataset, log)
    for _ in range(2):  # two epochs
        samples = [guarded[index] for index in range(len(guarded))]
    bad = [sample.id for sample in samples if sample.problem is not None]
    assert bad == ids[:6]
    assert samples[2].problem.startswith("mask values outside 0..3")
    assert samples[0].image.shape == (16, 16, 3) and samples[0].labels == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert len(warnings) == 6 and ids[0] in warnings[0]
    assert list(log.listed()) == ids[:6]
    boxes = SkipPlaceholders(lambda sample: Boxes([[0, 0, 4, 4]], [1], [1.0]))
    assert len(boxes(samples[0])) == 0 and len(boxes(samples[7])) == 1


def test_train_stops_before_the_first_step_or_skips_bad_files(broken, tmp_path):
    root, ids = broken
    args = ["train", "--data-root", str(root), "--sam", "tiny", "--boxes", "oracle",
            "--set", "data.dataset=synthetic", "--set", "data.train_split=train",
            "--set", "data.num_workers=0", "--set", "train.val_every=0",
            "--max-steps", "2", "--no-progress"]  # fmt: skip
    run = tmp_path / "run"
    result = runner.invoke(app, [*args, "--out", str(run)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "pre-flight of split train" in text and "--skip-bad" in text
    assert ids[0] in text and "Traceback" not in text
    assert not (run / "checkpoints").exists()  # stopped before any training

    result = runner.invoke(app, [*args, "--out", str(run), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert list(SkipLog(run / "skipped.txt").listed()) == ids[:6]


def test_train_skips_a_file_that_fails_mid_run(broken, tmp_path):
    root, ids = broken
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    Image.fromarray(mask).save(root / "VOC2012/SegmentationClass" / f"{ids[4]}.png")
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--data-root", str(root), "--sam", "tiny", "--boxes", "oracle",
         "--set", "data.dataset=synthetic", "--set", "data.train_split=train",
         "--set", "data.num_workers=2", "--set", "train.val_every=0",
         "--set", "data.preflight=false", "--epochs", "2", "--no-progress", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert set(SkipLog(run / "skipped.txt").listed()) == {ids[i] for i in (0, 1, 2, 3, 5)}
    assert (run / "last" / "adapter_model.safetensors").is_file()
