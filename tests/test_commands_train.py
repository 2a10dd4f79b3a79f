"""``co2sam train``'s command line: what its help promises."""

import re

import pytest
import yaml
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.config import TrainConfig, preset_path


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _option(text: str, name: str) -> str:
    """The help of one option (up to the next option)."""
    return re.split(r" --[a-z-]+ <", text.split(f"{name} <", 1)[1])[0]


@pytest.mark.parametrize(
    ("option", "default"),
    [
        ("--devices", "default 1"),
        ("--num-nodes", "default 1"),
        ("--accelerator", "default auto"),
        ("--precision", "default auto"),
        ("--epochs", f"default {TrainConfig.epochs}"),
        ("--out", f"{TrainConfig.out_dir} without --config"),
        ("--boxes", "default cache, from DATA_ROOT/co2sam_boxes"),
        ("--sam", "default facebook/sam-vit-base"),
    ],
)
def test_train_help_shows_the_defaults(option, default):
    """Review: many options showed only their config key, no default."""
    assert default in _option(_help("train"), option)


def test_the_defaults_train_help_names_for_presets_are_theirs():
    text = _help("train")
    for name in ("voc", "coco"):
        preset = yaml.safe_load(preset_path(name).read_text())
        assert f"{preset['train']['out_dir']} for {name}" in _option(text, "--out")
        assert preset["model"]["sam"] in _option(text, "--sam")
    coco = yaml.safe_load(preset_path("coco").read_text())["train"]["epochs"]
    assert f"coco: {coco}" in _option(text, "--epochs")
    voc = yaml.safe_load(preset_path("voc").read_text())["train"]["epochs"]
    assert voc == TrainConfig.epochs  # "default 50" holds for voc too
