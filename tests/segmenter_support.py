"""Shared by the tests of the Segmenter families: inputs, and gradients with and without
gradient checkpointing."""

from __future__ import annotations

import torch

from co2sam.sam import lora_parameters


def segmenter_inputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(2, 3, 128, 128) random pixels; boxes (XYXY, 128 frame): two on image 0, one on 1."""
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    boxes = [
        torch.tensor([[10.0, 20.0, 90.0, 100.0], [0.0, 0.0, 60.0, 70.0]]),
        torch.tensor([[30.0, 5.0, 120.0, 64.0]]),
    ]
    return pixels, boxes


def checkpointed_gradients(segmenter, monkeypatch) -> tuple[list[torch.Tensor], int]:
    """The LoRA gradients of one loss on :func:`segmenter_inputs`, checked to be the same
    with gradient checkpointing as without; returns them and how many times a block ran
    checkpointed. The LoRA weights are randomised first, so every gradient can be non-zero.
    """
    from co2sam.models import segmenter as segmenter_module

    calls = []

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(function)
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "checkpoint", counting_checkpoint)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in lora_parameters(segmenter.model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    pixels, boxes = segmenter_inputs()
    gradients = []
    for checkpointing in (False, True):
        segmenter.gradient_checkpointing = checkpointing
        embeddings, decoded = segmenter(pixels, boxes)
        loss = embeddings.square().mean() + sum(d.low_res_logits.sigmoid().mean() for d in decoded)
        gradients.append(torch.autograd.grad(loss, lora_parameters(segmenter.model)))
    for plain, recomputed in zip(*gradients, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)
    return list(gradients[0]), len(calls)
