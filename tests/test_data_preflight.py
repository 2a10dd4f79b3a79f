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
    assert "skipped (--skip-bad): fix the mask" in listed[ids[2]]  # says what happened
    assert "not handled" not in listed[ids[2]]
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


def test_train_lists_the_bad_files_of_every_split_it_reads_at_once(tmp_path):
    """Review: a bad train mask was reported, the bad val image only at the next start."""
    voc = make_synthetic_dataset(
        tmp_path, num_images=5, num_classes=2, image_size=40, seed=2, splits={"train": 3, "val": 2}
    )
    train_ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val_ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    mask = voc / "SegmentationClass" / f"{train_ids[1]}.png"
    values = np.array(Image.open(mask))
    values[0, 0] = 77
    Image.fromarray(values).save(mask)
    _truncate(voc / "JPEGImages" / f"{val_ids[0]}.jpg")
    args = ["train", "--data-root", str(tmp_path), "--sam", "tiny", "--boxes", "oracle",
            "--set", "data.dataset=synthetic", "--set", "data.train_split=train",
            "--set", "data.num_workers=0", "--set", "train.val_every=1",
            "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "pre-flight of splits train, val" in text
    assert "2 image(s) of splits 'train', 'val' have bad files" in text
    squeezed = "".join(result.output.split())
    assert f"{train_ids[1]}.png" in squeezed and f"{val_ids[0]}.jpg" in squeezed
    assert not (tmp_path / "run" / "checkpoints").exists()


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
    summary = " ".join(result.output.split())
    assert "5 image(s) with bad files left out (skipped.txt)" in summary
    assert "without boxes" not in summary  # the 3 good images all have boxes


def _folder_data(root, stray_value_in=None):
    """A folder dataset (labels in labels.csv, masks beside) made from generated data;
    ``stray_value_in``: the index of an image whose mask gets the value 77."""
    import json
    import shutil

    voc = make_synthetic_dataset(
        root / "voc", num_images=6, num_classes=3, image_size=40, seed=2, splits={"train": 6}
    )
    folder = root / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text((voc / "classes.txt").read_text())
    labels = json.loads((voc / "labels.json").read_text())
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    for image_id in ids:
        shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", folder / "images")
        shutil.copy(voc / "SegmentationClass" / f"{image_id}.png", folder / "masks")
    rows = [f"{image_id}.jpg,{';'.join(labels[image_id])}" for image_id in ids]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    (folder / "train.txt").write_text("\n".join(ids) + "\n")
    return folder, ids


def _add_stray_value(folder, image_id):
    path = folder / "masks" / f"{image_id}.png"
    values = np.array(Image.open(path))
    values[0, 0] = 77
    Image.fromarray(values).save(path)
    return path


def test_a_command_that_does_not_need_masks_keeps_an_image_with_a_bad_mask(tmp_path, capsys):
    folder, ids = _folder_data(tmp_path)
    mask = _add_stray_value(folder, ids[2])
    config = load_config(None, ["data.dataset=folder", f"data.root={folder}"])
    dataset = build_dataset(config.data, "train", check_masks=False)
    with pytest.raises(PreflightError):  # evaluate, validation, oracle boxes: needed
        preflight(dataset)
    kept, problems = preflight(dataset, masks=False)  # not read: not checked
    assert kept is dataset and not [p for p in problems if p.level == "error"]

    needed = SkipUnreadable(dataset, SkipLog(tmp_path / "needed.txt"))[2]
    assert needed.problem is not None
    assert f"skipping {mask}:" in capsys.readouterr().err  # names the mask, not the image
    spared = SkipUnreadable(dataset, SkipLog(tmp_path / "spared.txt"), masks=False)[2]
    assert spared.problem is None and spared.mask is None
    assert spared.image.shape == (40, 40, 3) and spared.labels == dataset.image_labels(2)
    assert f"not using mask {mask}:" in capsys.readouterr().err
    assert not (tmp_path / "spared.txt").exists()  # not skipped
    mask.unlink()  # a missing mask: the same
    assert SkipUnreadable(dataset, masks=False)[2].problem is None


def test_pseudo_labels_and_train_read_masks_only_for_oracle_boxes(tmp_path):
    import json

    folder, ids = _folder_data(tmp_path)
    data = ["--data-root", str(folder), "--set", "data.dataset=folder",
            "--set", "data.num_workers=0", "--set", "data.train_split=train"]  # fmt: skip
    made = runner.invoke(app, ["boxes", "--oracle", "--split", "train", *data])
    assert made.exit_code == 0, made.output
    _add_stray_value(folder, ids[2])
    model = ["--sam", "tiny", "--device", "cpu", "--split", "train"]
    out = tmp_path / "pl"
    result = runner.invoke(app, ["pseudo-labels", *data, *model, "--boxes", "cache",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (out / "SegmentationClass" / f"{ids[2]}.png").is_file()  # labelled all the same
    assert report["skipped"] == [] and report["masks_not_used"] == [ids[2]]
    assert report["quality"]["num_images"] == len(ids) - 1
    oracle = runner.invoke(app, ["pseudo-labels", *data, *model, "--boxes", "oracle",
                                 "--out", str(tmp_path / "oracle")])  # fmt: skip
    assert oracle.exit_code == 1 and "--skip-bad" in oracle.output  # boxes need the mask

    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", *data, "--sam", "tiny", "--boxes", "cache",
                                  "--set", "train.val_every=0", "--max-steps", "2",
                                  "--no-progress", "--out", str(run)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert not (run / "skipped.txt").exists()
