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

import click  # noqa: E402  (after the OpenMP settings, which must precede torch)
import typer  # noqa: E402
from typer.core import TyperCommand  # noqa: E402

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
# co2sam.commands.* and import torch and friends only when they run. Each has a short
# summary for `co2sam --help`, whole at 80 columns (click cuts a longer first sentence
# with "..." at any width).
SUMMARIES = {
    "demo": "The whole method on generated data, offline, on a CPU.",
    "train": "Train LoRA adapters on SAM (dual teachers, one student).",
    "evaluate": "Score SAM (+ adapter) or a segmenter on a split: mIoU.",
    "pseudo-labels": "Write pseudo-labels of a split (VOC palette PNGs).",
    "distill": "Train SegFormer / Mask2Former / UperNet on pseudo-labels.",
    "predict": "Segment images: label PNG, overlay, class areas.",
    "export": "Export a distilled segmenter to ONNX, checked.",
    "boxes": "Detect a split's boxes once and cache them.",
    "import-boxes": "Import another detector's boxes (COCO results).",
    "prepare": "Prepare datasets that need a conversion (COCO).",
    "check-data": "Check a dataset's images, masks and labels.",
    "app": "A local web page: segment, review, plot runs.",
}
COMMANDS = {
    "demo": demo.demo,
    "train": train.train,
    "evaluate": evaluate.evaluate,
    "pseudo-labels": pseudo_labels.pseudo_labels,
    "distill": distill.distill,
    "predict": predict.predict,
    "export": export.export,
    "boxes": boxes.boxes,
    "import-boxes": boxes.import_boxes,
    "prepare": prepare.prepare_app,
    "check-data": check_data.check_data,
    "app": web_app.app,
}


class _Command(TyperCommand):
    """Usage lines in click's convention: a required argument as ``IMAGES``, not typer's
    ``{IMAGES}`` (which reads like a placeholder left unfilled)."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


for _name, _command in COMMANDS.items():
    if isinstance(_command, typer.Typer):
        app.add_typer(_command, name=_name, short_help=SUMMARIES[_name])
    else:
        app.command(_name, cls=_Command, short_help=SUMMARIES[_name])(_command)
