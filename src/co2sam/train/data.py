"""Training samples: weak/strong views with their box prompts, a resumable sampler, collate.

Reproducibility is by construction, so that a resumed run sees the same data as an
uninterrupted one (on any number of workers):
- the order of an epoch depends only on ``(seed, epoch)`` (:class:`EpochSampler`);
- the augmentation of one sample depends only on ``(seed, epoch, index)``
  (:meth:`TrainingSet.sample_rng`), never on a worker's or the process's RNG;
- a checkpoint records how far into the epoch's order the run got (over all
  processes), and the sampler starts there without loading the skipped images, also
  with another number of processes or batch size (:class:`EpochSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from co2sam.records import Boxes, Sample


@dataclass
class TrainItem:
    """One training image.

    weak: (H, W, 3) uint8 RGB weak view (flips) at the original resolution.
    strong: (H, W, 3) uint8 RGB photometric augmentation of ``weak``.
    boxes: (N, 4) float32 XYXY pixels in the weak view's frame (N may be 0).
    box_classes: (N,) int64 classes 1..C of the boxes.
    """

    image_id: str
    weak: np.ndarray
    strong: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    unreadable: bool = False
    """A placeholder for a file that failed mid-run (co2sam.data.preflight): no boxes."""


@dataclass
class TrainBatch:
    """A batch as lists (images may differ in size and box count)."""

    image_ids: list[str]
    weak: list[np.ndarray]
    strong: list[np.ndarray]
    boxes: list[np.ndarray]
    box_classes: list[np.ndarray]
    unreadable: int = 0
    """How many of the images are placeholders of bad files (they have no boxes)."""

    def __len__(self) -> int:
        return len(self.image_ids)


def collate_train_items(items: Sequence[TrainItem]) -> TrainBatch:
    """DataLoader ``collate_fn``: keep everything as per-image lists (ragged boxes)."""
    return TrainBatch(
        image_ids=[item.image_id for item in items],
        weak=[item.weak for item in items],
        strong=[item.strong for item in items],
        boxes=[item.boxes for item in items],
        box_classes=[item.box_classes for item in items],
        unreadable=sum(item.unreadable for item in items),
    )


ViewsFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], Any]
"""``(image HWC uint8, boxes (N, 4) original frame, rng) -> ViewPair`` (data.views)."""


class EpochSeeded:
    """Per-sample RNGs fixed by (seed, epoch, index) alone, so a resumed run, any number
    of loader workers and any process draw the same augmentation for a sample.

    Subclasses set ``seed`` (and start at epoch 0) in their ``__init__``.
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating an epoch (workers receive a copy made at that moment)."""
        self.epoch = int(epoch)

    def sample_rng(self, index: int) -> np.random.Generator:
        """The augmentation RNG of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


class TrainingSet(EpochSeeded, Dataset):
    """Samples of ``dataset`` turned into :class:`TrainItem` (boxes, weak and strong views).

    dataset: a torch Dataset of :class:`Sample` (any split loader, or a Subset of one).
    boxes_fn: ``Sample -> Boxes`` in the ORIGINAL image frame (a box cache, oracle boxes or
        a simulated detector; a live detector should run with ``num_workers = 0``).
    views: e.g. ``co2sam.data.views.TrainViews``; flips the boxes with the weak view.
    seed: with the epoch and the sample index, fixes each sample's augmentation.
    flip_boxes: False reproduces the published code, which predicts boxes on the
        un-augmented image and uses them unchanged on the flipped weak view.
    """

    def __init__(
        self,
        dataset: Dataset,
        boxes_fn: Callable[[Sample], Boxes],
        views: ViewsFn,
        *,
        seed: int,
        flip_boxes: bool = True,
    ) -> None:
        self.dataset = dataset
        self.boxes_fn = boxes_fn
        self.views = views
        self.seed = int(seed)
        self.flip_boxes = flip_boxes
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TrainItem:
        sample: Sample = self.dataset[index]
        boxes = self.boxes_fn(sample)
        pair = self.views(sample.image, boxes.xyxy, self.sample_rng(index))
        view_boxes = pair.boxes if self.flip_boxes else boxes.xyxy
        return TrainItem(
            image_id=sample.id,
            weak=np.require(pair.weak, np.uint8, ["C", "W"]),  # torch wants writable arrays
            strong=np.require(pair.strong, np.uint8, ["C", "W"]),
            boxes=np.asarray(view_boxes, dtype=np.float32).reshape(-1, 4),
            box_classes=np.asarray(boxes.classes, dtype=np.int64).reshape(-1),
            unreadable=sample.problem is not None,
        )


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``(seed, epoch)``) that can start mid-epoch.

    Works without an initialised process group when ``num_replicas`` and ``rank`` are
    given (single process: 1 and 0). ``set_position`` is the only way to choose the
    epoch: it fixes the shuffle and where in it this pass starts, so a resumed run
    continues exactly.

    An epoch's *order* is one permutation of the dataset. Process ``r`` of ``W`` takes
    positions ``r, r + W, r + 2W, ...`` of it (padded, as ``DistributedSampler`` pads,
    with the order's first images so that every process gets as many), so after ``k``
    batches of ``B`` on every process the first ``k * B * W`` positions are used: the
    position in the order, ``consumed``, is all a checkpoint needs, and a run resumed
    with another number of processes or batch size deals out the rest of the same order.

    ``set_epoch`` is ignored on purpose: Lightning Fabric's dataloader wrapper calls
    ``sampler.set_epoch(n)`` before every pass with n = how many times that loader was
    iterated *in this process*, which after a resume is not the training epoch (a run
    resumed in epoch 3 would replay epoch 0's shuffle).
    """

    def __init__(
        self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.consumed = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Ignored (see the class docstring): use :meth:`set_position`."""

    def set_position(self, epoch: int, start: int = 0, *, consumed: int = 0) -> None:
        """Iterate epoch ``epoch`` from position ``consumed`` of its order (used by all
        processes so far), then skip the first ``start`` indices of this rank's share."""
        if not 0 <= consumed <= self.dataset_size:
            raise ValueError(f"position {consumed} is outside an epoch of {self.dataset_size}")
        self.epoch = int(epoch)  # the shuffle's seed is seed + epoch
        self.consumed = int(consumed)
        self.start = int(start)

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batches_per_epoch(self, batch_size: int) -> int:
        """Batches of a full epoch on this rank (the last one may be short)."""
        return math.ceil(self.num_samples / batch_size)

    def epoch_order(self) -> list[int]:
        """The permutation of the current epoch (``DistributedSampler``'s, unpadded)."""
        if not self.shuffle:
            return list(range(self.dataset_size))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_size, generator=generator).tolist()

    def _share(self) -> list[int]:
        order = self.epoch_order()
        rest = order[self.consumed :]
        padding = -len(rest) % self.num_replicas
        if padding and order:
            rest += (order * math.ceil(padding / len(order)))[:padding]
        return rest[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share()[self.start :])

    def __len__(self) -> int:
        remaining = math.ceil((self.dataset_size - self.consumed) / self.num_replicas)
        return max(remaining - self.start, 0)
