"""``co2sam prepare coco``: render COCO semantic masks and label files (co2sam.data.coco)."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import console, fail

prepare_app = typer.Typer(
    help="Prepare datasets that need a conversion step (COCO masks from instances).",
    no_args_is_help=True,
)


@prepare_app.command("coco", short_help="COCO semantic masks and label files from instances.")
def prepare_coco(
    instances: Path = typer.Option(
        ..., "--instances", help="COCO instances JSON, e.g. annotations/instances_train2014.json."
    ),
    images: Path = typer.Option(..., "--images", help="Folder of the split's images (train2014)."),
    out: Path = typer.Option(..., "--out", help="Output folder (data.root for dataset=coco)."),
    split: str | None = typer.Option(
        None, "--split", help="Split name; default from the instances file (train, val)."
    ),
    crowd: str = typer.Option(
        "ignore",
        "--crowd",
        help="Crowd regions: ignore (255, not scored, no label), class (painted and "
        "labelled like instances) or skip (left as background).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes rendering masks (default: all cores)."
    ),
) -> None:
    """Render semantic masks (0 background, 1..80, 255 ignore) from COCO instances.

    Instances are painted in order of decreasing area (small ones on top). Images
    without annotations are listed in OUT/<split>_unannotated.txt and skipped.
    Rerunning resumes: masks already written are kept.
    """
    from co2sam.data.coco import prepare_coco as run_prepare
    from co2sam.data.image_io import DatasetError

    try:
        summary = run_prepare(instances, images, out, split=split, crowd=crowd, workers=workers)
    except DatasetError as error:
        fail(str(error))
        return
    console.print(
        f"[bold]{summary.split}[/]: {summary.written} masks written, {summary.resumed} already "
        f"done, {len(summary.unannotated)} images without annotation skipped "
        f"(listed in {out / f'{summary.split}_unannotated.txt'})"
    )
    console.print(f"use it with: --set data.dataset=coco --set data.root={out}")
