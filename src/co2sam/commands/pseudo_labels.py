"""``co2sam pseudo-labels``: palette PNG pseudo-labels of a split in the VOC layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from co2sam.commands.common import ConfigOption, SetOption, console, fail, resolve_config


def pseudo_labels(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split to label (default data.train_split)."),
    adapter: str | None = typer.Option(None, help="Adapter folder (e.g. runs/voc/best)."),
    mode: str = typer.Option(
        "label-guided", help="label-guided (image labels filter classes; default) or open."
    ),
    sam: str | None = typer.Option(
        None, help="SAM weights (default: the adapter's base or model.sam)."
    ),
    data_root: Path | None = typer.Option(None, help="Dataset root (data.root)."),
    boxes: str | None = typer.Option(
        None, help="Box source: cache, oracle, detector, or a box cache file (.jsonl)."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default runs/pseudo_labels/SPLIT)."),
    limit: int | None = typer.Option(None, help="Only the first N images."),
    batch_size: int | None = typer.Option(None, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Write pseudo-labels (VOC palette PNGs) for a second-stage segmenter.

    Label-guided by default; scored against the ground truth when the split has masks.
    """
    if mode not in ("label-guided", "open"):
        fail(f"--mode must be label-guided or open, got {mode!r}")
    cfg = resolve_config(
        config,
        overrides,
        **{
            "data.root": data_root,
            "model.adapter": adapter,
            "eval.limit": limit,
            "eval.batch_size": batch_size,
            "eval.device": device,
        },
    )
    run_pseudo_labels(cfg, split=split, mode=mode, sam=sam, boxes=boxes, out=out)


def run_pseudo_labels(
    cfg: Any,
    *,
    split: str | None = None,
    mode: str = "label-guided",
    sam: str | None = None,
    boxes: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """The body of ``co2sam pseudo-labels`` for a resolved config; returns the report."""
    from co2sam.commands.evaluate import (
        box_source_record,
        load_segmenter,
        load_split,
        resolve_boxes,
        resolve_device,
    )
    from co2sam.metrics import metrics_table, write_report
    from co2sam.pseudo_labels import export_pseudo_labels

    split = split or cfg.data.train_split
    device = resolve_device(cfg.eval.device)
    dataset = load_split(cfg, split)
    source = resolve_boxes(cfg, split, dataset, boxes)
    segmenter, base = load_segmenter(
        sam or (None if cfg.model.adapter else cfg.model.sam), cfg.model.adapter, device
    )
    out_dir = Path(out or Path("runs") / "pseudo_labels" / split)
    console.print(
        f"pseudo-labels for {split} ({len(dataset)} images), {mode} mode, "
        f"boxes: {source.description}"
    )
    metrics = export_pseudo_labels(
        segmenter,
        dataset,
        source,
        out_dir,
        mode=mode,
        split=split,
        batch_size=cfg.eval.batch_size,
        limit=cfg.eval.limit,
        num_workers=cfg.data.num_workers,
    )
    report = {
        "split": split,
        "mode": mode,
        "sam": base,
        "adapter": cfg.model.adapter,
        "box_source": box_source_record(source),
        "class_names": list(dataset.class_names),
        "metrics": metrics,
        "config": cfg.to_dict(),
    }
    write_report(out_dir / "report.json", report)
    if metrics["num_images"]:
        title = f"pseudo-labels {split} vs. ground truth — {mode} mode — boxes: {source.origin}"
        console.print(metrics_table(metrics, dataset.class_names, title))
    console.print(f"{metrics['num_written']} pseudo-labels in {metrics['label_folder']}")
    return report
