"""The Review tab's folder: a pseudo-label or evaluation folder, image by image.

Layouts read (as ``co2sam pseudo-labels`` and ``co2sam evaluate`` write them)::

    pseudo-labels:  SegmentationClass/<id>.png, report.json (split, mode), .co2sam/run.json
    evaluation:     <mode>/predictions/<id>.png for label-guided and/or open, report.json

The images and ground-truth masks come from the dataset recorded in the folder
(``.co2sam/run.json``: dataset kind, root, split; else ``report.json``'s config), or from
the root the app was given (``--data-root``).

Per-image scores, to look at the worst images first:

- **IoU**: the image's mean IoU over the classes in its ground truth (the split's mIoU
  rule applied to one image), from the per-image confusion cells the commands log in
  ``.co2sam/done-*.jsonl``, else computed from the label PNG and the mask;
- **confidence**: the mean of the folder's ``Confidence/<id>.png`` (8-bit, confidence x
  255) when it has them, else the mean score of the image's boxes in the box cache the
  folder was made from.

Flags: :meth:`ReviewFolder.flag` appends the id to ``flagged.txt`` in the folder, the
file ``co2sam train --exclude`` and ``co2sam distill --exclude`` take.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.app.paths import UnsafePathError, ensure_inside, inside, short_path

FLAGGED_FILE = "flagged.txt"
CONFIDENCE_FOLDER = "Confidence"
SORTS = ("IoU (worst first)", "confidence (lowest first)", "id")


class ReviewError(ValueError):
    """The folder cannot be reviewed (the message names the fix)."""


@dataclass
class ImageViews:
    """One image of the folder, ready to show side by side.

    image: (H, W, 3) uint8, or None when the dataset's image cannot be found.
    label: (H, W) uint8 class indices of the folder's PNG.
    truth: (H, W) uint8 ground truth, or None without masks.
    """

    image_id: str
    image: np.ndarray | None
    label: np.ndarray
    truth: np.ndarray | None
    note: str = ""
    """Why the image or ground truth is missing, if one is."""


class ReviewFolder:
    """A pseudo-label or evaluation folder (see the module docstring).

    data_root: dataset root to read images and masks from instead of the recorded one.
    """

    def __init__(self, path: str | Path, *, data_root: str | Path | None = None) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise ReviewError(f"{path} is not a folder")
        self.report = _read_json(self.path / "report.json")
        self.identity = _read_json(self.path / ".co2sam" / "run.json")
        if (self.path / "SegmentationClass").is_dir():
            self.kind = "pseudo-labels"
            mode = self.report.get("mode") or self.identity.get("mode") or "label-guided"
            self.label_folders = {mode: inside(self.path, "SegmentationClass")}
        else:
            self.kind = "evaluation"
            self.label_folders = {
                mode: inside(self.path, mode, "predictions")
                for mode in ("label-guided", "open")
                if (self.path / mode / "predictions").is_dir()
            }
        if not self.label_folders:
            raise ReviewError(
                f"{path} holds no label PNGs to review: give a folder written by "
                "`co2sam pseudo-labels` (SegmentationClass/) or `co2sam evaluate` "
                "(<mode>/predictions/)"
            )
        self.split = str(self.report.get("split") or self.identity.get("split") or "")
        self.data_root = Path(data_root).resolve() if data_root else self._recorded_root()
        self.dataset, self.data_note = self._open_dataset()
        names = self.report.get("class_names")
        if not names and self.dataset is not None:
            names = list(self.dataset.class_names)
        self.class_names: tuple[str, ...] = tuple(names or ())
        self._ids: dict[str, list[str]] = {}
        self._ious: dict[str, dict[str, float | None]] = {}
        self._confidences: dict[str, dict[str, float | None]] = {}
        self._box_score_cache: dict[str, float] | None = None

    # ------------------------------------------------------------------ listing
    @property
    def modes(self) -> list[str]:
        return list(self.label_folders)

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> str:
        """One line: what the folder is, its split, mode(s) and where its images are."""
        data = f"images from {short_path(self.data_root)}" if self.data_root else "no dataset"
        return (
            f"{self.kind} · split {self.split or '?'} · mode {', '.join(self.modes)} · {data}"
            + (f" · {self.data_note}" if self.data_note else "")
        )

    def ids(self, mode: str) -> list[str]:
        """Ids with a label PNG in ``mode``'s folder, in split order (else sorted)."""
        if mode not in self._ids:
            folder = self._folder(mode)
            found = {path.stem for path in folder.glob("*.png") if path.is_file()}
            order = list(self.dataset.ids) if self.dataset is not None else []
            listed = [image_id for image_id in order if image_id in found]
            self._ids[mode] = listed + sorted(found - set(listed))
        return self._ids[mode]

    # ------------------------------------------------------------------ scores
    def ious(
        self, mode: str, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, float | None]:
        """Per-image IoU (see the module docstring); None where there is no ground truth."""
        if mode in self._ious:
            return self._ious[mode]
        ids = self.ids(mode)
        logged = self._logged_cells(mode)
        scores: dict[str, float | None] = {}
        for number, image_id in enumerate(ids):
            if progress is not None:
                progress(number, len(ids))
            cells = logged.get(image_id)
            if cells is not None:
                scores[image_id] = _image_iou_from_cells(cells, self._num_classes())
            else:
                scores[image_id] = self._computed_iou(mode, image_id)
        self._ious[mode] = scores
        return scores

    def confidences(
        self, mode: str, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, float | None]:
        """Per-image mean confidence (see the module docstring); None when unknown."""
        if mode in self._confidences:
            return self._confidences[mode]
        ids = self.ids(mode)
        maps = self.path / CONFIDENCE_FOLDER
        scores: dict[str, float | None] = {}
        if maps.is_dir():
            from PIL import Image

            for number, image_id in enumerate(ids):
                if progress is not None:
                    progress(number, len(ids))
                try:
                    with Image.open(inside(maps, f"{image_id}.png")) as image:
                        scores[image_id] = float(np.asarray(image, np.float64).mean() / 255)
                except (OSError, UnsafePathError):
                    scores[image_id] = None
        else:
            box_scores = self._box_scores()
            scores = {image_id: box_scores.get(image_id) for image_id in ids}
        self._confidences[mode] = scores
        return scores

    def order(
        self, mode: str, sort: str, progress: Callable[[int, int], None] | None = None
    ) -> list[str]:
        """Ids sorted by ``sort`` (one of :data:`SORTS`); unscored images last, by id."""
        ids = self.ids(mode)
        if sort == SORTS[2]:
            return sorted(ids)
        scores = self.ious(mode, progress) if sort == SORTS[0] else self.confidences(mode, progress)
        scored = sorted((s, i) for i, s in scores.items() if s is not None)
        return [i for _, i in scored] + sorted(i for i in ids if scores.get(i) is None)

    def default_sort(self, mode: str) -> str:
        """IoU when the folder's images have ground truth, else confidence, else id."""
        if self._logged_cells(mode) or (self.dataset is not None and self.dataset.has_masks):
            return SORTS[0]
        if (self.path / CONFIDENCE_FOLDER).is_dir() or self._box_scores():
            return SORTS[1]
        return SORTS[2]

    # ------------------------------------------------------------------ one image
    def views(self, mode: str, image_id: str) -> ImageViews:
        """The image, the folder's label map and the ground truth of ``image_id``."""
        from co2sam.data.image_io import DatasetError, read_image, read_label_png

        self._check_id(mode, image_id)
        label = read_label_png(inside(self._folder(mode), f"{image_id}.png"))
        image = truth = None
        notes = []
        if self.dataset is None:
            notes.append(self.data_note or "no dataset: start the app with --data-root")
        else:
            try:
                image = read_image(self._data_file(self.dataset.image_path(image_id)))
            except (DatasetError, UnsafePathError, KeyError, IndexError) as error:
                notes.append(f"image: {error}")
            try:
                truth = self._read_truth(image_id)
            except (DatasetError, UnsafePathError) as error:
                notes.append(f"ground truth: {error}")
        if image is not None and image.shape[:2] != label.shape:
            notes.append(f"the image is {image.shape[1]}x{image.shape[0]}, the label is not")
            image = None
        if truth is not None and truth.shape != label.shape:
            truth = None
        return ImageViews(image_id, image, label, truth, "; ".join(notes))

    # ------------------------------------------------------------------ flags
    @property
    def flagged_file(self) -> Path:
        return self.path / FLAGGED_FILE

    def flagged(self) -> list[str]:
        """Ids in ``flagged.txt`` (file order)."""
        from co2sam.data.exclude import read_id_list

        return read_id_list(self.flagged_file) if self.flagged_file.is_file() else []

    def flag(self, mode: str, image_id: str) -> bool:
        """Append ``image_id`` to ``flagged.txt``; False if it was flagged already."""
        self._check_id(mode, image_id)
        if image_id in self.flagged():
            return False
        text = self.flagged_file.read_text() if self.flagged_file.is_file() else ""
        with self.flagged_file.open("a", encoding="utf-8") as handle:
            if text and not text.endswith("\n"):
                handle.write("\n")
            handle.write(f"{image_id}\n")
        return True

    def unflag(self, mode: str, image_id: str) -> bool:
        """Remove ``image_id`` from ``flagged.txt``; False if it was not flagged."""
        self._check_id(mode, image_id)
        if image_id not in self.flagged():
            return False
        lines = self.flagged_file.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() != image_id]
        temporary = self.flagged_file.with_name(f".{FLAGGED_FILE}.{os.getpid()}.tmp")
        temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        temporary.replace(self.flagged_file)
        return True

    # ------------------------------------------------------------------ internals
    def _folder(self, mode: str) -> Path:
        if mode not in self.label_folders:
            raise ReviewError(f"{self.path} has no {mode!r} labels; modes: {self.modes}")
        return self.label_folders[mode]

    def _check_id(self, mode: str, image_id: str) -> None:
        if image_id not in set(self.ids(mode)):
            raise ReviewError(f"{image_id!r} is not an image of {self.path} ({mode})")

    def _recorded_root(self) -> Path | None:
        root = self.identity.get("data_root") or self.report.get("config", {}).get("data", {}).get(
            "root"
        )
        return Path(root).resolve() if root else None

    def _open_dataset(self) -> tuple[Any, str]:
        from co2sam.config import DataConfig
        from co2sam.data import DatasetError, build_dataset

        if self.data_root is None or not self.split:
            return None, "no dataset recorded in the folder: start the app with --data-root"
        kind = self.identity.get("dataset") or self.report.get("config", {}).get("data", {}).get(
            "dataset", "voc"
        )
        try:
            config = DataConfig(dataset=kind, root=str(self.data_root))
            return build_dataset(config, self.split, check_masks=False), ""
        except (DatasetError, OSError, ValueError) as error:
            return None, f"images not found ({error}); start the app with --data-root"

    def _data_file(self, path: str | Path) -> Path:
        """A dataset file, refused unless it lies under the dataset root."""
        roots = [root for root in (self.data_root, getattr(self.dataset, "root", None)) if root]
        return ensure_inside(path, roots)

    def _read_truth(self, image_id: str) -> np.ndarray | None:
        from co2sam.data.image_io import read_label_png

        if self.dataset is None or not self.dataset.has_masks:
            return None
        path = self.dataset.mask_path(image_id)
        return None if path is None else read_label_png(self._data_file(path))

    def _num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 256

    def _logged_cells(self, mode: str) -> dict[str, list]:
        """Per-image confusion cells the command logged for ``mode`` (scored images only)."""
        from co2sam.output_folder import OutputFolder

        if not (self.path / ".co2sam").is_dir():
            return {}
        records = OutputFolder(self.path, {}, outputs=()).records()
        return {
            image_id: record["confusion"][mode]
            for image_id, record in records.items()
            if record.get("scored") and mode in record.get("confusion", {})
        }

    def _computed_iou(self, mode: str, image_id: str) -> float | None:
        from co2sam.data.image_io import DatasetError, read_label_png

        try:
            truth = self._read_truth(image_id)
            if truth is None:
                return None
            label = read_label_png(inside(self._folder(mode), f"{image_id}.png"))
        except (DatasetError, UnsafePathError, OSError):
            return None
        if label.shape != truth.shape:
            return None
        return image_iou(label, truth, self._num_classes())

    def _box_scores(self) -> dict[str, float]:
        """Mean box score per image from the folder's box cache (empty without one)."""
        if self._box_score_cache is None:
            self._box_score_cache = {}
            cache = self.identity.get("box_cache")
            if cache and Path(cache).is_file():
                from co2sam.prompts import load_box_cache

                try:
                    boxes = load_box_cache(cache)
                except (OSError, ValueError):
                    boxes = {}
                self._box_score_cache = {
                    image_id: float(np.mean(entry.scores))
                    for image_id, entry in boxes.items()
                    if len(entry)
                }
        return self._box_score_cache


def image_iou(label: np.ndarray, truth: np.ndarray, num_classes: int) -> float | None:
    """Mean IoU of one (H, W) label map over the classes of its ground truth (255 ignored)."""
    from co2sam.metrics import ConfusionMatrix

    confusion = ConfusionMatrix(max(num_classes, int(max(label.max(), _top(truth))) + 1))
    confusion.update(label, truth)
    return confusion.compute()["miou"]


def _image_iou_from_cells(cells: list, num_classes: int) -> float | None:
    from co2sam.metrics import ConfusionMatrix

    size = max([num_classes] + [max(int(r), int(c)) + 1 for r, c, _ in cells])
    return ConfusionMatrix(size).add_entries(cells).compute()["miou"]


def _top(truth: np.ndarray) -> int:
    valid = truth[truth != 255]
    return int(valid.max()) if valid.size else 0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
