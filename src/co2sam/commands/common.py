"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from co2sam.config import Co2SamConfig, ConfigError, load_config

if TYPE_CHECKING:
    from co2sam.train.interrupt import TrainingInterrupted

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

DataRootOption = typer.Option(None, help="Dataset root (data.root).")

# The options of the commands that segment with SAM (evaluate, pseudo-labels, predict).
AdapterOption = typer.Option(None, help="Adapter folder (e.g. runs/voc/best).")
AdapterSamOption = typer.Option(
    None, help=f"{SAM_HELP}; default: the adapter's base, else model.sam."
)
BoxSourceOption = typer.Option(
    None, help="Box source: cache, oracle, detector, or a box cache file (.jsonl)."
)
LimitOption = typer.Option(None, help="Only the first N images.")
BatchSizeOption = typer.Option(
    None, help="Images per forward pass.  [default: config's eval.batch_size; 4, demo preset 16]"
)
DeviceOption = typer.Option(
    None, help="auto, cpu, cuda, cuda:N.  [default: config's eval.device; auto, demo preset cpu]"
)

# The run options of the Fabric commands (train, distill).
ExcludeOption = typer.Option(
    None,
    help="A file of image ids to leave out of training, one per line (data.exclude), "
    "e.g. the flagged.txt written by `co2sam app`'s Review tab.",
)
TrainDevicesOption = typer.Option(None, help="Devices per node (train.devices; default 1).")
TrainNodesOption = typer.Option(None, help="Nodes (train.num_nodes; default 1).")
TrainAcceleratorOption = typer.Option(
    None, help="auto, cpu, cuda, gpu, mps (train.accelerator; default auto: a GPU if any)."
)
TrainPrecisionOption = typer.Option(
    None,
    help="auto (bf16-mixed on GPU, 32-true on CPU) or a Fabric precision string "
    "(train.precision; default auto).",
)


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


def resume_run(resume: Path) -> tuple[Path, bool | Path, Path]:
    """``--resume RUN`` or ``--resume RUN/checkpoints/<name>.pt``: the run folder, what the
    loop resumes from (True: the folder's newest checkpoint; a path: that file) and the
    run's ``config.yaml``. Exits when the folder has none."""
    fix = "give the folder a run wrote (its --out) or one of its checkpoints/*.pt files"
    run_dir, resume_from = resume, True
    if resume.is_file():  # one checkpoint: RUN/checkpoints/<name>.pt
        run_dir, resume_from = resume.parent.parent, resume
        if resume.parent.name != "checkpoints" or not (run_dir / "config.yaml").is_file():
            fail(f"--resume {resume}: not a run folder nor a checkpoint of one; {fix}")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        fail(f"--resume {resume}: not a run folder ({saved} is missing); {fix}")
    return run_dir, resume_from, saved


def interrupted_exit(stopped: TrainingInterrupted) -> typer.Exit:
    """For a run a signal stopped: the main process says how to resume; every process
    exits with 128 + the signal (raise what this returns)."""
    if stopped.rank == 0:
        console.print(f"[yellow]interrupted[/] {escape(str(stopped))}")
    return typer.Exit(stopped.exit_code)


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
