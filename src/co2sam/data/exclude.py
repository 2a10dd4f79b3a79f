"""Leaving listed images out of a training split (``co2sam train`` and ``co2sam distill``
``--exclude flagged.txt``).

The list is a text file of image ids, one per line, as the Review tab of ``co2sam app``
writes it (``flagged.txt`` in a pseudo-label or evaluation folder). Blank lines and
lines starting with ``#`` are ignored; an id may also be given as a file name
(``2007_000032.jpg`` or ``2007_000032.png``: the stem is used when the id itself is not
in the split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from co2sam.data.image_io import DatasetError


def read_id_list(path: str | Path) -> list[str]:
    """The ids listed in ``path`` (file order, duplicates dropped).

    Raises :class:`DatasetError` naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"cannot read the list of images to exclude {path}: {error} "
            "(give a text file with one image id per line)"
        ) from error
    ids: list[str] = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#") and entry not in ids:
            ids.append(entry)
    return ids


@dataclass
class Exclusion:
    """What :func:`exclude_ids` left out, for the run's log."""

    excluded: list[str] = field(default_factory=list)
    """Ids of the split that were left out."""
    unknown: list[str] = field(default_factory=list)
    """Listed ids that are not in the split (ignored)."""

    def summary(self, path: str | Path, split: str) -> str:
        line = f"--exclude {path}: left out {len(self.excluded)} image(s) of split {split!r}"
        if self.unknown:
            shown = ", ".join(self.unknown[:3]) + (", ..." if len(self.unknown) > 3 else "")
            line += f"; {len(self.unknown)} listed id(s) are not in it ({shown})"
        return line


def exclude_ids(dataset: Any, ids: Sequence[str]) -> tuple[Any, Exclusion]:
    """``dataset`` without the images whose id is listed (a ``SplitSubset`` when any is).

    dataset: a split dataset (or subset) with ``ids``. Raises :class:`DatasetError` when
    nothing would be left.
    """
    from co2sam.data.preflight import SplitSubset

    present = {image_id: index for index, image_id in enumerate(dataset.ids)}
    chosen: set[str] = set()
    unknown: list[str] = []
    for entry in ids:
        image_id = entry if entry in present else Path(entry).stem
        if image_id in present:
            chosen.add(image_id)
        else:
            unknown.append(entry)
    exclusion = Exclusion(sorted(chosen, key=present.__getitem__), unknown)
    if not chosen:
        return dataset, exclusion
    keep = [index for image_id, index in present.items() if image_id not in chosen]
    if not keep:
        raise DatasetError(
            f"every image of split {getattr(dataset, 'split', '?')!r} is listed to be "
            "excluded: nothing is left to train on (check the --exclude file)"
        )
    return SplitSubset(dataset, keep), exclusion
