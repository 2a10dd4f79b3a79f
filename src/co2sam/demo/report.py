"""The demo's report: report.json, the printed tables, overlays and the before/after figure.

The results table is built from :func:`table_rows`, one :class:`TableRow` per model and
box setting, in sections; to show another model (e.g. a distilled segmenter), add its
results to the report and append a row there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("label-guided", "open")
OVERLAY_SCALE = 3
"""Demo images are 128 px: overlays are drawn at 3x so that box captions stay legible."""


def summarize(results: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """``{"target"|"source": {mode: metrics}}`` -> mIoU and per-class IoU per domain and mode."""
    summary: dict[str, Any] = {}
    for domain, by_mode in results.items():
        summary[domain] = {}
        for mode, metrics in by_mode.items():
            summary[domain][mode] = {
                "miou": metrics["miou"],
                "iou_per_class": dict(zip(class_names, metrics["iou_per_class"], strict=True)),
                "pixel_accuracy": metrics["pixel_accuracy"],
                "num_images": metrics["num_images"],
            }
    return summary


def _gain(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    return {
        mode: _difference(after["target"][mode]["miou"], before["target"][mode]["miou"])
        for mode in MODES
    }


def build_report(
    *,
    settings: dict[str, Any],
    config: dict[str, Any],
    class_names: list[str],
    domains: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    ablations: dict[str, Any],
    timings: dict[str, float],
    machine: dict[str, Any],
    second_stage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report.

    runs: per simulated-detector setting (the first is the main one), ``supervision``,
    ``box_quality``, ``before`` / ``after`` metrics per domain and mode, ``adapter``.
    The main run is also reported at the top level (``before``, ``after``,
    ``target_miou_gain``, ``supervision``); every run is under ``detectors``.
    second_stage: what :func:`co2sam.demo.second_stage.run_second_stage` returned for the
    main run; its ``results`` are summarised like the other rows.
    """
    detectors = {}
    for name, run in runs.items():
        before, after = summarize(run["before"], class_names), summarize(run["after"], class_names)
        detectors[name] = {
            "supervision": run["supervision"],
            "box_quality": run["box_quality"],
            "before": before,
            "after": after,
            "target_miou_gain": _gain(before, after),
            "adapter": run["adapter"],
        }
    main = next(iter(detectors))
    return {
        "description": (
            "co2sam demo: a small SAM pretrained on a clean source domain, adapted with "
            "Co2SAM (LoRA) to a shifted target domain from image-level labels and box "
            "prompts of a simulated detector built on the ground-truth instance masks. "
            "mIoU over the classes present in the ground truth."
        ),
        "supervision": detectors[main]["supervision"],
        "settings": settings,
        "config": config,
        "domains": domains,
        "class_names": class_names,
        "main_detector": main,
        "before": detectors[main]["before"],
        "after": detectors[main]["after"],
        "target_miou_gain": detectors[main]["target_miou_gain"],
        "detectors": detectors,
        "ablations": {name: summarize(value, class_names) for name, value in ablations.items()},
        "adapter": detectors[main]["adapter"],
        "checkpoint": (
            "last: the adapter after the final step (train.val_every = 0: no validation, "
            "so no checkpoint was selected on any split)"
        ),
        "timings_s": timings,
        "machine": machine,
        "second_stage": None
        if second_stage is None
        else {**second_stage, "results": summarize(second_stage["results"], class_names)},
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def one_line(name: str, results: dict[str, Any]) -> str:
    """``name: target mIoU label-guided X, open Y; source Z`` for the progress log."""
    target, source = results["target"], results["source"]
    return (
        f"{name}: target mIoU label-guided {_pct(target['label-guided']['miou'])}, "
        f"open {_pct(target['open']['miou'])}; source label-guided "
        f"{_pct(source['label-guided']['miou'])}"
    )


@dataclass
class TableRow:
    """One row of the results table: a model's summary and what its gain is measured from."""

    model: str
    boxes: str
    summary: dict[str, Any]
    baseline: dict[str, Any] | None = None
    """The summary the target gain is computed against (None: no gain shown)."""


def table_rows(report: dict[str, Any]) -> list[list[TableRow]]:
    """The results table's rows, in sections: one section per detector setting (the main
    one with the segmenter distilled from its Co2SAM, when there is one), then the
    ablations (trained with the main detector's boxes)."""
    sections = []
    main = report["main_detector"]
    second_stage = report.get("second_stage")
    for name, run in report["detectors"].items():
        section = [
            TableRow("plain SAM (before)", name, run["before"]),
            TableRow("Co2SAM (after)", name, run["after"], run["before"]),
        ]
        if name == main and second_stage is not None:
            section.append(
                TableRow(second_stage["row"], "none", second_stage["results"], run["before"])
            )
        sections.append(section)
    baseline = report["detectors"][main]["before"]
    ablations = [
        TableRow(f"Co2SAM {name}", main, value, baseline)
        for name, value in report["ablations"].items()
    ]
    return sections + ([ablations] if ablations else [])


def speed_line(second_stage: dict[str, Any]) -> str:
    """Inference time per image of Co2SAM and the distilled segmenter, measured together."""
    speed = second_stage["speed"]
    seconds = speed["seconds_per_image"]
    return (
        f"inference per image ({speed['images']} target images, {speed['threads']} "
        f"thread{'' if speed['threads'] == 1 else 's'}, "
        f"side by side): Co2SAM {1000 * seconds['co2sam']:.1f} ms (SAM with cached boxes), "
        f"distilled segmenter {1000 * seconds['segmenter']:.1f} ms "
        f"({speed['segmenter_speedup']}x faster)"
    )


def results_table(report: dict[str, Any]) -> Any:
    """Rich table: one row per model and box setting; target mIoU (both modes), source
    mIoU, gain over plain SAM with the same boxes."""
    from rich.table import Table

    table = Table(title="co2sam demo: mIoU (%)", title_justify="left")
    table.add_column("model")
    table.add_column("boxes", no_wrap=True)
    table.add_column("target\nlabel-guided", justify="right")
    table.add_column("target\nopen", justify="right")
    table.add_column("source\nlabel-guided", justify="right")
    table.add_column("gain on target\nlabel-guided", justify="right")
    for index, section in enumerate(table_rows(report)):
        if index:
            table.add_section()
        for row in section:
            guided = row.summary["target"]["label-guided"]["miou"]
            gain = None
            if row.baseline is not None:
                gain = _difference(guided, row.baseline["target"]["label-guided"]["miou"])
            table.add_row(
                row.model,
                row.boxes,
                _pct(guided),
                _pct(row.summary["target"]["open"]["miou"]),
                _pct(row.summary["source"]["label-guided"]["miou"]),
                "" if gain is None else f"{100 * gain:+.1f}",
            )
    return table


def class_table(report: dict[str, Any]) -> Any:
    """Rich table: target per-class IoU (label-guided), one row per model."""
    from rich.table import Table

    names = report["class_names"]
    rows = [row for section in table_rows(report) for row in section]
    table = Table(title="target per-class IoU (%), label-guided", title_justify="left")
    labels = [f"{row.model}, {row.boxes} boxes" for row in rows]
    table.add_column(
        "model", min_width=max(len(word) for label in labels for word in label.split())
    )
    for name in names:  # no_wrap: the model column wraps instead of names being cut
        table.add_column(name.replace(" ", "\n"), justify="right", no_wrap=True)
    for label, row in zip(labels, rows, strict=True):
        per_class = row.summary["target"]["label-guided"]["iou_per_class"]
        table.add_row(label, *(_pct(per_class.get(c)) for c in names))
    return table


def write_figures(
    out_dir: Path,
    data: Any,
    before_maps: dict[tuple[str, str], Any],
    after_maps: dict[tuple[str, str], Any],
    class_names: list[str],
) -> dict[str, Any]:
    """Overlays (images/<id>_<before|after>_<mode>.png) and before_after.png; returns paths."""
    from co2sam.visualize import comparison_grid, overlay, save_image

    images_dir = out_dir / "images"
    overlays = []
    rows, titles = [], []
    ids = sorted({image_id for image_id, _ in before_maps}, key=data.target_val.ids.index)
    for image_id in ids:
        sample = data.target_val[data.target_val.ids.index(image_id)]
        for stage, maps in (("before", before_maps), ("after", after_maps)):
            for mode in MODES:
                label_map, boxes = maps[(image_id, mode)]
                picture = overlay(
                    _enlarge(sample.image),
                    _enlarge(label_map),
                    boxes=_scaled(boxes, OVERLAY_SCALE),
                    class_names=class_names,
                )
                path = images_dir / f"{image_id}_{stage}_{mode}.png"
                overlays.append(str(save_image(path, picture)))
        rows.append(
            [
                sample.image,
                before_maps[(image_id, "label-guided")][0],
                after_maps[(image_id, "label-guided")][0],
                sample.mask,
            ]
        )
        titles.append(image_id)
    figure = comparison_grid(
        rows,
        out_dir / "before_after.png",
        column_titles=("target image", "before (plain SAM)", "after (Co2SAM)", "ground truth"),
        row_titles=titles,
        title="label-guided predictions on the target domain",
        legend=class_names,
    )
    return {"overlays": overlays, "before_after": str(figure)}


def _enlarge(image: np.ndarray, factor: int = OVERLAY_SCALE) -> np.ndarray:
    """Nearest-neighbour upscaling of an image or label map (first two axes)."""
    return np.repeat(np.repeat(np.asarray(image), factor, axis=0), factor, axis=1)


def _scaled(boxes: Any, factor: int) -> Any:
    from co2sam.records import Boxes

    return Boxes(boxes.xyxy * factor, boxes.classes, boxes.scores)
