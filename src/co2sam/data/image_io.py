"""Reading images and label PNGs the way every loader does, and saying what was changed.

Images: always returned as (H, W, 3) uint8 RGB in the orientation a viewer shows.
- EXIF orientation is applied (``ImageOps.exif_transpose``), so the pixels match what
  annotators saw; VOC / COCO masks were drawn on the displayed image.
- Grayscale (L, LA, 1), palette (P), RGBA / LA (alpha dropped: composited on nothing,
  the colour channels are kept), CMYK and YCbCr images are converted to RGB.
- 16-bit / 32-bit single-channel images (PIL modes I;16, I, F) are rescaled to 0..255.
Every such conversion is listed by :func:`inspect_image` (``co2sam check-data``).

Label PNGs: read as *class indices*. A palette PNG (mode ``P``) gives its indices (not
its colours) through ``np.array``; ``L`` PNGs are indices already. An RGB/RGBA colour
mask is refused: its colours cannot be mapped to classes without the palette.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from co2sam.classes import voc_palette


class DatasetError(ValueError):
    """A dataset file or layout a user can fix (the message names the file and the fix)."""


class MaskError(DatasetError):
    """A ground-truth mask cannot be used (missing, unreadable, colour, wrong size); the
    image itself may be fine. ``path``: the mask file."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


@dataclass
class ImageReport:
    """What reading one image found: the PIL mode, size and the conversions applied."""

    mode: str
    size: tuple[int, int]
    """(H, W) after EXIF transposition."""
    conversions: list[tuple[str, str]] = field(default_factory=list)
    """(what was found, what the loader did), e.g. ("CMYK image", "converted to RGB")."""


_EXIF_ORIENTATION = 0x0112


DATASET_FIX = "re-download it or remove it from the split list"
"""How to fix an unreadable image of a dataset split (the default of :func:`read_image`)."""


def _open(path: Path, fix: str = DATASET_FIX) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"image not found: {path} (check data.root and the split list)")
    return _loaded(
        path,
        lambda error: DatasetError(
            f"cannot read {path}: {error} (the file is truncated or not an image; {fix})"
        ),
    )


def _loaded(path: Path, unreadable: Callable[[Exception], DatasetError]) -> Image.Image:
    """``path`` opened and decoded by Pillow; a file it cannot read raises
    ``unreadable(error)``."""
    image = None
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        if image is not None:
            image.close()  # a failed load() leaves the file open
        raise unreadable(error) from error
    return image


_MODE_NAMES = {
    "L": "grayscale (L) image",
    "1": "1-bit image",
    "LA": "grayscale+alpha (LA) image",
    "P": "palette (P) image",
    "PA": "palette+alpha (PA) image",
    "RGBA": "RGBA image",
    "CMYK": "CMYK image",
    "YCbCr": "YCbCr image",
}


def _to_rgb(image: Image.Image, conversions: list[tuple[str, str]]) -> Image.Image:
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation not in (0, 1):
        image = ImageOps.exif_transpose(image)
        conversions.append(
            (f"EXIF orientation {orientation}", "rotated/flipped to the displayed orientation")
        )
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        if mode == "F":
            top = max(float(values.max()), 1.0)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        conversions.append((f"16/32-bit ({mode}) image", "rescaled to 8-bit, converted to RGB"))
        return Image.fromarray(gray).convert("RGB")
    handling = "alpha dropped, converted to RGB" if "A" in mode[1:] else "converted to RGB"
    conversions.append((_MODE_NAMES.get(mode, f"{mode} image"), handling))
    return image.convert("RGB")


def read_image(path: str | Path, *, fix: str = DATASET_FIX) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises :class:`DatasetError` naming the file when it is missing or unreadable; its
    message ends with ``fix`` (what the user should do: a dataset's file by default).
    """
    return read_image_with_report(path, fix=fix)[0]


def read_image_with_report(
    path: str | Path, *, fix: str = DATASET_FIX
) -> tuple[np.ndarray, ImageReport]:
    """:func:`read_image` plus what was converted on the way (for ``check-data``)."""
    image = _open(Path(path), fix)
    conversions: list[tuple[str, str]] = []
    mode = image.mode
    rgb = _to_rgb(image, conversions)
    array = np.array(rgb, dtype=np.uint8)  # writable: torch wraps it
    return array, ImageReport(mode=mode, size=array.shape[:2], conversions=conversions)


_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


def probe_image(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image as :func:`read_image` would return it, checked more cheaply.

    Decodes the whole file, as the loaders do, so a truncated or corrupt file fails
    here, but JPEGs at 1/8 scale (libjpeg's DCT scaling reads every byte for a fraction
    of the work) and PNGs by their chunk checksums only. Raises :class:`DatasetError`
    naming the file, like :func:`read_image`.
    """
    path = Path(path)
    image = _open_header(path)
    width, height = image.size
    try:
        if image.format == "PNG":
            image.verify()  # must come first; the image is unusable afterwards
            image.close()
            image = _open_header(path)
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if image.format == "JPEG":
            image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
            image.load()
        elif image.format != "PNG":
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"cannot read {path}: {error} (the file is truncated or not an image; "
            "re-download or remove it from the split list)"
        ) from error
    finally:
        image.close()  # Pillow leaves the file open after verify() or a failed load()
    return (width, height) if orientation in _SWAPS_SIDES else (height, width)


def _open_header(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"image not found: {path} (check data.root and the split list)")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(
            f"cannot read {path}: {error} (the file is truncated or not an image; "
            "re-download or remove it from the split list)"
        ) from error


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 class indices (palette indices, not colours).

    Raises :class:`MaskError` for a missing/unreadable file or an RGB colour mask.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask not found: {path}", path)
    image = _loaded(
        path,
        lambda error: MaskError(f"cannot read mask {path}: {error} (re-create the file)", path),
    )
    if image.mode in ("P", "L"):
        return np.array(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if values.max(initial=0) > 255:
            raise MaskError(
                f"mask {path} holds values above 255 ({int(values.max())}); "
                "write class indices 0..C and 255 (ignore) as an 8-bit PNG",
                path,
            )
        return values.astype(np.uint8)
    raise MaskError(
        f"mask {path} is a {image.mode} colour image; masks must hold class indices "
        "(a palette 'P' or grayscale 'L' PNG), e.g. VOC's SegmentationClass PNGs",
        path,
    )


def write_label_png(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write (H, W) uint8 class indices as a palette PNG (VOC colours by default).

    Written to a temporary file then renamed, so a crash never leaves half a PNG.
    """
    path = Path(path)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    colours = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    image.putpalette(colours.reshape(-1).tolist())
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> list[int]:
    """Image-level labels of a mask: sorted classes present in 1..num_classes-1.

    Background (0), ignore (255) and out-of-range values are excluded.
    """
    present = mask_values(mask)
    return [int(value) for value in present if 0 < value < num_classes]


def mask_values(mask: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label map (a histogram for uint8: no sort)."""
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256))
    return np.unique(mask)
