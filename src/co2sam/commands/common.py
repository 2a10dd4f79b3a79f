"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from co2sam.config import Co2SamConfig, ConfigError, load_config

console = Console(stderr=True)

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    metavar="PRESET|FILE",
    help="Preset name (voc, coco, voc-reference, coco-reference, demo) or a YAML file.",
)
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    metavar="KEY=VALUE",
    help="Override a config field: --set optim.lr=2e-4 (repeatable).",
)
SAM_HELP = (
    "SAM, SAM-HQ or SAM 2.1 weights: a hub id (facebook/sam-vit-base), a transformers "
    "folder, Meta's .pth / .pt, demo (the small SAM shipped for `co2sam demo`) or tiny "
    "(random weights)"
)
"""What ``--sam`` accepts (:func:`co2sam.sam.load_sam`)."""


def resolve_config(
    config: str | None, overrides: list[str] | None, **flags: object
) -> Co2SamConfig:
    """Load a preset/YAML, apply ``--set`` overrides, then explicit CLI flags.

    ``flags`` maps dotted keys to values; ``None`` values (flag not given) are skipped.
    Exits with a clear message on a bad config.
    """
    try:
        return load_config(config, list(overrides or []) + flag_overrides(flags))
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable: fail exits


def flag_overrides(flags: dict[str, object]) -> list[str]:
    """``{"a.b": value}`` -> ``["a.b=value"]`` (YAML values); ``None`` values skipped."""
    return [f"{key}={_yaml_value(value)}" for key, value in flags.items() if value is not None]


def fail(message: str, code: int = 2) -> None:
    """Print an error for the user and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _yaml_value(value: object) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
