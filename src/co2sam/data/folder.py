"""A custom dataset: a folder of images with image-level labels (masks optional).

Layout (``data.root``)::

    root/classes.txt        one class name per line; background first (if the first line
                            is not "background", background is added as class 0)
    root/labels.csv         "image,class1;class2" per line (header line optional), or
    root/labels.json        {"image": ["class1", "class2"], ...}
    root/images/            the images (or directly in root/); label keys are file names
                            relative to it ("cat1.jpg") or stems ("cat1")
    root/masks/<stem>.png   optional class-index PNGs, for evaluation
    root/<split>.txt        optional list of images of a split; without it, every
                            image of the labels file belongs to any split

Class names match exactly, else case-insensitively; an unknown name is an error
naming the labels file, the line and the name. A repeated image keeps its last row.
``check-data`` reports repeated images, names matched only case-insensitively and
class names that differ only in case (:func:`labels_file_findings`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from co2sam.data.base import SegmentationDataset, read_class_names, read_split_list
from co2sam.data.image_io import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _class_index(
    name: str, class_names: tuple[str, ...], where: str, lookup: dict[str, int]
) -> int:
    name = name.strip()
    index = lookup.get(name, lookup.get(name.lower()))
    if index is None or index == 0:
        raise DatasetError(
            f"{where}: unknown class {name!r} (classes.txt lists: "
            f"{', '.join(class_names[1:])}); fix the name or add it to classes.txt"
        )
    return index


def read_labels_file(path: Path, class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """Image key -> sorted class indices from ``labels.csv`` or ``labels.json``."""
    lookup = {name: i for i, name in enumerate(class_names)}
    lookup.update(
        {name.lower(): i for i, name in enumerate(class_names) if name.lower() not in lookup}
    )
    labels: dict[str, list[int]] = {}
    if path.suffix == ".json":
        text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise DatasetError(f"{path} must map image names to lists of class names")
        for key, names in data.items():
            line = text[: max(text.find(json.dumps(key)), 0)].count("\n") + 1
            where = f"{path}, line {line} (image {key!r})"
            if isinstance(names, str):
                names = [names]
            labels[key] = sorted({_class_index(n, class_names, where, lookup) for n in names})
        return labels
    for number, key, names in _csv_label_rows(path):
        where = f"{path}, line {number}"
        labels[key] = sorted({_class_index(n, class_names, where, lookup) for n in names})
    return labels


def _csv_label_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line number, image key, label names)`` per entry of a ``labels.csv`` (an
    optional header line, blank lines skipped; names split on ``;`` and stripped)."""
    rows = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            if number == 1 and row[0].strip().lower() in ("image", "file", "filename", "name"):
                continue
            names = [n.strip() for n in (row[1] if len(row) > 1 else "").split(";") if n.strip()]
            rows.append((number, row[0].strip(), names))
    return rows


class FolderDataset(SegmentationDataset):
    """A custom folder (see the module docstring).

    check_masks: refuse a masks/ folder missing some images' masks (``check-data``
        passes False to list each missing mask instead).
    """

    def __init__(self, root: str | Path, split: str = "all", *, check_masks: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        classes_file = self.root / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(f"{classes_file} not found: list the class names, one per line")
        self.class_names = read_class_names(classes_file)
        labels_file = next(
            (self.root / n for n in ("labels.csv", "labels.json") if (self.root / n).is_file()),
            None,
        )
        if labels_file is None:
            raise DatasetError(
                f"no labels file in {self.root}: write labels.csv ('image,class1;class2') "
                "or labels.json ({image: [class names]})"
            )
        self.labels_file = labels_file
        self.image_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        by_key = read_labels_file(labels_file, self.class_names)
        self._paths: dict[str, Path] = {}
        self._labels: dict[str, list[int]] = {}
        for key, image_labels in by_key.items():
            path = self._resolve(key)
            image_id = path.stem
            if image_id in self._paths:
                raise DatasetError(
                    f"{labels_file}: {key!r} and another entry share the id {image_id}"
                )
            self._paths[image_id] = path
            self._labels[image_id] = image_labels
        self.ids = list(self._paths)
        split_file = self.root / f"{split}.txt"
        self.split_listed = split_file.is_file()
        """Whether ``<split>.txt`` lists the split (else the split is every image)."""
        if split_file.is_file():
            wanted = read_split_list(split_file)
            missing = [i for i in wanted if i not in self._paths]
            if missing:
                raise DatasetError(f"{split_file}: {missing[0]} has no entry in {labels_file}")
            self.ids = wanted
        self.mask_dir = self.root / "masks"
        self.has_masks = self.mask_dir.is_dir()
        if self.has_masks and check_masks:
            missing = [i for i in self.ids if not (self.mask_dir / f"{i}.png").is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} images have no mask in {self.mask_dir} (first: "
                    f"{missing[0]}.png); add them or remove the masks/ folder"
                )

    def _resolve(self, key: str) -> Path:
        path = self.image_dir / key
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return path  # a missing file is reported when read / by check-data
        for suffix in IMAGE_SUFFIXES:
            for candidate in (
                path.with_name(path.name + suffix),
                path.with_name(path.name + suffix.upper()),
            ):
                if candidate.is_file():
                    return candidate
        return path.with_name(path.name + ".jpg")

    def image_path(self, image_id: str) -> Path:
        return self._paths[image_id]

    def mask_path(self, image_id: str) -> Path | None:
        return self.mask_dir / f"{image_id}.png" if self.has_masks else None

    def image_labels(self, index: int) -> list[int]:
        return list(self._labels[self.ids[index]])


def labels_file_findings(path: Path, class_names: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """What ``check-data`` reports about a labels file: ``(level, problem, handling)``.

    - ``warning``: an image listed twice (the loader keeps the last entry); two classes of
      ``classes.txt`` whose names differ only in case (a label written in another case
      is ambiguous);
    - ``converted``: a label that matches a class only when case is ignored.
    """
    findings: list[tuple[str, str, str]] = []
    by_lower: dict[str, list[str]] = {}
    for name in class_names:
        by_lower.setdefault(name.lower(), []).append(name)
    for names in by_lower.values():
        if len(names) > 1:
            findings.append(
                (
                    "warning",
                    f"classes.txt names {' and '.join(map(repr, names))} differ only in case",
                    "labels in another case go to one of them; rename one class",
                )
            )
    exact = set(class_names)
    seen: dict[str, str] = {}
    case_only: dict[str, str] = {}
    for key, names, where in _label_rows(path):
        if key in seen:
            findings.append(
                (
                    "warning",
                    f"image {key!r} listed again at {where} (first at {seen[key]})",
                    "loaded with the labels of the last entry; keep one entry per image",
                )
            )
        seen.setdefault(key, where)
        for name in names:
            if name not in exact and name.lower() in by_lower and name not in case_only:
                case_only[name] = where
                target = by_lower[name.lower()][0]
                findings.append(
                    (
                        "converted",
                        f"label {name!r} at {where} matches class {target!r} only ignoring case",
                        f"loaded as {target!r}",
                    )
                )
    return findings


def _label_rows(path: Path) -> list[tuple[str, list[str], str]]:
    """``(image key, label names, "line N")`` per entry of a labels file, duplicates kept."""
    rows = []
    if path.suffix == ".json":
        text = path.read_text()
        try:
            pairs = json.loads(text, object_pairs_hook=lambda items: items)
        except json.JSONDecodeError:
            return []  # the loader reports it
        if not isinstance(pairs, list):
            return []
        offset = 0
        for key, names in pairs:
            found = text.find(json.dumps(key), offset)
            offset = max(found + 1, offset)
            line = text[: max(found, 0)].count("\n") + 1
            names = [names] if isinstance(names, str) else names
            if isinstance(names, list):
                rows.append((key, [str(n).strip() for n in names], f"line {line}"))
        return rows
    return [(key, names, f"line {number}") for number, key, names in _csv_label_rows(path)]
