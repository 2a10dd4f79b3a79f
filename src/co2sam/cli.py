"""The ``co2sam`` command line: a thin map from command names to library functions.

Heavy imports (torch, transformers) happen inside the commands so that
``co2sam --help`` answers at once.

OpenMP reads its settings once, when torch loads, so they are set here, before any
command imports torch (a user's own values win): a passive wait policy, because
spinning OpenMP threads slow everything else on the CPU, and themselves ~10x when
another process is busy; and at most one thread per CPU this process may run on.
"""

from __future__ import annotations

import os


def _openmp_defaults() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if hasattr(os, "sched_getaffinity"):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(len(os.sched_getaffinity(0)), 1)))


_openmp_defaults()

import typer  # noqa: E402  (after the OpenMP settings, which must precede torch)

from co2sam import __version__  # noqa: E402
from co2sam.commands import (  # noqa: E402
    boxes,
    check_data,
    demo,
    distill,
    evaluate,
    export,
    predict,
    prepare,
    pseudo_labels,
    train,
    web_app,
)

app = typer.Typer(
    name="co2sam",
    help="Co2SAM: weakly supervised semantic segmentation by adapting SAM with LoRA "
    "from image-level labels. Start with `co2sam demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: wraps at word boundaries at any width; rich panels cut words
    # and long flag names at 80 columns.
    rich_markup_mode=None,
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
app.command("distill")(distill.distill)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("boxes")(boxes.boxes)
app.command("import-boxes")(boxes.import_boxes)
app.add_typer(prepare.prepare_app, name="prepare")
app.command("check-data")(check_data.check_data)
app.command("app")(web_app.app)
