"""``co2sam check-data``: scan a dataset and report every problem, without training."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from co2sam.commands.common import fail
from co2sam.commands.guards import problems_table

LEVELS = ("error", "warning", "converted")


def check_data(
    dataset: str = typer.Option("voc", "--dataset", help="voc, coco (prepared) or folder."),
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root folder."),
    split: list[str] | None = typer.Option(
        None, "--split", help="Split to scan (repeatable); default: every split found."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Scan only the first N per split."),
) -> None:
    """Check images, masks and labels; exit 1 when there are errors or warnings.

    Default splits: every split list of the dataset (a custom folder: all its labelled
    images, then each <split>.txt, whose names must be in the labels file).

    Errors: missing/unreadable images or masks, mask values outside the classes, image/mask
    size mismatch. Warnings: empty label sets. Converted (information only): grayscale,
    RGBA, CMYK, 16-bit images and EXIF rotation, which the loaders convert to RGB.
    """
    from rich.console import Console

    from co2sam.data.check import Problem, available_splits, open_for_check, scan_dataset
    from co2sam.data.image_io import DatasetError
    from co2sam.progress import progress_bar

    out = Console(width=None if Console().is_terminal else 200)
    problems: list[Problem] = []
    checked: set[str] = set()  # a folder's lists share images: each is read once
    try:
        splits = split or available_splits(dataset, data_root)
        if not splits:
            fail(f"no split found under {data_root}")
        counts = {}
        for name in splits:
            try:
                loaded = open_for_check(dataset, data_root, name)
            except DatasetError as error:
                if dataset != "folder" or name == "all":
                    raise
                problems.append(Problem("error", name, f"{name}.txt", "bad split list", str(error)))
                continue
            counts[name] = len(loaded) if limit is None else min(limit, len(loaded))
            indices = None  # the whole split (and a folder's labels file, once)
            if checked:
                indices = [i for i in range(counts[name]) if loaded.ids[i] not in checked]
            with progress_bar(console=out, transient=True) as bar:
                job = bar.add_task(
                    f"checking {name}", total=counts[name] if indices is None else len(indices)
                )
                advance = partial(bar.advance, job)
                problems += scan_dataset(loaded, limit=limit, indices=indices, on_item=advance)
            if dataset == "folder":
                checked.update(loaded.ids[: counts[name]])
    except DatasetError as error:
        fail(str(error))
        return

    if problems:
        out.print(problems_table(problems, f"{dataset} dataset at {data_root}"))
    by_level = {level: sum(p.level == level for p in problems) for level in LEVELS}
    scanned = ", ".join(f"{name}: {count} images" for name, count in counts.items())
    out.print(
        f"scanned {scanned}; {by_level['error']} errors, {by_level['warning']} warnings, "
        f"{by_level['converted']} conversions"
    )
    if by_level["error"] or by_level["warning"]:
        raise typer.Exit(1)
    out.print("[green]no problems found[/]")
