"""Bad files are found before a long run starts, and never crash one.

Two guards, used by ``train``, ``evaluate``, ``pseudo-labels`` and ``boxes``:

- :func:`preflight` checks every file of the split that the command reads with
  ``check-data``'s rules (:func:`co2sam.data.check.scan_item`: images decode, masks
  exist and hold class indices of the right size, labels read) before the first image
  is processed, at a fraction of a full read (JPEGs at 1/8 scale, PNG checksums;
  threads, and each process of a sharded run checks its share). Errors stop the run
  with the list (:class:`PreflightError`), or with ``skip_bad`` leave those images out.
- :class:`SkipUnreadable` wraps the dataset for the run itself: an image that still
  fails when it is read (changed on disk, or the pre-flight was turned off) becomes a
  placeholder :class:`co2sam.records.Sample` with ``problem`` set, which every stage
  skips, after one warning line naming the file and the reason.

Both record what they left out in the run folder's ``skipped.txt`` (:class:`SkipLog`).

Which files a command reads (``masks``): images always; ground-truth masks only where
they are needed. ``evaluate`` scores against them, training's validation split too,
and oracle (or simulated) boxes are made from them, so there a bad mask leaves its
image out. Elsewhere (``pseudo-labels``, ``boxes`` and the training split with cached or
detector boxes) the masks are not checked before the run, and a bad one found while
reading is set aside with a warning line: the image is used without it (pseudo-labels
then has no quality number for it). VOC reads image-level labels off the masks, so its
masks are always needed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from co2sam.classes import IGNORE_INDEX
from co2sam.data.check import Problem, scan_dataset
from co2sam.data.image_io import DatasetError, MaskError
from co2sam.progress import progress_bar
from co2sam.records import Boxes, Sample

SKIPPED_FILE = "skipped.txt"
PLACEHOLDER_SIZE = 16
"""Side of the black placeholder image of a skipped sample (never segmented)."""
PROGRESS_FROM = 1000
"""Splits of at least this many images show a progress bar while they are checked."""


class PreflightError(DatasetError):
    """Files of the split fail the pre-flight check; ``problems`` lists them.

    ``split`` names the split, or the splits joined by ", " (:meth:`merged`); ``where``
    says it in words (``split train``, ``splits train, val``).
    """

    def __init__(self, split: str, problems: list[Problem]) -> None:
        self.split = split
        self.problems = problems
        images = len({(problem.split, problem.image_id) for problem in problems})
        first = problems[0]
        splits = ", ".join(repr(name) for name in split.split(", "))
        super().__init__(
            f"{images} image(s) of {self.where.split()[0]} {splits} have bad files (first: "
            f"{first.file}: {first.problem}); fix them (`co2sam check-data` lists them all) "
            "or pass --skip-bad to leave them out"
        )

    @property
    def where(self) -> str:
        return ("splits " if ", " in self.split else "split ") + self.split

    @classmethod
    def merged(cls, errors: Sequence[PreflightError]) -> PreflightError:
        """One error for the problems of several splits (a run that reads them all)."""
        if len(errors) == 1:
            return errors[0]
        return cls(
            ", ".join(error.split for error in errors),
            [problem for error in errors for problem in error.problems],
        )


class SkipLog:
    """The ``skipped.txt`` of a run folder: one ``id<TAB>file<TAB>reason`` line per image.

    Appends are single ``write`` calls on a file opened for appending, so processes and
    DataLoader workers can share one log; an image already listed is not added again.
    ``path`` None keeps nothing (warnings are still printed).
    """

    def __init__(self, path: str | Path | None, *, echo: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.echo = echo

    def listed(self) -> dict[str, str]:
        """Image id -> reason of every image in the log."""
        if self.path is None or not self.path.is_file():
            return {}
        found = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            image_id, _, rest = line.partition("\t")
            if image_id and not image_id.startswith("#"):
                found[image_id] = rest.partition("\t")[2]
        return found

    def add(self, image_id: str, file: str, reason: str) -> None:
        """Warn (one line on stderr) and record one skipped image, once per log."""
        reason = " ".join(str(reason).split())  # one line
        if self.path is not None and image_id in self.listed():
            return  # warned already (an earlier epoch, worker or process)
        if self.echo:
            print(f"warning: skipping {file}: {reason}", file=sys.stderr, flush=True)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{image_id}\t{file}\t{reason}\n".encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


def split_items(dataset: Dataset) -> tuple[Any, list[int]]:
    """The split dataset under any ``Subset`` / :class:`SkipUnreadable` wrappers, and the
    items of it in use."""
    indices: list[int] = list(range(len(dataset)))
    while isinstance(dataset, Subset | SkipUnreadable):
        if isinstance(dataset, Subset):
            indices = [dataset.indices[index] for index in indices]
        dataset = dataset.dataset
    return dataset, indices


class SplitSubset(Subset):
    """Some items of a split dataset that still behaves like the split.

    ``ids``, ``image_labels`` and item indices are the subset's; every other attribute
    (``class_names``, ``root``, ``image_path``, ``instance_mask``, ...) is the split's.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        if hasattr(dataset, "ids"):
            self.ids = [dataset.ids[index] for index in self.indices]

    def image_labels(self, index: int) -> list[int]:
        return self.dataset.image_labels(self.indices[index])

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def preflight(
    dataset: Dataset,
    *,
    skip_bad: bool = False,
    log: SkipLog | None = None,
    processes: Any = None,
    workers: int | None = None,
    on_item: Callable[[], None] | None = None,
    masks: bool = True,
) -> tuple[Dataset, list[Problem]]:
    """Check every file of ``dataset`` (a split, or a Subset of one) before a run.

    masks: whether the command reads the ground-truth masks (module docstring); False
        leaves them unchecked.
    processes: a :class:`co2sam.parallel.Processes`; each process checks its shard and
        all of them get every problem, so they agree on what is left out.
    workers: threads per process (default: the CPUs, at most 8).
    on_item: called after each image checked (default: a progress bar on the main
        process for splits of :data:`PROGRESS_FROM` images or more).
    Returns the dataset to run on (the same one when nothing is wrong, else a
    :class:`SplitSubset` without the bad images; ``skip_bad`` only) and all problems
    (errors and warnings). Raises :class:`PreflightError` on errors without ``skip_bad``.
    A dataset that is not a split of files (no ``image_path``) is returned unchecked.
    """
    split, indices = split_items(dataset)
    if not hasattr(split, "image_path") or not hasattr(split, "ids"):
        return dataset, []
    workers = workers or min(8, os.cpu_count() or 1)
    mine = indices if processes is None else processes.shard(indices)
    main = processes is None or processes.is_main
    show = on_item is None and main and len(indices) >= PROGRESS_FROM
    with progress_bar(enabled=show, transient=True) as bar:
        if show:
            task = bar.add_task(f"pre-flight {getattr(split, 'split', '')}", total=len(mine))
            on_item = partial(bar.advance, task)
        found = scan_dataset(
            split, indices=mine, fast=True, masks=masks, workers=workers, on_item=on_item
        )
    problems = found if processes is None else [p for part in processes.gather(found) for p in part]
    order = {image_id: position for position, image_id in enumerate(split.ids)}
    problems.sort(key=lambda problem: order.get(problem.image_id, -1))
    errors = [problem for problem in problems if problem.level == "error"]
    if not errors:
        return dataset, problems
    if not skip_bad:
        raise PreflightError(getattr(split, "split", "?"), errors)
    bad: dict[str, Problem] = {}
    for problem in errors:
        bad.setdefault(problem.image_id, problem)
    if log is not None and (processes is None or processes.is_main):
        for image_id, problem in bad.items():
            log.add(image_id, problem.file, skip_reason(problem))
    keep = [index for index in indices if split.ids[index] not in bad]
    return SplitSubset(split, keep), problems


def skip_reason(problem: Problem) -> str:
    """What ``skipped.txt`` says of an image left out by the pre-flight: the problem,
    that it was skipped, and the fix."""
    fix = problem.handling.removeprefix("not handled: ")
    return f"{problem.problem}; skipped (--skip-bad): {fix}"


class SkipUnreadable(Dataset):
    """``dataset`` whose items never raise for a bad file: they come back as placeholders.

    A :class:`DatasetError` while reading item ``i`` (missing or truncated image, bad
    mask), or mask values outside ``0..C-1`` and 255, gives
    ``Sample(problem=reason)`` with a black placeholder image; the reason is logged once
    per process, naming the file at fault (the image or its mask). Other attributes are
    the wrapped dataset's.

    masks: False for a command that does not need the masks (module docstring): a bad
        mask is then set aside (``Sample.mask`` None, one warning line) and the image kept.
    """

    def __init__(self, dataset: Dataset, log: SkipLog | None = None, *, masks: bool = True):
        self.dataset = dataset
        self.log = log or SkipLog(None)
        split, _ = split_items(dataset)
        self.masks = masks or getattr(split, "labels_from_masks", False)
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "log", "masks", "_reported"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Sample:
        ids = getattr(self.dataset, "ids", None)
        image_id = str(ids[index]) if ids is not None else str(index)
        try:
            sample = self.dataset[index]
        except MaskError as error:
            file = str(error.path or _mask_file(self.dataset, image_id))
            if self.masks:
                return self._placeholder(image_id, file, str(error))
            self._set_aside(image_id, file, str(error))
            return self._without_mask(index, image_id)
        except DatasetError as error:
            return self._placeholder(image_id, _file_of(self.dataset, image_id), str(error))
        reason = _mask_problem(sample, getattr(self.dataset, "class_names", None))
        if reason is None:
            return sample
        file = _mask_file(self.dataset, image_id)
        if self.masks:
            return self._placeholder(image_id, file, reason)
        self._set_aside(image_id, file, reason)
        return dataclasses.replace(sample, mask=None)

    def _placeholder(self, image_id: str, file: str, reason: str) -> Sample:
        """A skipped item (logged once per process): a black image that no stage uses."""
        if image_id not in self._reported:
            self._reported.add(image_id)
            self.log.add(image_id, file, reason)
        placeholder = np.zeros((PLACEHOLDER_SIZE, PLACEHOLDER_SIZE, 3), np.uint8)
        return Sample(image=placeholder, mask=None, labels=[], id=image_id, problem=reason)

    def _set_aside(self, image_id: str, file: str, reason: str) -> None:
        """One warning line per process: a mask the command can do without is not used."""
        if image_id not in self._reported and self.log.echo:
            print(
                f"warning: not using mask {file}: {reason}; the image is kept (no mask-based "
                "numbers for it)",
                file=sys.stderr,
                flush=True,
            )
        self._reported.add(image_id)

    def _without_mask(self, index: int, image_id: str) -> Sample:
        """Item ``index`` read again without its mask (a bad image: a placeholder)."""
        split, indices = split_items(self.dataset)
        try:
            return split.sample(indices[index], mask=False)
        except DatasetError as error:
            self._reported.discard(image_id)
            return self._placeholder(image_id, _file_of(self.dataset, image_id), str(error))


def _mask_problem(sample: Sample, class_names: Sequence[str] | None) -> str | None:
    if sample.mask is None or class_names is None:
        return None
    num_classes = len(class_names)
    top = sample.mask[sample.mask != IGNORE_INDEX].max(initial=0)
    if top < num_classes:
        return None
    bad = sorted({int(v) for v in np.unique(sample.mask) if num_classes <= v != IGNORE_INDEX})
    return f"mask values outside 0..{num_classes - 1} and 255: {bad[:8]} (fix the mask)"


def _mask_file(dataset: Any, image_id: str) -> str:
    try:
        return str(dataset.mask_path(image_id))
    except (AttributeError, KeyError):
        return image_id


def _file_of(dataset: Any, image_id: str) -> str:
    try:
        return str(dataset.image_path(image_id))
    except (AttributeError, KeyError):
        return image_id


class SkipPlaceholders:
    """``boxes_fn`` that gives no box to a placeholder sample (so every stage skips it)."""

    def __init__(self, boxes_fn: Callable[[Sample], Boxes]) -> None:
        self.boxes_fn = boxes_fn

    def __call__(self, sample: Sample) -> Boxes:
        if sample.problem is not None:
            return Boxes()
        return self.boxes_fn(sample)

    def __getattr__(self, name: str) -> Any:
        if name == "boxes_fn":
            raise AttributeError(name)
        return getattr(self.boxes_fn, name)


def checked_split(
    dataset: Dataset,
    data_config: Any,
    *,
    log: SkipLog,
    processes: Any = None,
    masks: bool = True,
) -> Dataset:
    """What a long command runs on: the pre-flight (``data.preflight``; ``data.skip_bad``
    leaves bad images out, else :class:`PreflightError`), then :class:`SkipUnreadable`.

    masks: whether the command needs the ground-truth masks (module docstring)."""
    if data_config.preflight:
        dataset, _ = preflight(
            dataset, skip_bad=data_config.skip_bad, log=log, processes=processes, masks=masks
        )
    return SkipUnreadable(dataset, log, masks=masks)
