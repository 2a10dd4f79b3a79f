"""The Segment tab's work, without the page: class names, boxes, label maps, what is shown.

Frames: images are (H, W, 3) uint8 RGB as displayed (EXIF orientation applied, then the
page's rotation); boxes are XYXY pixels of that image; label maps are (H, W) uint8 class
indices into the page's class names (0 = background, i = the i-th class name typed, then
the distilled segmenter's other classes: :meth:`co2sam.app.models.AppModels.class_lists`).
Segmentation here is *open mode* (no image-level labels filter the classes): every box
counts, and the segmenter may output any of its classes.

Boxes come from the drawing panel (each drawn box has a class) or, for an image without
drawn boxes, from the detector the app was started with. An image that fails (unreadable,
too large, no boxes, a model error) gets an :class:`ImageOutcome` with ``error`` set and
is shown with that message; the others are still segmented. An image without boxes is
still segmented by the views that need none (the distilled segmenter); the SAM views show
why they have no result for it (``view_errors``).
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.classes import voc_palette
from co2sam.records import Boxes

RASTER_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")
"""Image formats the Segment tab decodes (Pillow's names): pixels only, nothing that runs."""
MAX_CLASSES = 200
"""Label PNGs hold class indices in one byte (255 is the ignore value)."""
THUMBNAIL = 256
"""Longest side of the result thumbnails."""


class SegmentError(ValueError):
    """Something the user can fix on the page (the message says what)."""


class NoBoxes(SegmentError):
    """An image has no box prompts (the SAM views cannot segment it; the segmenter can)."""


@dataclass
class InputImage:
    """One image to segment: its uploaded file and, if any, the boxes drawn on it.

    drawn: boxes as the drawing panel gives them, ``{label, xmin, ymin, xmax, ymax}`` in
        pixels of the displayed image; None when nothing was drawn on this image.
    orientation: quarter turns clockwise the page applied to the image before drawing.
    """

    name: str
    path: str
    drawn: list[dict[str, Any]] | None = None
    orientation: int = 0


@dataclass
class ImageOutcome:
    """What segmenting one image gave: per-view label maps, or the error."""

    name: str
    path: str
    image: np.ndarray | None = None
    boxes: Boxes = field(default_factory=Boxes)
    box_origin: str = ""
    """``drawn`` or ``detector``."""
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    """Why the image was not segmented at all."""
    view_errors: dict[str, str] = field(default_factory=dict)
    """View -> why it has no result for this image (no boxes for SAM)."""
    box_free: tuple[str, ...] = ()
    """The views that used no boxes (their results are shown without them)."""

    def problem(self, view: str) -> str | None:
        """Why ``view`` has no result for this image, or None."""
        return self.error or self.view_errors.get(view)

    def boxes_of(self, view: str) -> Boxes:
        """The boxes ``view`` segmented with (none for a view that takes no boxes)."""
        return Boxes() if view in self.box_free else self.boxes


def parse_class_names(text: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    """``"cat, dog"`` (commas or new lines) -> ``("background", "cat", "dog")``.

    allow_empty: no names give ``("background",)`` (a view that needs no class names,
    the distilled segmenter, is loaded) instead of an error.
    """
    names = [name.strip() for name in re.split(r"[,\n]", text or "") if name.strip()]
    if not names and not allow_empty:
        raise SegmentError('type at least one class name, for example "cat, dog"')
    if "background" in (name.lower() for name in names):
        raise SegmentError("leave out 'background': it is always class 0")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SegmentError(f"class names must differ; typed twice: {', '.join(repeated)}")
    if len(names) > MAX_CLASSES:
        raise SegmentError(f"at most {MAX_CLASSES} class names, got {len(names)}")
    return ("background", *names)


def class_colours(class_names: Sequence[str]) -> dict[str, str]:
    """Class name -> ``#rrggbb``, the VOC palette colour of its index (as in label PNGs)."""
    palette = voc_palette()
    return {
        name: "#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[index]))
        for index, name in enumerate(class_names)
    }


def drawn_boxes(
    drawn: Sequence[dict[str, Any]], class_names: Sequence[str], size: tuple[int, int]
) -> Boxes:
    """Boxes drawn on the page as :class:`Boxes` (score 1), clipped to the (H, W) image.

    Raises :class:`SegmentError` for a box whose class is not among ``class_names`` or that
    is empty once clipped.
    """
    height, width = size
    known = list(class_names)
    xyxy, classes = [], []
    for number, box in enumerate(drawn, start=1):
        label = str(box.get("label") or "").strip()
        if label not in known[1:]:
            raise SegmentError(
                f"box {number} has class {label!r}, which is not one of the class names "
                f"({', '.join(known[1:])}); give the box one of them, or add it to the names"
            )
        x0, x1 = sorted(float(box[key]) for key in ("xmin", "xmax"))
        y0, y1 = sorted(float(box[key]) for key in ("ymin", "ymax"))
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise SegmentError(f"box {number} ({label}) lies outside the image or is empty")
        xyxy.append([x0, y0, x1, y1])
        classes.append(known.index(label))
    return Boxes(np.asarray(xyxy, np.float32), np.asarray(classes), np.ones(len(classes)))


def load_upload(path: str | Path, max_pixels: int, orientation: int = 0) -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8, refused when larger than ``max_pixels``.

    Only the raster formats of :data:`RASTER_FORMATS` are read (no SVG or EPS: they are
    programs, not pixels); the size is read from the header before any pixel is decoded.
    """
    from PIL import Image

    from co2sam.data.image_io import DatasetError, read_image

    path = Path(path)
    if path.suffix.lower() == ".svg":
        raise SegmentError(f"{path.name}: SVG is not supported; upload a PNG, JPEG or WebP")
    try:
        with Image.open(path) as header:
            width, height = header.size
            kind = header.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SegmentError(f"{path.name} is not an image Pillow can read ({error})") from error
    if kind not in RASTER_FORMATS:
        raise SegmentError(
            f"{path.name} is in the {kind} format; upload a PNG, JPEG, WebP, BMP, TIFF or GIF"
        )
    if width * height > max_pixels:
        raise SegmentError(
            f"{path.name} is {width} x {height} = {width * height / 1e6:.1f} megapixels; the "
            f"limit is {max_pixels / 1e6:.0f} (start the app with a larger --max-pixels)"
        )
    try:
        image = read_image(path)
    except DatasetError as error:
        raise SegmentError(str(error)) from error
    if orientation % 4:
        image = np.ascontiguousarray(np.rot90(image, k=-(orientation % 4)))
    return image


def unique_name(path: str | Path, taken: set[str]) -> str:
    """A file-name-safe name from the upload's stem, not yet in ``taken`` (added to it)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._") or "image"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}-{number}", number + 1
    taken.add(name)
    return name


def segment_images(
    models: Any,
    inputs: Sequence[InputImage],
    class_names: Sequence[str],
    *,
    max_pixels: int,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[ImageOutcome]:
    """Segment every input with every view of ``models`` (:class:`co2sam.app.models.AppModels`).

    class_names: the typed names, background first (boxes take these classes); the label
        maps index ``models.class_lists(class_names)[0]``.
    progress: called with (done, total, name) before each image.
    """
    names, _ = models.class_lists(class_names)
    box_free = tuple(models.box_free_views())
    if len(names) > MAX_CLASSES + 1:
        raise SegmentError(
            f"at most {MAX_CLASSES} classes with the segmenter's, got {len(names) - 1}"
        )
    outcomes = []
    for number, item in enumerate(inputs):
        if progress is not None:
            progress(number, len(inputs), item.name)
        outcome = ImageOutcome(item.name, item.path, box_free=box_free)
        try:
            outcome.image = load_upload(item.path, max_pixels, item.orientation)
            views = list(models.views)
            try:
                outcome.boxes, outcome.box_origin = _boxes(models, item, outcome.image, class_names)
            except NoBoxes as missing:
                if not box_free:
                    raise
                views = list(box_free)
                reason = f"{missing}; the segmenter needs none"
                outcome.view_errors = {view: reason for view in models.views if view not in views}
            outcome.label_maps = models.label_maps(outcome.image, outcome.boxes, names, views)
        except SegmentError as error:
            outcome.error = str(error)
        except Exception as error:  # one image's failure must not end the page
            traceback.print_exc(file=sys.stderr)
            outcome.error = f"{type(error).__name__}: {error}"
        outcomes.append(outcome)
    if progress is not None:
        progress(len(inputs), len(inputs), "")
    return outcomes


def _boxes(
    models: Any, item: InputImage, image: np.ndarray, class_names: Sequence[str]
) -> tuple[Boxes, str]:
    """The image's boxes and their origin (``drawn`` or ``detector``); :class:`NoBoxes`
    when there are none."""
    if item.drawn:
        return drawn_boxes(item.drawn, class_names, image.shape[:2]), "drawn"
    if models.detect is None:
        raise NoBoxes(
            "no boxes: draw at least one box on the image (the app was started without --detector)"
        )
    if len(class_names) < 2:
        raise NoBoxes("no boxes: type the class names the detector should look for")
    boxes = models.detect(image, class_names)
    if not len(boxes):
        raise NoBoxes("the detector found none of the classes; draw boxes on the image")
    return boxes, "detector"


def annotated_view(
    outcome: ImageOutcome,
    view: str,
    class_names: Sequence[str],
    shown: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """The image with the boxes ``view`` used drawn, and one (H, W) float mask per class
    (legend order).

    shown: the classes of the view's legend (default: every class but background), each
    with a mask (empty when absent) so the legend lists them all.
    """
    from co2sam.visualize import overlay

    label = _label(outcome, view)
    base = overlay(outcome.image, None, boxes=outcome.boxes_of(view), class_names=class_names)
    masks = [
        ((label == class_names.index(name)).astype(np.float32), name)
        for name in _shown(class_names, shown)
    ]
    return base, masks


def area_rows(
    outcome: ImageOutcome,
    view: str,
    class_names: Sequence[str],
    shown: Sequence[str] | None = None,
) -> list[list[Any]]:
    """``[class, pixels, percent of the image]`` for background and every class of
    ``shown`` (default: all)."""
    from co2sam.predict import class_areas

    areas = class_areas(_label(outcome, view), class_names)
    return [
        [
            name,
            areas.get(name, {}).get("pixels", 0),
            round(100 * areas.get(name, {}).get("fraction", 0.0), 2),
        ]
        for name in (class_names[0], *_shown(class_names, shown))
    ]


def thumbnail(outcome: ImageOutcome, view: str, size: int = THUMBNAIL) -> np.ndarray:
    """A small overlay of the result (or of the image alone, or grey, after an error)."""
    from PIL import Image

    from co2sam.visualize import overlay

    if outcome.image is None:
        return np.full((size // 2, size, 3), 200, np.uint8)
    picture = outcome.image
    if outcome.problem(view) is None:
        picture = overlay(outcome.image, _label(outcome, view), boxes=outcome.boxes_of(view))
    image = Image.fromarray(picture)
    image.thumbnail((size, size))
    return np.asarray(image)


def caption(
    outcome: ImageOutcome,
    view: str,
    class_names: Sequence[str],
    shown: Sequence[str] | None = None,
) -> str:
    """``name: cat 12.5%, dog 3.1%`` or ``name: error: ...`` (shown under the thumbnail)."""
    problem = outcome.problem(view)
    if problem is not None:
        return f"{outcome.name}: error: {problem}"
    rows = area_rows(outcome, view, class_names, shown)[1:]
    found = ", ".join(f"{name} {percent:.1f}%" for name, _, percent in rows if percent > 0)
    return f"{outcome.name}: {found or 'background only'}"


def write_downloads(
    outcomes: Sequence[ImageOutcome],
    view: str,
    class_names: Sequence[str],
    folder: str | Path,
    *,
    models_line: str = "",
) -> list[Path]:
    """``<name>.png`` (VOC-palette label map) and ``<name>.json`` per segmented image.

    The JSON holds the model view, the mode (open), the class names (the PNG's values
    index them), per-class pixels and fractions, and the boxes the view used with their
    class, score and origin (none for the segmenter). Images the view has no result for
    are left out.
    """
    from co2sam.predict import class_areas
    from co2sam.visualize import save_label_png

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for outcome in outcomes:
        if outcome.problem(view) is not None:
            continue
        label = _label(outcome, view)
        boxes = outcome.boxes_of(view)
        written.append(save_label_png(folder / f"{outcome.name}.png", label))
        details = {
            "image": outcome.name,
            "model": view,
            "models": models_line,
            "mode": "open",
            "size": {"height": int(label.shape[0]), "width": int(label.shape[1])},
            "class_names": list(class_names),
            "areas": class_areas(label, class_names),
            "boxes": [
                {
                    "xyxy": [round(float(value), 2) for value in box],
                    "class": class_names[int(cls)],
                    "class_index": int(cls),
                    "score": round(float(score), 5),
                    "origin": outcome.box_origin,
                }
                for box, cls, score in zip(boxes.xyxy, boxes.classes, boxes.scores, strict=True)
            ],
        }
        path = folder / f"{outcome.name}.json"
        path.write_text(json.dumps(details, indent=2) + "\n")
        written.append(path)
    return written


def boxes_for_drawing(outcome: ImageOutcome, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """An outcome's boxes in the drawing panel's format (to edit and segment again)."""
    colours = class_colours(class_names)
    return [
        {
            "label": class_names[int(cls)],
            "color": tuple(int(colours[class_names[int(cls)]][i : i + 2], 16) for i in (1, 3, 5)),
            "xmin": int(round(float(x0))),
            "ymin": int(round(float(y0))),
            "xmax": int(round(float(x1))),
            "ymax": int(round(float(y1))),
        }
        for (x0, y0, x1, y1), cls in zip(outcome.boxes.xyxy, outcome.boxes.classes, strict=True)
    ]


def _shown(class_names: Sequence[str], shown: Sequence[str] | None) -> list[str]:
    return list(class_names[1:] if shown is None else shown)


def _label(outcome: ImageOutcome, view: str) -> np.ndarray:
    problem = outcome.problem(view)
    if problem is not None or outcome.image is None:
        raise SegmentError(f"{outcome.name} was not segmented: {problem}")
    if view not in outcome.label_maps:
        raise SegmentError(f"no {view!r} result for {outcome.name}; press Segment again")
    return outcome.label_maps[view]
