"""``co2sam boxes`` and ``co2sam import-boxes``: make the box cache of a split."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import (
    ConfigOption,
    DataRootOption,
    SetOption,
    console,
    fail,
    resolve_config,
)
from co2sam.commands.guards import (
    DevicesOption,
    NumNodesOption,
    checked_dataset,
    ctrl_c_resumable,
    launch,
    output_errors,
)


def boxes(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split to detect (default: data.train_split)."),
    data_root: Path | None = DataRootOption,
    detector: str | None = typer.Option(
        None,
        help="Detector hub id or local folder: Grounding DINO, or SAM 3 (facebook/sam3) "
        "(prompts.detector).",
    ),
    mode: str | None = typer.Option(
        None, help="per-class (query each labelled class) or all (prompts.mode; auto by split)."
    ),
    oracle: bool = typer.Option(
        False, "--oracle", help="Boxes from ground-truth masks instead (recorded as oracle)."
    ),
    out: Path | None = typer.Option(
        None,
        help="Cache file (default <prompts.cache_dir or data.root/co2sam_boxes>/<split>.jsonl).",
    ),
    overwrite: bool = typer.Option(
        False, show_default=False, help="Replace a cache made with other settings."
    ),
    limit: int | None = typer.Option(None, help="Stop after N new images (resume later)."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Leave out images whose files fail the pre-flight check instead of stopping "
        "(data.skip_bad); they are listed beside the cache, in <cache name>.skipped.txt "
        "(val.skipped.txt for val.jsonl).",
    ),
    devices: int | None = DevicesOption,
    num_nodes: int | None = NumNodesOption,
) -> None:
    """Run the detector once over a split and store its boxes (resumable, shardable).

    With --devices N (and --num-nodes M) every process detects its share of the images
    and the main process merges them into the one cache file. One command writes a cache
    at a time: a second one on the same file is refused.
    """
    cfg = resolve_config(
        config,
        overrides,
        **{
            "data.root": data_root,
            "data.skip_bad": skip_bad or None,
            "prompts.detector": detector,
            "prompts.mode": mode,
        },
    )
    split = split or cfg.data.train_split
    from co2sam.data import DatasetError, build_dataset
    from co2sam.prompts.build import build_box_cache
    from co2sam.prompts.cache import BoxCacheError
    from co2sam.prompts.registry import prompter_spec
    from co2sam.prompts.source import default_cache_path

    processes = launch(devices, num_nodes, cfg.prompts.device)
    if processes.distributed:
        cfg.prompts.device = str(processes.device)
    path = out or default_cache_path(cfg, split)
    with output_errors(path.parent), ctrl_c_resumable("boxes"):
        try:
            origin = "oracle" if oracle else prompter_spec(cfg.prompts.detector).name
            dataset = build_dataset(cfg.data, split, check_masks=not cfg.data.preflight)
            skipped = path.with_name(f"{path.stem}.skipped.txt")
            if processes.is_main and skipped.is_file():
                forget_skipped(path, skipped)
            # oracle boxes are made from the masks; a detector reads the images alone
            dataset = checked_dataset(
                cfg, dataset, skipped=skipped, processes=processes, masks=oracle
            )
            build_box_cache(
                cfg,
                split,
                dataset,
                origin=origin,
                path=path,
                overwrite=overwrite,
                limit=limit,
                processes=processes,
            )
        except (BoxCacheError, DatasetError, ValueError) as error:
            fail(str(error))
            return
    if processes.is_main:
        console.print(f"[green]boxes[/] of {split} ({origin}) in {path}")


def import_boxes(
    coco_results: Path = typer.Option(
        ..., "--coco-results", help="COCO-results JSON: image_id, category_id, bbox xywh, score."
    ),
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split the detections belong to."),
    data_root: Path | None = DataRootOption,
    category_ids: str = typer.Option(
        "auto", help="coco (sparse COCO ids), contiguous (1..C) or auto (coco for COCO classes)."
    ),
    images: Path | None = typer.Option(
        None, help="COCO-style images list mapping integer image_id to file_name."
    ),
    name: str | None = typer.Option(
        None, help="Detector name recorded in the cache (default: the file name)."
    ),
    score_threshold: float = typer.Option(0.0, help="Drop detections scoring below this."),
    out: Path | None = typer.Option(None, help="Cache file (default: the split's cache path)."),
    overwrite: bool = typer.Option(
        False, show_default=False, help="Replace an existing cache file."
    ),
) -> None:
    """Import another detector's boxes (COCO-results JSON) into the split's box cache."""
    cfg = resolve_config(config, overrides, **{"data.root": data_root})
    split = split or cfg.data.val_split
    from co2sam.data import DatasetError, build_dataset
    from co2sam.prompts.cache import write_box_cache
    from co2sam.prompts.coco_import import import_coco_results
    from co2sam.prompts.source import default_cache_path

    try:
        dataset = build_dataset(cfg.data, split)
        found, summary = import_coco_results(
            coco_results,
            dataset.ids,
            dataset.class_names,
            category_ids=category_ids,
            images=images,
            score_threshold=score_threshold,
        )
        settings = {
            "origin": "import",
            "detector": name or coco_results.name,
            "source_file": str(coco_results),
            "category_ids": category_ids,
            "score_threshold": score_threshold,
            "class_names": list(dataset.class_names),
            "split": split,
        }
        target = out or default_cache_path(cfg, split)
        with output_errors(target.parent):
            path = write_box_cache(target, settings, found, overwrite=overwrite)
    except FileNotFoundError as error:
        fail(str(error))
        return
    except (DatasetError, ValueError) as error:  # BoxCacheError is a ValueError
        fail(str(error))
        return
    console.print(
        f"[green]imported[/] {summary.detections} boxes on {summary.images_with_boxes} of "
        f"{len(dataset.ids)} images into {path} ({summary.skipped_images} detections of other "
        f"images skipped, {summary.below_threshold} below the score threshold)"
    )


def forget_skipped(cache: Path, skipped: Path) -> None:
    """Start the cache's list of skipped images afresh, so that it describes this run
    (an image fixed since is not listed again), unless another ``boxes`` holds the cache
    (this one is refused in a moment, and the list is that one's)."""
    from co2sam.prompts.cache import BoxCacheBusyError, cache_lock

    try:
        with cache_lock(cache):
            skipped.unlink(missing_ok=True)
    except BoxCacheBusyError:
        pass
