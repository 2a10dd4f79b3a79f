"""Generated segmentation data in the VOC layout, for tests and the demo.

Each class is a shape (ellipse, rectangle, triangle, pentagon, diamond, hexagon, ...)
with its own colour and texture (solid, stripes, checker, dots), so a tiny model can
learn it; objects have sharp boundaries, like VOC's 1-pixel ``255`` borders around
every object (``ignore_border``). Class appearance depends only on the class index,
never on the seed, so two datasets with the same ``num_classes`` share their classes.

Written layout (what :class:`co2sam.data.voc.VocDataset` reads)::

    root/VOC2012/JPEGImages/<id>.jpg (or .png)
                 SegmentationClass/<id>.png     palette PNG, 0 bg, 1..C, 255 borders
                 SegmentationObject/<id>.png    palette PNG, instance ids 1..K, 255 borders
                 ImageSets/Segmentation/{train,val,train_aug,...}.txt
                 classes.txt                    background first
                 labels.json                    {id: [class names present]}

Splits named ``test`` get no masks, like VOC's test set. ``train_aug`` is a copy of
``train`` unless given. Image layouts are drawn from ``seed`` alone: the same seed
with a different ``domain_shift`` gives the same scenes under a shifted appearance
(source/target pairs for the demo).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from co2sam.classes import IGNORE_INDEX
from co2sam.data.image_io import write_label_png

_SHAPES = ("ellipse", "rectangle", "triangle", "pentagon", "diamond", "hexagon")
_TEXTURES = ("solid", "stripes", "checker", "dots")
_HUE_NAMES = (
    (0, "red"), (30, "orange"), (60, "yellow"), (90, "lime"), (120, "green"), (150, "teal"),
    (180, "cyan"), (210, "azure"), (240, "blue"), (270, "violet"), (300, "magenta"),
    (330, "pink"), (360, "red"),
)  # fmt: skip


@dataclass
class DomainShift:
    """Appearance changes applied to whole images (masks unchanged).

    noise: std of additive Gaussian noise, in 0..255 intensity units.
    blur: Gaussian blur sigma in pixels (0: none).
    colour: 0..1 strength of a warm colour cast with reduced saturation.
    background: replace the smooth background by a cluttered high-frequency texture.
    """

    noise: float = 0.0
    blur: float = 0.0
    colour: float = 0.0
    background: bool = False

    def __post_init__(self) -> None:
        if self.noise < 0 or self.blur < 0 or not 0 <= self.colour <= 1:
            raise ValueError(f"invalid domain shift {self}: noise, blur >= 0, colour in [0, 1]")


@dataclass(frozen=True)
class ClassStyle:
    """How objects of one class look."""

    name: str
    shape: str
    texture: str
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]


def class_styles(num_classes: int, textures: bool = True) -> list[ClassStyle]:
    """Styles of classes 1..num_classes (index 0 of the list is class 1)."""
    styles = []
    for index in range(num_classes):
        hue = (index * 360.0 / num_classes + 10.0) % 360.0
        red, green, blue = colorsys.hsv_to_rgb(hue / 360.0, 0.85, 0.95)
        colour = (int(red * 255), int(green * 255), int(blue * 255))
        accent = tuple(int(value * 0.45) for value in colour)
        hue_name = min(_HUE_NAMES, key=lambda item: abs(item[0] - hue))[1]
        shape = _SHAPES[index % len(_SHAPES)]
        name = f"{hue_name} {shape}"
        if any(style.name == name for style in styles):
            name = f"{name} {index + 1}"
        texture = _TEXTURES[index % len(_TEXTURES)] if textures else "solid"
        styles.append(ClassStyle(name, shape, texture, colour, accent))  # type: ignore[arg-type]
    return styles


def _texture(style: ClassStyle, index: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 fill of a class (position-fixed pattern)."""
    rows, cols = np.mgrid[0:height, 0:width]
    period = 6 + 2 * (index % 3)
    if style.texture == "stripes":
        pattern = ((rows + cols * (index % 2)) // (period // 2)) % 2 == 0
    elif style.texture == "checker":
        pattern = ((rows // period) + (cols // period)) % 2 == 0
    elif style.texture == "dots":
        pattern = ((rows % period) - period // 2) ** 2 + ((cols % period) - period // 2) ** 2 > 4
    else:
        pattern = np.ones((height, width), dtype=bool)
    return np.where(pattern[..., None], np.array(style.colour), np.array(style.accent)).astype(
        np.uint8
    )


def _shape_mask(
    shape: str, centre: np.ndarray, radii: np.ndarray, angle: float, size
) -> np.ndarray:
    """(H, W) bool mask of one shape; centre (x, y) and radii (rx, ry) in pixels."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre
    rx, ry = radii
    if shape == "ellipse":
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif shape == "rectangle":
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        corners = {"triangle": 3, "diamond": 4, "pentagon": 5, "hexagon": 6}[shape]
        turns = angle + np.arange(corners) * 2 * np.pi / corners
        points = [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in turns]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 smooth grey ramp in a random direction (the source domain)."""
    height, width = size
    low, high = rng.uniform(70, 110), rng.uniform(140, 180)
    direction = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(direction) * cols / width + np.sin(direction) * rows / height
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    grey = low + (high - low) * ramp
    return np.repeat(grey[..., None], 3, axis=2)


def _clutter(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 blocky multicoloured clutter (the shifted background)."""
    height, width = size
    coarse = rng.uniform(40, 200, size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)[:height, :width]


def _apply_shift(image: np.ndarray, shift: DomainShift, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32)
    if shift.colour > 0:
        grey = out.mean(axis=2, keepdims=True)
        out = out + 0.5 * shift.colour * (grey - out)
        out = out * (1.0 + shift.colour * np.array([0.3, 0.05, -0.3], dtype=np.float32))
    if shift.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), shift.blur)
    if shift.noise > 0:
        out = out + rng.normal(0.0, shift.noise, size=out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _co_occurrence_rules(co_occurrence) -> list[tuple[int, int, float]]:
    if co_occurrence is None:
        return []
    if isinstance(co_occurrence, Mapping):
        return [(int(a), int(b), float(p)) for (a, b), p in co_occurrence.items()]
    return [(int(a), int(b), float(p)) for a, b, p in co_occurrence]


def _split_counts(splits: Mapping[str, float | int], num_images: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    names = list(splits)
    for position, name in enumerate(names):
        value = splits[name]
        if position == len(names) - 1 and isinstance(value, float):
            counts[name] = num_images - sum(counts.values())
        else:
            counts[name] = int(value) if isinstance(value, int) else round(value * num_images)
    if sum(counts.values()) != num_images or min(counts.values()) < 0:
        raise ValueError(f"splits {dict(splits)} do not divide {num_images} images")
    return counts


def make_synthetic_dataset(
    root: str | Path,
    *,
    num_images: int = 50,
    num_classes: int = 3,
    image_size: int | tuple[int, int] = 128,
    co_occurrence: Mapping[tuple[int, int], float] | Sequence[tuple[int, int, float]] | None = None,
    textures: bool = True,
    domain_shift: DomainShift | Mapping[str, float] | None = None,
    seed: int = 0,
    splits: Mapping[str, float | int] | None = None,
    max_objects: int = 3,
    ignore_border: int = 1,
    image_format: str = "jpg",
) -> Path:
    """Write a generated dataset in the VOC layout under ``root``; return its VOC2012 folder.

    co_occurrence: rules ``(a, b, p)`` (or ``{(a, b): p}``): whenever class ``a`` is drawn
        in an image, class ``b`` is added with probability ``p`` (``(2, 1, 0.9)``: class 2
        usually appears with class 1, like boat and water).
    image_size: side (square) or (H, W).
    splits: split name -> fraction of ``num_images`` (float) or count (int), in id order;
        default ``{"train": 0.8, "val": 0.2}``.
    max_objects: objects drawn per image before co-occurrence additions (1..max_objects).
    ignore_border: width in pixels of the 255 band drawn on every object boundary (0: none).
    """
    if isinstance(domain_shift, Mapping):
        domain_shift = DomainShift(**domain_shift)
    shift = domain_shift or DomainShift()
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if num_classes < 1 or num_images < 1:
        raise ValueError("num_classes and num_images must be >= 1")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be jpg or png, got {image_format!r}")
    rules = _co_occurrence_rules(co_occurrence)
    for a, b, _ in rules:
        if not (1 <= a <= num_classes and 1 <= b <= num_classes):
            raise ValueError(f"co-occurrence rule ({a}, {b}) outside classes 1..{num_classes}")
    counts = _split_counts(splits or {"train": 0.8, "val": 0.2}, num_images)

    voc = Path(root) / "VOC2012"
    folders = {
        name: voc / name
        for name in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets")
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation").mkdir(exist_ok=True)
    styles = class_styles(num_classes, textures)
    fills = [_texture(style, i, height, width) for i, style in enumerate(styles)]
    layout_rng = np.random.default_rng([seed, 0])
    shift_rng = np.random.default_rng([seed, 1])

    ids = [f"syn_{index:05d}" for index in range(num_images)]
    split_of = [name for name, count in counts.items() for _ in range(count)]
    labels: dict[str, list[str]] = {}
    for image_id, split in zip(ids, split_of, strict=True):
        classes = list(
            layout_rng.integers(1, num_classes + 1, size=layout_rng.integers(1, max_objects + 1))
        )
        for a, b, p in rules:
            if a in classes and b not in classes and layout_rng.random() < p:
                classes.insert(0, b)  # drawn first: the companion sits behind
        image = _background(layout_rng, (height, width))
        if shift.background:  # its own random stream: the layouts stay those of the seed
            image = _clutter(shift_rng, (height, width))
        class_mask = np.zeros((height, width), np.uint8)
        instance_mask = np.zeros((height, width), np.uint8)
        for instance, class_index in enumerate(classes, start=1):
            style = styles[class_index - 1]
            radii = layout_rng.uniform(0.12, 0.3, size=2) * np.array([width, height])
            centre = layout_rng.uniform(0.2, 0.8, size=2) * np.array([width, height])
            region = _shape_mask(
                style.shape, centre, radii, layout_rng.uniform(0, 2 * np.pi), (height, width)
            )
            image[region] = fills[class_index - 1][region]
            class_mask[region] = class_index
            instance_mask[region] = instance
        if ignore_border > 0:
            border = _boundaries(instance_mask, ignore_border)
            class_mask[border] = IGNORE_INDEX
            instance_mask[border] = IGNORE_INDEX
        image = _apply_shift(image.astype(np.uint8), shift, shift_rng)
        Image.fromarray(image).save(
            folders["JPEGImages"] / f"{image_id}.{image_format}",
            **({"quality": 95} if image_format == "jpg" else {}),
        )
        labels[image_id] = [
            styles[c - 1].name for c in np.unique(class_mask) if 0 < c <= num_classes
        ]
        if split != "test":
            write_label_png(folders["SegmentationClass"] / f"{image_id}.png", class_mask)
            write_label_png(folders["SegmentationObject"] / f"{image_id}.png", instance_mask)

    lists = voc / "ImageSets" / "Segmentation"
    start = 0
    for name, count in counts.items():
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids[start : start + count]))
        start += count
    if "train_aug" not in counts and "train" in counts:
        (lists / "train_aug.txt").write_text((lists / "train.txt").read_text())
    names = ["background"] + [style.name for style in styles]
    (voc / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    (voc / "labels.json").write_text(json.dumps(labels, indent=1))
    return voc


def _boundaries(instance_mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels where the instance id changes, grown to ``width`` pixels."""
    edge = np.zeros(instance_mask.shape, dtype=bool)
    edge[:, 1:] |= instance_mask[:, 1:] != instance_mask[:, :-1]
    edge[1:, :] |= instance_mask[1:, :] != instance_mask[:-1, :]
    if width > 1:
        kernel = np.ones((width, width), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
    return edge
