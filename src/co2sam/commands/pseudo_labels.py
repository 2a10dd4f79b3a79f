"""``co2sam pseudo-labels``: palette PNG pseudo-labels of a split in the VOC layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from co2sam.commands.common import (
    SAM_HELP,
    ConfigOption,
    SetOption,
    console,
    fail,
    resolve_config,
)
from co2sam.commands.guards import DevicesOption, NumNodesOption, SkipBadOption, output_errors

PSEUDO_LABEL_OUTPUTS = ("SegmentationClass", "ImageSets", "report.json", "skipped.txt")
"""What ``pseudo-labels`` writes in its folder (``--overwrite`` clears these)."""


def pseudo_labels(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split to label (default data.train_split)."),
    adapter: str | None = typer.Option(None, help="Adapter folder (e.g. runs/voc/best)."),
    mode: str = typer.Option(
        "label-guided", help="label-guided (image labels filter classes; default) or open."
    ),
    sam: str | None = typer.Option(
        None, help=f"{SAM_HELP}; default: the adapter's base, else model.sam."
    ),
    data_root: Path | None = typer.Option(None, help="Dataset root (data.root)."),
    boxes: str | None = typer.Option(
        None, help="Box source: cache, oracle, detector, or a box cache file (.jsonl)."
    ),
    detector: str | None = typer.Option(
        None,
        help="Detector (Grounding DINO, or SAM 3: facebook/sam3) the box cache was made "
        "with, or to run live (prompts.detector).",
    ),
    out: Path | None = typer.Option(
        None, help="Output folder (default runs/pseudo_labels/<dataset>-<split>/<adapter>)."
    ),
    overwrite: bool = typer.Option(
        False, help="Replace the output folder of another run instead of refusing."
    ),
    limit: int | None = typer.Option(None, help="Only the first N images."),
    batch_size: int | None = typer.Option(None, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    skip_bad: bool = SkipBadOption,
    devices: int | None = DevicesOption,
    num_nodes: int | None = NumNodesOption,
) -> None:
    """Write pseudo-labels (VOC palette PNGs) for a second-stage segmenter.

    Label-guided by default; scored against the ground truth when the split has masks.
    Resumable, and sharded over --devices N (--num-nodes M) like evaluate.
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
) -> dict[str, Any] | None:
    """The body of ``co2sam pseudo-labels`` for a resolved config; returns the report
    (main process; None on the others)."""
    from co2sam.commands.inference import (
        box_source_record,
        default_out_dir,
        identity_of,
        segment_split,
        split_results,
        start_split_run,
    )
    from co2sam.metrics import metrics_table, write_report
    from co2sam.pseudo_labels import PredictionWriter, write_split_list

    split = split or cfg.data.train_split
    out_dir = Path(out or default_out_dir("pseudo_labels", cfg, split))
    identity = identity_of("pseudo-labels", cfg, split, sam, boxes)
    identity.update(mode=mode, eval_compat=cfg.eval.compat)
    with output_errors(out_dir):
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
        )
        dataset, source = run.dataset, run.source
        label_folder = out_dir / "SegmentationClass"
        if run.processes.is_main:
            console.print(
                f"pseudo-labels for {split} ({len(dataset)} images), {mode} mode, "
                f"boxes: {source.description}"
            )
        segment_split(run, cfg, modes=(mode,), on_prediction=PredictionWriter({mode: label_folder}))
        if not run.processes.is_main:
            return None
        results, written, skipped = split_results(run, (mode,))
        write_split_list(out_dir, split, written)
        metrics = {**results[mode], "label_folder": str(label_folder), "num_written": len(written)}
        metrics["compat"] = cfg.eval.compat
        report = {
            "split": split,
            "mode": mode,
            "sam": run.base,
            "adapter": cfg.model.adapter,
            "eval_compat": cfg.eval.compat,
            "box_source": box_source_record(source),
            "class_names": list(dataset.class_names),
            "metrics": metrics,
            "skipped": skipped,
            "config": cfg.to_dict(),
        }
        write_report(out_dir / "report.json", report)
    if metrics["num_images"]:
        title = f"pseudo-labels {split} vs. ground truth — {mode} mode — boxes: {source.origin}"
        console.print(metrics_table(metrics, dataset.class_names, title))
    if skipped:
        console.print(
            f"[yellow]{len(skipped)} image(s) skipped (unreadable files): "
            f"{out_dir / 'skipped.txt'}[/]"
        )
    console.print(f"{metrics['num_written']} pseudo-labels in {metrics['label_folder']}")
    return report
