"""The T-teacher's outputs kept across epochs: plain SAM never changes during training.

The T-teacher is SAM with its adapters off, so what it predicts for a weak view depends
only on that view and its boxes, never on the training step. The weak view is the image
flipped or not (horizontally, vertically): four views per image, each seen many times
over a run (50 epochs on VOC). Keeping the T-teacher's outputs for every view seen saves
one of the step's three encoder forwards from the second visit of a view on.

What is kept is all the losses read from the T-teacher, per image with N boxes:
- the template target ``[upsample(low_res) > 0]``, as the low-res logits coded by
  :mod:`co2sam.train.sign_codec` (exact signs after upsampling, not the magnitudes);
- ``prototypes``: (N, 256) float32 box prototypes for the contrastive loss.
At SAM's 1024 input that is an 8 KiB sign bitmap per box, 6 bytes per logit near the
mask's boundary and a 1 KiB prototype: about 12 KiB per box for smooth synthetic masks,
roughly 12-25 KiB for real ones (an estimate), instead of the 2 MiB image embedding.
All 4 views of every VOC ``train_aug`` image should take about 1.5-3 GiB.

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

from co2sam.train.sign_codec import SignCodedLogits, decode_signs, encode_signs


@dataclass
class CachedTemplate:
    """One view's T-teacher outputs (on the CPU): low_res (N, s, s) coded, prototypes (N, C)."""

    low_res: SignCodedLogits
    prototypes: Tensor

    @property
    def nbytes(self) -> int:
        return self.low_res.nbytes + self.prototypes.numel() * self.prototypes.element_size()


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
        """``(low_res, prototypes)`` on ``device`` for a kept view, else None.

        ``low_res`` has the dtype and shape of the logits that were put, and the sign of
        theirs after bilinear upsampling at every pixel (not their magnitudes).
        """
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return decode_signs(entry.low_res, device), entry.prototypes.to(device)

    def put(self, key: str, low_res: Tensor, prototypes: Tensor) -> bool:
        """Keep a view's outputs (coded, on the CPU) if the budget allows; True if kept."""
        if key in self._entries:
            return True
        entry = CachedTemplate(
            low_res=encode_signs(low_res),
            prototypes=prototypes.detach().to("cpu", copy=True),
        )
        if self.bytes + entry.nbytes > self.max_bytes:
            return False
        self._entries[key] = entry
        self.bytes += entry.nbytes
        return True
