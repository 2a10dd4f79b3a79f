"""``co2sam evaluate``: score a split (label-guided and/or open mode), write a report,
palette PNG predictions, optional overlays and confusion-matrix figures."""

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


def evaluate(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    split: str | None = typer.Option(None, help="Split to evaluate (default eval.split)."),
    adapter: str | None = AdapterOption,
    mode: str | None = typer.Option(None, help="label-guided, open or both (default eval.mode)."),
    sam: str | None = AdapterSamOption,
    data_root: Path | None = DataRootOption,
    boxes: str | None = BoxSourceOption,
    detector: str | None = typer.Option(
        None,
        help="Detector hub id or folder, Grounding DINO or SAM 3 (facebook/sam3): the one "
        "the box cache was made with, or to run live (prompts.detector).",
    ),
    out: Path | None = typer.Option(
        None,
        help="Output folder.  [default: config's eval.out_dir, else <dataset>-<split>/<model> "
        "under runs/eval; <model>: the adapter folder's last two parts, or plain-<SAM>]",
    ),
    overwrite: bool = typer.Option(
        False,
        show_default=False,
        help="Replace the output folder of another evaluation instead of refusing.",
    ),
    overlays: bool | None = typer.Option(
        None,
        "--overlays/--no-overlays",
        help="Also write colour overlays.  [default: config's eval.overlays; off]",
    ),
    limit: int | None = LimitOption,
    batch_size: int | None = BatchSizeOption,
    device: str | None = DeviceOption,
    voc_test_format: bool = typer.Option(
        False,
        show_default=False,
        help="Also write open-mode PNGs in the VOC test server's layout "
        "(comp6_test_cls under OUT/results).",
    ),
    skip_bad: bool = SkipBadOption,
    devices: int | None = DevicesOption,
    num_nodes: int | None = NumNodesOption,
    segmenter: Path | None = typer.Option(
        None,
        "--segmenter",
        help="Evaluate a `co2sam distill` segmenter folder alone instead of SAM (no boxes; "
        "open mode unless --mode).",
    ),
    tta: bool | None = typer.Option(
        None,
        "--tta/--no-tta",
        help="With --segmenter: multi-scale + flip test-time augmentation (default: as the "
        "run recorded, off in the presets).",
    ),
) -> None:
    """Evaluate SAM (+ adapter) or a distilled segmenter on a split: mIoU table,
    report.json, PNG predictions.

    Resumable: the same command on the same output folder continues where it stopped.
    With --devices N (--num-nodes M) every process segments its share of the split and
    the confusion matrix is summed over all of them.
    """
    if segmenter is not None:
        if adapter or sam or boxes or detector:
            fail("--segmenter runs alone: drop --adapter, --sam, --boxes and --detector")
        mode = mode or "open"
    elif tta is not None:
        fail("--tta applies to --segmenter only")
    cfg = resolve_config(
        config,
        overrides,
        **{
            "data.root": data_root,
            "data.skip_bad": skip_bad or None,
            "model.adapter": adapter,
            "prompts.detector": detector,
            "eval.split": split,
            "eval.mode": mode,
            "eval.out_dir": out,
            "eval.overlays": overlays,
            "eval.limit": limit,
            "eval.batch_size": batch_size,
            "eval.device": device,
        },
    )
    run_evaluation(
        cfg,
        sam=sam,
        boxes=boxes,
        voc_test_format=voc_test_format,
        overwrite=overwrite,
        devices=devices,
        num_nodes=num_nodes,
        segmenter=segmenter,
        tta=tta,
    )


EVAL_OUTPUTS = ("label-guided", "open", "results", "report.json", "skipped.txt")
"""What ``evaluate`` writes in its folder (``--overwrite`` clears these)."""


def run_evaluation(
    cfg: Any,
    *,
    sam: str | None = None,
    boxes: str | None = None,
    voc_test_format: bool = False,
    overwrite: bool = False,
    devices: int | None = None,
    num_nodes: int | None = None,
    segmenter: Path | None = None,
    tta: bool | None = None,
) -> dict[str, Any] | None:
    """The body of ``co2sam evaluate`` for a resolved config; returns the report (main
    process; None on the others).

    segmenter: a ``co2sam distill`` segmenter folder to evaluate instead of SAM + boxes.
    """
    from co2sam.commands.inference import (
        box_source_record,
        checkpoint_record,
        default_out_dir,
        identity_of,
        processes_record,
        segment_split,
        segmenter_identity,
        split_results,
        start_split_run,
    )
    from co2sam.evaluate import modes_of
    from co2sam.metrics import metrics_table, write_report
    from co2sam.pseudo_labels import VOC_TEST_FOLDER, PredictionWriter
    from co2sam.visualize import confusion_matrix_figure

    split = cfg.eval.split
    modes = modes_of(cfg.eval.mode)
    out_dir = Path(
        cfg.eval.out_dir or default_out_dir("eval", cfg, split, sam=sam, segmenter=segmenter)
    )
    identity = identity_of("evaluate", cfg, split, sam, boxes)
    if segmenter is not None:
        identity = {
            "command": "evaluate",
            "dataset": cfg.data.dataset,
            "data_root": identity["data_root"],
            "split": split,
            **segmenter_identity(segmenter, tta),
        }
    identity.update(
        modes=list(modes),
        eval_compat=cfg.eval.compat,
        save_predictions=cfg.eval.save_predictions,
        overlays=cfg.eval.overlays,
        voc_test_format=voc_test_format,
    )
    # the files each image gets (relative to out_dir): a resumed run redoes missing ones
    per_image = [f"{m}/predictions" for m in modes if cfg.eval.save_predictions]
    per_image += [f"{m}/overlays" for m in modes if cfg.eval.overlays]
    if voc_test_format:
        per_image.append(VOC_TEST_FOLDER.as_posix())

    def files_of(image_id: str, record: Any) -> list[str]:
        return [f"{folder}/{image_id}.png" for folder in per_image]

    with output_errors(out_dir), ctrl_c_resumable("evaluate"):
        run = start_split_run(
            cfg,
            identity=identity,
            outputs=EVAL_OUTPUTS,
            out_dir=out_dir,
            split=split,
            sam=sam,
            boxes=boxes,
            overwrite=overwrite,
            devices=devices,
            num_nodes=num_nodes,
            segmenter=segmenter,
            tta=tta,
            files_of=files_of,
        )
        dataset, source = run.dataset, run.source
        label_folders = (
            {m: out_dir / m / "predictions" for m in modes} if cfg.eval.save_predictions else {}
        )
        overlay_folders = {m: out_dir / m / "overlays" for m in modes} if cfg.eval.overlays else {}
        writer = PredictionWriter(label_folders, overlay_folders, dataset.class_names)
        test_mode = None
        if voc_test_format:
            test_mode = "open" if "open" in modes else modes[0]
            test_writer = PredictionWriter({test_mode: out_dir / VOC_TEST_FOLDER})

        def on_prediction(prediction: Any) -> None:
            writer(prediction)
            if test_mode is not None:
                test_writer(prediction)

        checkpoint = None if source is None else checkpoint_record(cfg.model.adapter, split)
        if source is None:
            described, origin = run.base, f"segmenter {run.predictor.model.architecture}"
            record: dict[str, Any] = {
                "predictor": "segmenter",
                "segmenter": str(segmenter),
                "segmenter_settings": run.predictor.describe(),
            }
        else:
            adapter = f" + adapter {cfg.model.adapter}" if cfg.model.adapter else ""
            described = f"{run.base}{adapter}; boxes: {source.description}"
            origin = f"boxes: {source.origin}"
            record = {
                "predictor": "sam",
                "sam": run.base,
                "adapter": cfg.model.adapter,
                "checkpoint": checkpoint,
                "eval_compat": cfg.eval.compat,
                "box_source": box_source_record(source),
            }
        if run.processes.is_main:
            processes = run.processes.world_size if run.processes.distributed else 0
            console.print(
                f"evaluating {split} ({len(dataset)} images"
                f"{f', {processes} processes' if processes else ''}) with {described}"
            )
            if checkpoint is not None and checkpoint.get("checkpoint") in ("best", "last"):
                console.print(
                    f"checkpoint: {checkpoint['checkpoint']} (epoch {checkpoint['epoch']}, "
                    f"step {checkpoint['step']})"
                )
            if checkpoint is not None and "note" in checkpoint:
                console.print(f"[yellow]note:[/] {checkpoint['note']}")
        segment_split(run, cfg, modes=modes, on_prediction=on_prediction)
        if not run.processes.is_main:
            return None
        results, _, skipped = split_results(run, modes)
        for metrics in results.values():
            metrics["compat"] = cfg.eval.compat  # the label-map assembly that made them
        report = {
            "split": split,
            "modes": list(modes),
            **record,
            "miou_convention": "miou: mean IoU over classes present in the ground truth (WSSS); "
            "miou_macro: torchmetrics MulticlassJaccardIndex macro (classes in GT or prediction)",
            "class_names": list(dataset.class_names),
            "results": results,
            "skipped": skipped,
            "processes": processes_record(run.processes),
            "config": cfg.to_dict(),
        }
        write_report(out_dir / "report.json", report)
        for mode, metrics in results.items():
            if metrics["num_images"] == 0:
                console.print(f"[yellow]{split} has no ground-truth masks: no {mode} metrics[/]")
                continue
            title = f"{split} — {mode} mode — {origin}"
            if source is not None and cfg.eval.compat == "reference":
                title += " — published evaluation's assembly (eval.compat=reference)"
            console.print(metrics_table(metrics, dataset.class_names, title))
            confusion_matrix_figure(
                metrics["confusion_matrix"],
                dataset.class_names,
                out_dir / mode / "confusion_matrix.png",
                title=f"{split}, {mode} mode",
            )
    if skipped:
        console.print(
            f"[yellow]{len(skipped)} image(s) skipped (unreadable files), not scored: "
            f"{out_dir / 'skipped.txt'}[/]"
        )
    console.print(f"report: {out_dir / 'report.json'}")
    return report
