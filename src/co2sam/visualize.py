"""Pictures: palette label PNGs, colour overlays, the confusion matrix, comparison grids.

Label maps are (H, W) integer class indices (0 = background, 255 = ignore) and are
written as PIL mode ``P`` PNGs with the VOC palette, the format of VOC's
``SegmentationClass`` and of its test server. Images are (H, W, 3) uint8 RGB.
Figures use matplotlib's object API (no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from co2sam.classes import BACKGROUND, IGNORE_INDEX, voc_palette
from co2sam.records import Boxes


def _as_label_array(label: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"a label map must be (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {label.min()}..{label.max()}")
    return label.astype(np.uint8)


def save_label_png(path: str | Path, label: np.ndarray | torch.Tensor) -> Path:
    """Write an (H, W) label map as a VOC-palette PNG (mode P); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_as_label_array(label), mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")  # then rename: never a half-written PNG
    tmp.replace(path)
    return path


def load_label_png(path: str | Path) -> np.ndarray:
    """Read a palette label PNG back as (H, W) uint8 class indices."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path} is a {image.mode} image, expected a palette (P) label PNG")
        return np.array(image)


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def colorize(label: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 RGB with the VOC palette."""
    return voc_palette()[_as_label_array(label)]


def overlay(
    image: np.ndarray,
    label: np.ndarray | torch.Tensor | None = None,
    *,
    boxes: Boxes | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """The image with object pixels tinted by their palette colour and boxes drawn.

    image: (H, W, 3) uint8 RGB. label: (H, W) class indices (background and ignore
    pixels are left untinted). boxes: in the image's pixel frame, outlined in their
    class colour and captioned with the class name (and confidence).
    Returns (H, W, 3) uint8.
    """
    result = np.asarray(image, dtype=np.uint8).copy()
    if label is not None:
        label_array = _as_label_array(label)
        if label_array.shape != result.shape[:2]:
            raise ValueError(
                f"label {label_array.shape} and image {result.shape[:2]} differ in size"
            )
        tinted = (label_array != BACKGROUND) & (label_array != IGNORE_INDEX)
        colours = voc_palette()[label_array].astype(np.float32)
        blended = (1 - alpha) * result.astype(np.float32) + alpha * colours
        result[tinted] = blended[tinted].round().astype(np.uint8)
    if boxes is not None and len(boxes):
        canvas = Image.fromarray(result)
        draw = ImageDraw.Draw(canvas)
        palette = voc_palette()
        for (x0, y0, x1, y1), cls, score in zip(
            boxes.xyxy, boxes.classes, boxes.scores, strict=True
        ):
            colour = tuple(int(v) for v in palette[int(cls)])
            draw.rectangle((float(x0), float(y0), float(x1), float(y1)), outline=colour, width=2)
            name = class_names[int(cls)] if class_names is not None else str(int(cls))
            caption = f"{name} {float(score):.2f}"
            origin = _caption_origin(draw, caption, (float(x0), float(y0)), canvas.size)
            draw.rectangle(draw.textbbox(origin, caption), fill=colour)
            draw.text(origin, caption, fill=(255, 255, 255))
        result = np.array(canvas)
    return result


def _caption_origin(
    draw: ImageDraw.ImageDraw, caption: str, corner: tuple[float, float], size: tuple[int, int]
) -> tuple[float, float]:
    """Where a box caption starts: above the box's top-left corner when there is room,
    else inside it, and shifted so that the whole caption stays inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), caption)
    width, height = size
    x = min(max(corner[0], -left), max(width - right, -left))
    y = corner[1] - bottom if corner[1] - bottom >= -top else corner[1]
    y = min(max(y, -top), max(height - bottom, -top))
    return x, y


def confusion_matrix_figure(
    matrix: np.ndarray | torch.Tensor | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "confusion matrix",
) -> Path:
    """Save a row-normalised confusion matrix (rows ground truth, columns prediction) as PNG.

    Each row shows where the pixels of one ground-truth class went (rows without
    pixels stay blank); the diagonal is the recall.
    """
    from matplotlib.figure import Figure

    counts = np.asarray(
        matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, np.float64
    )
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    size = max(4.0, 0.35 * len(class_names) + 2)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    shown = axes.imshow(normalised, vmin=0, vmax=1, cmap="viridis")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    if len(class_names) <= 25:  # small enough to print the fractions in the cells
        for (row, column), value in np.ndenumerate(normalised):
            if not np.isnan(value):
                colour = "black" if value > 0.6 else "white"
                axes.text(
                    column, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour
                )
    axes.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
    axes.set_yticks(ticks, labels=list(class_names), fontsize=7)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    return _save_figure(figure, path, dpi=120)


def comparison_grid(
    rows: Sequence[Sequence[np.ndarray | torch.Tensor | None]],
    path: str | Path,
    *,
    column_titles: Sequence[str] = ("image", "before", "after", "ground truth"),
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    legend: Sequence[str] | None = None,
) -> Path:
    """Save a grid figure, one row per image: image | label map | label map | ...

    Each row's first entry is an (H, W, 3) uint8 image; the others are (H, W) label
    maps drawn as overlays on that image, or None (an empty cell, e.g. no ground truth).
    legend: class names, background first: a colour key of classes 1..C under the grid
    (background is left untinted).
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    num_columns = len(column_titles)
    figure = Figure(figsize=(2.6 * num_columns, 2.6 * len(rows)))
    grid = figure.subplots(len(rows), num_columns, squeeze=False)
    for row_index, row in enumerate(rows):
        if len(row) != num_columns:
            raise ValueError(f"row {row_index} has {len(row)} entries, expected {num_columns}")
        image = np.asarray(row[0], dtype=np.uint8)
        for column, entry in enumerate(row):
            axes = grid[row_index][column]
            axes.set_axis_off()
            if entry is None:
                continue
            axes.imshow(image if column == 0 else overlay(image, entry, alpha=0.6))
            if row_index == 0:
                axes.set_title(column_titles[column], fontsize=9)
        if row_titles is not None:
            grid[row_index][0].text(
                -0.05,
                0.5,
                row_titles[row_index],
                transform=grid[row_index][0].transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=8,
            )
    if title:
        figure.suptitle(title)
    bottom = 0.0
    if legend is not None:
        from matplotlib.patches import Patch

        palette = voc_palette()
        handles = [
            Patch(facecolor=palette[index] / 255.0, edgecolor="black", label=name)
            for index, name in enumerate(legend)
            if index != BACKGROUND
        ]
        handles.append(Patch(facecolor="none", edgecolor="black", label="background (untinted)"))
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 3),
            fontsize=8,
            frameon=False,
        )
        bottom = (0.35 + 0.25 * ((len(handles) + 2) // 3)) / figure.get_figheight()
    return _save_figure(figure, path, dpi=100, rect=(0.0, bottom, 1.0, 1.0))


def _save_figure(
    figure: Any, path: str | Path, *, dpi: int, rect: tuple[float, ...] | None = None
) -> Path:
    """Lay out (inside ``rect``, figure fractions) and write a figure as PNG."""
    figure.tight_layout(rect=rect)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
