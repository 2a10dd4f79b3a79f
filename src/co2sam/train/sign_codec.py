"""Mask logits kept only as far as the template loss reads them: the sign of their upsampling.

The template target is ``[upsample(m) > 0]``, with ``m`` the T-teacher's low-res logits
and ``upsample`` bilinear (``Segmenter.upscale``). Bilinear upsampling computes every
output pixel from one 2x2 block of adjacent input pixels, with weights >= 0 that sum
to 1. Where the four logits of a block share one strict sign, every output pixel drawn
from that block has this sign, whatever the magnitudes. Only the pixels of blocks with
mixed signs (or a zero, or a NaN) need their exact value; every other pixel can be
replaced by +1 or -1 without changing the target anywhere.

:class:`SignCodedLogits` keeps a positivity bitmap (one bit per pixel) and the exact
values of the pixels of mixed blocks (a flat int32 index and the value in its own
dtype), about 8 KiB + 6 bytes per boundary pixel for a 256x256 mask instead of the
128 KiB of a dense bf16 tensor. It keeps the dense tensor when coding would not save
memory (noisy logits). Decoding gives logits whose upsampling has exactly the sign of
the original's at every pixel, for any output size; it does not give the magnitudes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass
class SignCodedLogits:
    """Logits of shape ``shape`` (…, h, w) coded by :func:`encode_signs` (on the CPU).

    Either ``dense`` (the tensor itself) or ``positive`` (packed bits of ``m > 0``, row
    major) + ``index`` (int32 flat positions kept exactly) + ``values`` (their logits).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    positive: Tensor | None = None
    index: Tensor | None = None
    values: Tensor | None = None
    dense: Tensor | None = None

    @property
    def nbytes(self) -> int:
        parts = (self.positive, self.index, self.values, self.dense)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def mixed_sign_pixels(logits: Tensor) -> Tensor:
    """(…, h, w) logits -> (…, h, w) bool: pixels in a 2x2 block without one strict sign.

    A block is "uniform" when its four values are all > 0 or all < 0. Inputs smaller
    than 2x2 have no blocks: every pixel is marked.
    """
    if logits.shape[-1] < 2 or logits.shape[-2] < 2:
        return torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    sign = torch.sign(logits)
    top_left = sign[..., :-1, :-1]
    uniform = (
        (top_left != 0)
        & (top_left == sign[..., 1:, :-1])
        & (top_left == sign[..., :-1, 1:])
        & (top_left == sign[..., 1:, 1:])
    )
    mixed = ~uniform
    marked = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    marked[..., :-1, :-1] |= mixed
    marked[..., 1:, :-1] |= mixed
    marked[..., :-1, 1:] |= mixed
    marked[..., 1:, 1:] |= mixed
    return marked


def _pack_bits(bits: Tensor) -> Tensor:
    """Flat bool (n,) -> uint8 (ceil(n / 8),), most significant bit first."""
    padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.uint8)
    padded[: bits.numel()] = bits.to(torch.uint8)
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: Tensor, count: int) -> Tensor:
    """uint8 (ceil(n / 8),) -> flat bool (n,), inverse of :func:`_pack_bits`."""
    weights = _BIT_WEIGHTS.to(packed.device)
    return ((packed[:, None] & weights) != 0).reshape(-1)[:count]


def encode_signs(logits: Tensor) -> SignCodedLogits:
    """Code (…, h, w) logits for :func:`decode_signs` (copied to the CPU)."""
    logits = logits.detach().to("cpu")
    shape, dtype = tuple(logits.shape), logits.dtype
    flat = logits.reshape(-1)
    index = mixed_sign_pixels(logits).reshape(-1).nonzero().squeeze(1)
    coded = SignCodedLogits(
        shape=shape,
        dtype=dtype,
        positive=_pack_bits(flat > 0),
        index=index.to(torch.int32),
        values=flat[index].clone(),
    )
    if coded.nbytes >= flat.numel() * flat.element_size():
        return SignCodedLogits(shape=shape, dtype=dtype, dense=logits.clone())
    return coded


def decode_signs(coded: SignCodedLogits, device: torch.device | str = "cpu") -> Tensor:
    """Logits whose bilinear upsampling has the sign of the coded ones' at every pixel."""
    if coded.dense is not None:
        return coded.dense.to(device)
    positive = _unpack_bits(coded.positive.to(device), math.prod(coded.shape))
    one = torch.ones((), dtype=coded.dtype, device=device)
    flat = torch.where(positive, one, -one)
    flat[coded.index.to(device).long()] = coded.values.to(device)
    return flat.reshape(coded.shape)
