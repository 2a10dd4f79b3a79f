"""The demo's report: report.json, the printed table, overlays and the before/after figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODES = ("label-guided", "open")


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


def build_report(
    *,
    settings: dict[str, Any],
    config: dict[str, Any],
    class_names: list[str],
    before: dict[str, Any],
    after: dict[str, Any],
    ablations: dict[str, Any],
    adapter: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The JSON report: ``before`` / ``after`` (and ``ablations``) per domain and mode."""
    before_summary = summarize(before, class_names)
    after_summary = summarize(after, class_names)
    gain = {
        mode: _difference(
            after_summary["target"][mode]["miou"], before_summary["target"][mode]["miou"]
        )
        for mode in MODES
    }
    return {
        "description": (
            "co2sam demo: a small SAM pretrained on a clean source domain, adapted with "
            "Co2SAM (LoRA, image-level labels, simulated-detector boxes) to a shifted "
            "target domain. mIoU over the classes present in the ground truth."
        ),
        "settings": settings,
        "config": config,
        "class_names": class_names,
        "before": before_summary,
        "after": after_summary,
        "target_miou_gain": gain,
        "ablations": {name: summarize(value, class_names) for name, value in ablations.items()},
        "adapter": adapter,
        "timings_s": timings,
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


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [("plain SAM (before)", report["before"]), ("Co2SAM (after)", report["after"])]
    return rows + [(f"Co2SAM {name}", value) for name, value in report["ablations"].items()]


def results_table(report: dict[str, Any]) -> Any:
    """Rich table: one row per model; target mIoU (both modes), source mIoU, gain."""
    from rich.table import Table

    table = Table(title="co2sam demo: mIoU (%)", title_justify="left")
    table.add_column("model")
    table.add_column("target\nlabel-guided", justify="right")
    table.add_column("target\nopen", justify="right")
    table.add_column("source\nlabel-guided", justify="right")
    before = report["before"]["target"]["label-guided"]["miou"]
    table.add_column("gain on target\nlabel-guided", justify="right")
    for index, (name, summary) in enumerate(_rows(report)):
        if index == 2:
            table.add_section()
        guided = summary["target"]["label-guided"]["miou"]
        gain = _difference(guided, before)
        table.add_row(
            name,
            _pct(guided),
            _pct(summary["target"]["open"]["miou"]),
            _pct(summary["source"]["label-guided"]["miou"]),
            "" if index == 0 or gain is None else f"{100 * gain:+.1f}",
        )
    return table


def class_table(report: dict[str, Any]) -> Any:
    """Rich table: target per-class IoU (label-guided), one row per model."""
    from rich.table import Table

    names = report["class_names"]
    table = Table(title="target per-class IoU (%), label-guided", title_justify="left")
    table.add_column("model")
    for name in names:
        table.add_column(name.replace(" ", "\n"), justify="right")
    for name, summary in _rows(report):
        per_class = summary["target"]["label-guided"]["iou_per_class"]
        table.add_row(name, *(_pct(per_class.get(c)) for c in names))
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
                picture = overlay(sample.image, label_map, boxes=boxes, class_names=class_names)
                path = images_dir / f"{image_id}_{stage}_{mode}.png"
                overlays.append(str(save_image(path, _enlarge(picture))))
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
    )
    return {"overlays": overlays, "before_after": str(figure)}


def _enlarge(image: np.ndarray, factor: int = 3) -> np.ndarray:
    """Nearest-neighbour upscaling so that small demo images stay legible."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
