import re

import pytest
from typer.testing import CliRunner

from co2sam import __version__
from co2sam.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = ("demo", "train", "evaluate", "pseudo-labels", "distill", "predict", "export",
                "boxes", "import-boxes", "prepare", "check-data", "app")  # fmt: skip
    for command in commands:
        assert f" {command} " in result.output, command


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


COMMANDS = (["demo"], ["train"], ["evaluate"], ["pseudo-labels"], ["distill"], ["predict"],
            ["export"], ["boxes"], ["import-boxes"], ["check-data"],
            ["prepare", "coco"])  # fmt: skip


def _help_words(command: list[str]) -> list[str]:
    """Every word of every option's help text of a command."""
    import typer.main

    click_command = typer.main.get_command(app)
    for name in command:
        click_command = click_command.commands[name]
    texts = [param.help or "" for param in click_command.params]
    return [word for text in texts for word in text.split()]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_at_80_columns_keeps_words_whole_and_has_no_bool_placeholder(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    # Line breaks after a hyphen ("ground-" / "truth") are fine; inside a word are not.
    text = re.sub(r"-\n\s+", "-", result.output)
    printed = set(text.split())
    cut = [word for word in _help_words(command) if word not in printed]
    assert not cut, f"words cut across lines: {cut}"


def test_sam_option_help_names_the_demo_sam():
    for command in (["train"], ["evaluate"], ["pseudo-labels"], ["predict"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=100)
        assert "demo (the small SAM shipped" in " ".join(result.output.split()), command


def test_no_progress_silences_the_weight_loading_bars_too(tmp_path):
    from transformers.utils import logging as transformers_logging

    from co2sam.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", num_images=2, num_classes=2, image_size=32,
                           splits={"train": 2})  # fmt: skip
    args = ["train", "--data-root", str(tmp_path / "data"), "--set", "data.dataset=synthetic",
            "--set", "data.train_split=train", "--sam", "demo", "--boxes", "oracle",
            "--set", "train.val_every=0", "--set", "data.num_workers=0", "--max-steps", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    try:
        result = runner.invoke(app, [*args, "--no-progress"])
    finally:
        transformers_logging.enable_progress_bar()
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output  # the demo SAM is a transformers folder


def test_a_damaged_segmenter_folder_is_one_error_line_in_every_command(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from co2sam.data.synthetic import make_synthetic_dataset
    from co2sam.models.segmentation_net import build_net, save_net

    make_synthetic_dataset(
        tmp_path / "data", num_images=2, num_classes=2, image_size=32, splits={"val": 2}
    )
    names = ("background", "class_1", "class_2")
    torch.manual_seed(0)
    folder = save_net(build_net("segformer", "tiny", names), tmp_path / "best", {})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    commands = {
        "export": ["export", "--segmenter", str(folder), "--onnx", str(tmp_path / "m.onnx")],
        "predict": ["predict", str(tmp_path / "a.png"), "--segmenter", str(folder),
                    "--out", str(tmp_path / "pred")],
        "evaluate": ["evaluate", "--segmenter", str(folder), "--data-root",
                     str(tmp_path / "data"), "--set", "data.dataset=synthetic", "--split",
                     "val", "--device", "cpu", "--out", str(tmp_path / "eval")],
    }  # fmt: skip
    for command, arguments in commands.items():
        result = runner.invoke(app, arguments, terminal_width=1000)
        assert result.exit_code == 2, (command, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), command
        assert result.output.count("error:") == 1, (command, result.output)
        said = "".join(result.output.split())  # rich wraps long paths anywhere
        assert f"error:cannotread{weights}" in said and "copythefolderagain" in said


# train's and distill's own help is checked in their tests
TERMINAL_HELP = ([], ["demo"], ["evaluate"], ["pseudo-labels"], ["predict"], ["export"],
                 ["boxes"], ["import-boxes"], ["check-data"], ["app"], ["prepare"],
                 ["prepare", "coco"])  # fmt: skip


@pytest.mark.parametrize("columns", [80, 100])
@pytest.mark.parametrize("command", TERMINAL_HELP, ids=lambda c: " ".join(c) or "co2sam")
def test_help_in_a_terminal_cuts_no_summary_word_or_default(command, columns):
    # In a terminal click wraps help at min(COLUMNS, 80) - 2 columns; CliRunner forces 80
    # unless told the width
    width = min(columns, 80) - 2
    result = runner.invoke(app, [*command, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= columns
    body = "\n".join(line for line in lines if not line.startswith("Usage:"))
    assert "..." not in body and "…" not in body, body  # no summary cut short
    flat = " ".join(result.output.split())
    for default in re.findall(r"\[default: [^\]]*\]", flat):
        assert not re.search(r"\w- \w", default), f"default broken across lines: {default}"
    if command:
        text = re.sub(r"-\n\s+", "-", result.output)  # "pre-" / "flight" is a fine break
        printed = set(text.split())
        cut = [word for word in _help_words(command) if word not in printed]
        assert not cut, f"words cut across lines: {cut}"


def test_top_level_help_shows_every_summary_whole():
    from co2sam.cli import SUMMARIES

    result = runner.invoke(app, ["--help"], terminal_width=78)
    flat = " ".join(result.output.split())
    for name, summary in SUMMARIES.items():
        assert f"{name} {summary}" in flat, name


def test_option_help_names_defaults_arguments_and_files_truly():
    def flat(*command):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    evaluate = flat("evaluate")
    assert "[default: config's eval.batch_size; 4, demo preset 16]" in evaluate
    assert "[default: config's eval.device; auto, demo preset cpu]" in evaluate
    assert "[default: config's eval.overlays; off]" in evaluate
    for command in ("predict", "pseudo-labels"):
        text = flat(command)
        assert "auto, cpu, cuda, cuda:N. [default: config's eval.device" in text
        assert "(Lightning Fabric, DDP). [default: 1]" in text
    predict = flat("predict")
    assert "Usage: co2sam predict [OPTIONS] IMAGES" in predict and "{" not in predict.split()[4]
    boxes = flat("boxes")
    assert "listed beside the cache, in <cache name>.skipped.txt" in boxes
    assert "listed in skipped.txt" not in boxes
