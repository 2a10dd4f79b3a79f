"""``co2sam distill`` and ``co2sam export`` from the command line."""

import pytest
from typer.testing import CliRunner

from co2sam.cli import app

runner = CliRunner()


def _text(result):
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, num_images=6, num_classes=2, image_size=48, seed=0, splits={"train": 4, "val": 2}
    )


def _arguments(voc, out):
    settings = [
        "model.pretrained=tiny", "data.dataset=synthetic", "data.train_split=train",
        "data.num_workers=0", "augment.scale=[128,48]", "augment.crop_size=48",
        "train.val_every=2", "eval.scale=[128,48]", "optim.warmup_steps=0",
    ]  # fmt: skip
    arguments = ["distill", "--data-root", str(voc.parent), "--out", str(out)]
    arguments += ["--iterations", "2", "--batch-size", "2", "--accelerator", "cpu"]
    for setting in settings:
        arguments += ["--set", setting]
    return arguments + ["--no-progress"]


def test_distill_then_export(voc, tmp_path):
    result = runner.invoke(app, [*_arguments(voc, tmp_path / "run"), "--pseudo-labels", str(voc)])
    assert result.exit_code == 0, result.output
    assert "distilled" in _text(result) and "best val mIoU" in _text(result)
    assert (tmp_path / "run" / "best" / "co2sam_segmenter.json").is_file()

    exported = runner.invoke(
        app,
        ["export", "--segmenter", str(tmp_path / "run" / "best"), "--onnx",
         str(tmp_path / "model.onnx"), "--size", "64"],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert "max |ONNX Runtime - PyTorch|" in _text(exported)
    assert "any input size" in _text(exported)
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.onnx.json").is_file()


def test_distill_needs_matching_pseudo_labels(voc, tmp_path):
    missing = runner.invoke(app, _arguments(voc, tmp_path / "run"))
    assert missing.exit_code == 2 and "--pseudo-labels" in _text(missing)
    empty = tmp_path / "pseudo" / "SegmentationClass"
    empty.mkdir(parents=True)
    refused = runner.invoke(
        app, [*_arguments(voc, tmp_path / "run"), "--pseudo-labels", str(empty.parent)]
    )
    assert refused.exit_code == 2
    assert "4 problem(s) in 4 images" in _text(refused)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_export_refuses_a_folder_that_is_not_a_segmenter(tmp_path):
    result = runner.invoke(app, ["export", "--segmenter", str(tmp_path), "--onnx", "m.onnx"])
    assert result.exit_code == 2 and "not a co2sam segmenter folder" in _text(result)


def test_distill_leaves_out_the_flagged_images(voc, tmp_path):
    import shutil

    import yaml

    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    pseudo = tmp_path / "pseudo"
    shutil.copytree(voc / "SegmentationClass", pseudo / "SegmentationClass")
    (pseudo / "SegmentationClass" / f"{ids[1]}.png").unlink()  # a flagged image's label gone
    flagged = tmp_path / "flagged.txt"
    flagged.write_text(f"# from the Review tab\n{ids[1]}\n\nnot_an_image\n")
    arguments = [*_arguments(voc, tmp_path / "run"), "--pseudo-labels", str(pseudo)]

    refused = runner.invoke(app, arguments)
    assert refused.exit_code == 2 and "1 problem(s) in 4 images" in _text(refused)
    result = runner.invoke(app, [*arguments, "--exclude", str(flagged)])
    assert result.exit_code == 0, result.output
    output = _text(result)
    assert "left out 1 image(s) of split 'train'" in output
    assert "1 listed id(s) are not in it (not_an_image)" in output
    assert "step 2, epoch 2" in output  # 3 images left, 2 per step: one step per epoch
    assert "1 image(s) excluded" in output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["exclude"] == str(flagged.resolve())


def test_distill_refuses_an_unreadable_exclude_list(voc, tmp_path):
    arguments = [*_arguments(voc, tmp_path / "run"), "--pseudo-labels", str(voc)]
    result = runner.invoke(app, [*arguments, "--exclude", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2
    assert "cannot read the list of images to exclude" in _text(result)


def _lines(result, start):
    return [line for line in result.output.splitlines() if line.startswith(start)]


def test_distill_without_a_bar_prints_epoch_and_validation_lines(voc, tmp_path):
    """Review: with --no-progress nothing was printed until the run ended."""
    arguments = [*_arguments(voc, tmp_path / "run"), "--pseudo-labels", str(voc)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (epoch,) = _lines(result, "epoch 1 done: step 2/2, ")  # 4 images, 2 per step
    assert " img/s, loss " in epoch
    assert len(_lines(result, "step 2: val mIoU (open mode) ")) == 1

    # Stopped inside epoch 1 and resumed: the epoch's line is the uninterrupted one.
    cut = [*_arguments(voc, tmp_path / "cut"), "--pseudo-labels", str(voc), "--max-steps", "1"]
    assert runner.invoke(app, cut).exit_code == 0
    resume = ["distill", "--resume", str(tmp_path / "cut"), "--max-steps", "2", "--no-progress"]
    resumed = runner.invoke(app, resume)
    assert resumed.exit_code == 0, resumed.output
    assert [line.split("img/s")[1] for line in _lines(resumed, "epoch 1 done: ")] == [
        epoch.split("img/s")[1]
    ]
    # The run's record says which setting changed at which step (review: config.yaml did not).
    import json

    import yaml

    change = {"from_step": 2, "key": "train.max_steps", "old": 1, "new": 2}
    assert "settings changed since last.pt (applied from step 2)" in _text(resumed)
    saved = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["settings_changes"] == [change]
    segmenter = json.loads((tmp_path / "cut" / "last" / "co2sam_segmenter.json").read_text())
    assert segmenter["settings_changes"] == [change]


def test_distill_resume_names_a_path_that_is_no_run(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"jpeg")
    result = runner.invoke(app, ["distill", "--resume", str(photo)])
    assert result.exit_code == 2
    assert f"--resume {photo}: not a run folder" in _text(result)


def test_distill_help_shows_the_defaults():
    """Review: options showed only their config key, no default (as train's did)."""
    import re

    import yaml

    from co2sam.config import preset_path
    from co2sam.distill.config import DistillTrainConfig

    result = runner.invoke(app, ["distill", "--help"], env={"COLUMNS": "300"})
    text = _text(result)

    def option(name):
        return re.split(r" --[a-z-]+ <", text.split(f"{name} <", 1)[1])[0]

    assert "default 1" in option("--devices") and "default auto" in option("--accelerator")
    assert f"default {DistillTrainConfig.iterations}" in option("--iterations")
    assert f"default {DistillTrainConfig.batch_size}" in option("--batch-size")
    assert "default segformer" in option("--architecture")
    assert "default nvidia/mit-b2" in option("--pretrained")
    assert "default 0: every pixel" in option("--min-confidence")
    assert f"{DistillTrainConfig.out_dir} without --config" in option("--out")
    for name in ("voc", "coco"):
        preset = yaml.safe_load(preset_path(f"distill-{name}").read_text())
        assert f"{preset['train']['out_dir']} for {name}" in option("--out")
        assert preset["model"]["pretrained"] == "nvidia/mit-b2"
    coco = yaml.safe_load(preset_path("distill-coco").read_text())["train"]["iterations"]
    assert f"coco: {coco}" in option("--iterations")


def test_distill_checks_both_splits_and_the_pseudo_labels_before_stopping(voc, tmp_path):
    """Review: distill found a bad validation image only at its first validation."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(voc.parent, root)
    data = root / voc.name
    lists = data / "ImageSets" / "Segmentation"
    train_ids, val_ids = (
        (lists / "train.txt").read_text().split(),
        (lists / "val.txt").read_text().split(),
    )
    for image_id in (train_ids[1], val_ids[0]):
        image = data / "JPEGImages" / f"{image_id}.jpg"
        image.write_bytes(image.read_bytes()[:300])  # truncated
    pseudo = tmp_path / "pseudo"
    shutil.copytree(data / "SegmentationClass", pseudo / "SegmentationClass")
    (pseudo / "SegmentationClass" / f"{train_ids[2]}.png").unlink()
    arguments = _arguments(voc, tmp_path / "run")
    arguments[arguments.index("--data-root") + 1] = str(root)
    result = runner.invoke(app, [*arguments, "--pseudo-labels", str(pseudo)])
    assert result.exit_code == 1, result.output
    text, squeezed = _text(result), "".join(result.output.split())
    assert "pre-flight of splits train, val, train pseudo-labels" in text
    for image_id in (train_ids[1], val_ids[0], train_ids[2]):
        assert image_id in squeezed, image_id
    assert f"SegmentationClass/{train_ids[2]}.png" in squeezed and "missing" in squeezed
    assert not (tmp_path / "run" / "checkpoints").exists()

    # --skip-bad leaves the bad images out; a missing pseudo-label still stops the run.
    skipped = runner.invoke(app, [*arguments, "--pseudo-labels", str(pseudo), "--skip-bad"])
    assert skipped.exit_code == 2 and f"{train_ids[2]}.png: missing" in _text(skipped)
    shutil.copy(data / "SegmentationClass" / f"{train_ids[2]}.png", pseudo / "SegmentationClass")
    shutil.rmtree(tmp_path / "run")
    skipped = runner.invoke(app, [*arguments, "--pseudo-labels", str(pseudo), "--skip-bad"])
    assert skipped.exit_code == 0, skipped.output
    listed = (tmp_path / "run" / "skipped.txt").read_text()
    assert train_ids[1] in listed and val_ids[0] in listed
