from typer.testing import CliRunner

from co2sam import __version__
from co2sam.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = ("demo", "train", "evaluate", "pseudo-labels", "predict", "boxes",
                "import-boxes", "prepare", "check-data")  # fmt: skip
    for command in commands:
        assert f" {command} " in result.output, command


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
