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
