"""The ``co2sam`` command line: a thin map from command names to library functions.

Heavy imports (torch, transformers) happen inside the commands so that
``co2sam --help`` answers at once.
"""

from __future__ import annotations

import typer

from co2sam import __version__
from co2sam.commands import (
    boxes,
    check_data,
    demo,
    evaluate,
    predict,
    prepare,
    pseudo_labels,
    train,
)

app = typer.Typer(
    name="co2sam",
    help="Co2SAM: weakly supervised semantic segmentation by adapting SAM with LoRA "
    "from image-level labels. Start with `co2sam demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"co2sam {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Co2SAM command line."""


# Command registrations, in the order a user meets them; the functions live in
# co2sam.commands.* and import torch and friends only when they run.
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("pseudo-labels")(pseudo_labels.pseudo_labels)
app.command("predict")(predict.predict)
app.command("boxes")(boxes.boxes)
app.command("import-boxes")(boxes.import_boxes)
app.add_typer(prepare.prepare_app, name="prepare")
app.command("check-data")(check_data.check_data)
