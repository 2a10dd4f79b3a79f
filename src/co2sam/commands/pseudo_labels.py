"""``co2sam pseudo-labels``: palette PNG pseudo-labels of a split in the VOC layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from co2sam.commands.common import (
    AdapterOption,
    AdapterSamOption,
    BatchSizeOption,
    BoxSourceOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    LimitOption,
    SetOption,
    console,
    fail,
    resolve_config,
)
from co2sam.commands.guards import (
    DevicesOption,
    NumNodesOption,
    SkipBadOption,
    ctrl_c_resumable,
    output_errors,
)

PSEUDO_LABEL_OUTPUTS = (
    "SegmentationClass",
    "Confidence",
    "ImageSets",
    "report.json",
    "skipped.txt",
)
"""What ``pseudo-labels`` writes in its folder (``--overwrite`` clears these)."""


def pseudo_labels(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split to label (default data.train_split)."),
    adapter: str | None = AdapterOption,
    mode: str = typer.Option(
        "label-guided", help="label-guided (image labels filter classes; default) or open."
    ),
    sam: str | None = AdapterSamOption,
    data_root: Path | None = DataRootOption,
    boxes: str | None = BoxSourceOption,
    detector: str | None = typer.Option(
        None,
        help="Detector (Grounding DINO, or SAM 3: facebook/sam3) the box cache was made "
        "with, or to run live (prompts.detector).",
    ),
    out: Path | None = typer.Option(
        None,
        help="Output folder.  [default: <dataset>-<split>/<model> under runs/pseudo_labels; "
        "<model>: the adapter folder's last two parts, or plain-<SAM>]",
    ),
    overwrite: bool = typer.Option(
        False,
        show_default=False,
        help="Replace the output folder of another run instead of refusing.",
    ),
    limit: int | None = LimitOption,
    batch_size: int | None = BatchSizeOption,
    device: str | None = DeviceOption,
    skip_bad: bool = SkipBadOption,
    devices: int | None = DevicesOption,
    num_nodes: int | None = NumNodesOption,
    no_confidence: bool = typer.Option(
        False,
        "--no-confidence",
        help="Do not write Confidence/<id>.png (used by `co2sam distill --min-confidence`).",
    ),
) -> None:
    """Write pseudo-labels (VOC palette PNGs) for a second-stage segmenter (`co2sam distill`).

    Label-guided by default. When the split has masks (VOC train_aug does), prints and
    writes their quality: mIoU against the ground truth, and per confidence threshold the
    share of pixels kept and their mIoU. Resumable, and sharded over --devices N
    (--num-nodes M) like evaluate.
    """
    if mode not in ("label-guided", "open"):
        fail(f"--mode must be label-guided or open, got {mode!r}")
    cfg = resolve_config(
        config,
        overrides,
        **{
            "data.root": data_root,
            "data.skip_bad": skip_bad or None,
            "model.adapter": adapter,
            "prompts.detector": detector,
            "eval.limit": limit,
            "eval.batch_size": batch_size,
            "eval.device": device,
        },
    )
    run_pseudo_labels(
        cfg,
        split=split,
        mode=mode,
        sam=sam,
        boxes=boxes,
        out=out,
        overwrite=overwrite,
        devices=devices,
        num_nodes=num_nodes,
        confidence=not no_confidence,
    )


def run_pseudo_labels(
    cfg: Any,
    *,
    split: str | None = None,
    mode: str = "label-guided",
    sam: str | None = None,
    boxes: str | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    devices: int | None = None,
    num_nodes: int | None = None,
    confidence: bool = True,
) -> dict[str, Any] | None:
    """The body of ``co2sam pseudo-labels`` for a resolved config; returns the report
    (main process; None on the others)."""
    from co2sam.commands.inference import (
        box_source_record,
        default_out_dir,
        identity_of,
        processes_record,
        segment_split,
        split_results,
        start_split_run,
    )
    from co2sam.metrics import metrics_table, write_report
    from co2sam.prompts.source import reads_masks
    from co2sam.pseudo_labels import (
        PredictionWriter,
        PseudoLabelFileError,
        confidence_quality_of_folder,
        write_split_list,
    )

    split = split or cfg.data.train_split
    out_dir = Path(out or default_out_dir("pseudo_labels", cfg, split, sam=sam))
    identity = identity_of("pseudo-labels", cfg, split, sam, boxes)
    confidence = confidence and cfg.eval.compat == "paper"  # reference maps carry none
    identity.update(mode=mode, eval_compat=cfg.eval.compat, confidence=confidence)

    def files_of(image_id: str, record: Any) -> list[str]:
        folders = ("SegmentationClass", "Confidence") if confidence else ("SegmentationClass",)
        return [f"{folder}/{image_id}.png" for folder in folders]

    with output_errors(out_dir), ctrl_c_resumable("pseudo-labels"):
        run = start_split_run(
            cfg,
            identity=identity,
            outputs=PSEUDO_LABEL_OUTPUTS,
            out_dir=out_dir,
            split=split,
            sam=sam,
            boxes=boxes,
            overwrite=overwrite,
            devices=devices,
            num_nodes=num_nodes,
            # masks only give the quality numbers, unless the boxes are made from them
            masks=reads_masks(boxes or cfg.prompts.source),
            files_of=files_of,
        )
        dataset, source = run.dataset, run.source
        label_folder = out_dir / "SegmentationClass"
        if run.processes.is_main:
            console.print(
                f"pseudo-labels for {split} ({len(dataset)} images), {mode} mode, "
                f"boxes: {source.description}"
            )
        confidence_folders = {mode: out_dir / "Confidence"} if confidence else {}
        writer = PredictionWriter({mode: label_folder}, confidence_folders=confidence_folders)
        segment_split(run, cfg, modes=(mode,), on_prediction=writer, confidence=confidence)
        if not run.processes.is_main:
            return None
        results, written, skipped = split_results(run, (mode,))
        write_split_list(out_dir, split, written)
        metrics = {**results[mode], "label_folder": str(label_folder), "num_written": len(written)}
        metrics["compat"] = cfg.eval.compat
        records = run.folder.records()
        scored = [image_id for image_id in written if records[image_id]["scored"]]
        try:
            metrics["confidence_quality"] = (
                confidence_quality_of_folder(dataset, out_dir, scored) if confidence else []
            )
        except PseudoLabelFileError as error:
            fail(str(error))
        # written, but their ground-truth mask could not be used (warned about mid-run)
        unscored = [
            image_id for image_id in written if dataset.has_masks and image_id not in scored
        ]
        report = {
            "split": split,
            "mode": mode,
            "sam": run.base,
            "adapter": cfg.model.adapter,
            "eval_compat": cfg.eval.compat,
            "box_source": box_source_record(source),
            "class_names": list(dataset.class_names),
            "metrics": metrics,
            "quality": _quality_summary(metrics),
            "skipped": skipped,
            "processes": processes_record(run.processes),
            "masks_not_used": unscored,
            "config": cfg.to_dict(),
        }
        write_report(out_dir / "report.json", report)
    if metrics["num_images"]:
        title = (
            f"pseudo-label quality: {split} vs. its ground-truth masks — {mode} mode — "
            f"boxes: {source.origin}"
        )
        console.print(metrics_table(metrics, dataset.class_names, title))
        if metrics["confidence_quality"]:
            console.print(_confidence_table(metrics["confidence_quality"]))
        console.print(
            f"pseudo-label mIoU {100 * metrics['miou']:.1f} ({mode} mode, "
            f"{metrics['num_images']} images)"
        )
    if skipped:
        console.print(
            f"[yellow]{len(skipped)} image(s) skipped (unreadable files): "
            f"{out_dir / 'skipped.txt'}[/]"
        )
    if unscored:
        console.print(
            f"[yellow]{len(unscored)} pseudo-label(s) without a quality number (their "
            "ground-truth mask could not be used): report.json, masks_not_used[/]"
        )
    console.print(f"{metrics['num_written']} pseudo-labels in {metrics['label_folder']}")
    return report


def _quality_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's ``quality`` section: the WSSS mask-quality number and its breakdown."""
    return {
        "description": "mIoU of the pseudo-labels against the split's ground-truth masks "
        "(the WSSS pseudo-label / mask quality), and per min_confidence the share of "
        "labelled pixels kept with their mIoU and pixel accuracy",
        "miou": metrics["miou"],
        "num_images": metrics["num_images"],
        "by_min_confidence": metrics.get("confidence_quality", []),
    }


def _confidence_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="pseudo-labels kept above a confidence (pseudo_labels.min_confidence)")
    for column in ("min confidence", "pixels kept", "mIoU of kept", "accuracy of kept"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['min_confidence']:.1f}",
            f"{100 * row['pixels_kept']:.1f}%",
            _pct(row["miou"]),
            _pct(row["pixel_accuracy"]),
        )
    return table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"
