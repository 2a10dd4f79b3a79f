"""The T-teacher's outputs kept across epochs: plain SAM never changes during training.

The T-teacher is SAM with its adapters off, so what it predicts for a weak view depends
only on that view and its boxes, never on the training step. The weak view is the image
flipped or not (horizontally, vertically): four views per image, each seen many times
over a run (50 epochs on VOC). Keeping the T-teacher's outputs for every view seen saves
one of the step's three encoder forwards from the second visit of a view on.

What is kept is all the losses need from the T-teacher, per image with N boxes:
- ``low_res``: (N, S/4, S/4) low-resolution mask logits, in the dtype they were made in
  (the template target is ``[upsample(low_res) > 0]``);
- ``prototypes``: (N, 256) float32 box prototypes for the contrastive loss.
At SAM's 1024 input under bf16 that is about 129 KiB per box instead of the 2 MiB image
embedding; a VOC train_aug run with every view of every image cached needs about 14 GiB.

Entries are keyed by the content of the weak view, its boxes and the pooling mode (a
hash), so a changed image, flip or box can never be served a stale template. When the
byte budget is full, new views are computed every time and not kept (no eviction: the
kept set never churns). The cache lives in this process's memory: under DDP each process
keeps the views it sees, within its own budget.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class CachedTemplate:
    """One view's T-teacher outputs (on the CPU): low_res (N, s, s), prototypes (N, C)."""

    low_res: Tensor
    prototypes: Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.low_res, self.prototypes))


def view_key(weak: np.ndarray, boxes: np.ndarray, pooling: str) -> str:
    """Content key of a weak view: (H, W, 3) uint8 image, (N, 4) boxes, pooling mode."""
    digest = hashlib.blake2b(digest_size=16)
    image = np.ascontiguousarray(weak)
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    digest.update(repr((image.shape, str(image.dtype), boxes.shape, pooling)).encode())
    digest.update(image.data)
    digest.update(boxes.data)
    return digest.hexdigest()


class TemplateCache:
    """A byte-bounded map from :func:`view_key` to :class:`CachedTemplate`.

    max_bytes: budget for the kept tensors (0 keeps nothing). ``hits`` and ``misses``
    count :meth:`get` calls, for the hit rate a run logs.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, CachedTemplate] = {}

    @classmethod
    def from_gib(cls, gib: float) -> TemplateCache:
        return cls(int(gib * 2**30))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def get(self, key: str, device: torch.device | str) -> tuple[Tensor, Tensor] | None:
        """``(low_res, prototypes)`` on ``device`` for a kept view, else None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry.low_res.to(device), entry.prototypes.to(device)

    def put(self, key: str, low_res: Tensor, prototypes: Tensor) -> bool:
        """Keep a view's outputs (copied to the CPU) if the budget allows; True if kept."""
        if key in self._entries:
            return True
        entry = CachedTemplate(
            low_res=low_res.detach().to("cpu", copy=True),
            prototypes=prototypes.detach().to("cpu", copy=True),
        )
        if self.bytes + entry.nbytes > self.max_bytes:
            return False
        self._entries[key] = entry
        self.bytes += entry.nbytes
        return True
