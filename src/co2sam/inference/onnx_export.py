"""Export a trained segmenter to ONNX and check ONNX Runtime's output against PyTorch's.

The graph takes ``pixel_values`` (B, 3, H, W) float32, RGB normalised with ImageNet's
mean/std (the same as :func:`co2sam.inference.segmenter.normalised_pixels`), and returns
``scores`` (B, C, H, W) float32 class probabilities at the input size; argmax over C is
the label map. Beside ``model.onnx`` a ``model.onnx.json`` records the class names,
normalisation, input layout and the parity check.

Exporter: torch's TorchScript-based ``torch.onnx.export(dynamo=False)`` at opset 17 (no
onnxscript needed; the dynamo exporter silently fixes the batch size when traced at
batch 1 and fails on Mask2Former's Swin attention). SegFormer and UperNet are exported
with dynamic batch, height and width. Mask2Former's deformable attention and UperNet's
pyramid pooling (adaptive pooling, which this exporter only writes for a known input
size) bake the spatial size into the graph: they are exported at one (height, width),
dynamic batch.

Parity: the exported model runs in ONNX Runtime (CPU) on random inputs at the export
size with batch 1 and 2, and for dynamic-size graphs also at a second size; the largest
absolute difference of the probabilities and the share of pixels with the same argmax
are recorded, and the export fails when they exceed the tolerances.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from co2sam.models.segmentation_net import IMAGE_MEAN, IMAGE_STD, SegmentationNet

OPSET = 17
FIXED_SIZE_ARCHITECTURES = ("mask2former", "upernet")


class ExportError(RuntimeError):
    """The export failed or ONNX Runtime disagrees with PyTorch beyond the tolerance."""


class ScoresGraph(nn.Module):
    """``pixel_values`` (B, 3, H, W) -> class probabilities (B, C, H, W): what is exported."""

    def __init__(self, net: SegmentationNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values).scores


@dataclass
class ParityCheck:
    """One comparison of ONNX Runtime with PyTorch on a random input of ``shape``."""

    shape: list[int]
    max_abs_diff: float
    argmax_agreement: float


@dataclass
class ExportReport:
    """What was written and how closely ONNX Runtime matched PyTorch."""

    onnx: str
    metadata: str
    opset: int
    dynamic_size: bool
    export_size: list[int]
    checks: list[ParityCheck]


def size_divisor(net: SegmentationNet) -> int:
    """What the export size's sides must be multiples of (1: any size).

    UperNet's pyramid pooling (pool scales 1, 2, 3, 6 of the stride-32 feature map) is
    written by the TorchScript exporter only when every pool scale divides the feature
    map: sides must be multiples of 32 x lcm(pool scales) = 192 (e.g. 384, 576).
    """
    if net.architecture != "upernet":
        return 1
    return 32 * math.lcm(*[int(scale) for scale in net.hf.config.pool_scales])


def default_export_size(net: SegmentationNet, side: int = 512) -> tuple[int, int]:
    """``side`` x ``side``, rounded up to the architecture's :func:`size_divisor`."""
    divisor = size_divisor(net)
    side = -(-side // divisor) * divisor
    return side, side


def export_onnx(
    net: SegmentationNet,
    path: str | Path,
    *,
    size: tuple[int, int] = (512, 512),
    opset: int = OPSET,
    tolerance: float = 1e-4,
    min_agreement: float = 0.999,
    seed: int = 0,
) -> ExportReport:
    """Write ``path`` (and ``path.json``) and check it in ONNX Runtime; see the module.

    size: (H, W) of the example input; the only size Mask2Former graphs accept.
    Raises :class:`ExportError` when the check fails (the files are kept for inspection).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError(
            "ONNX export needs onnx and onnxruntime: pip install 'co2sam[onnx]'"
        ) from error
    divisor = size_divisor(net)
    if size[0] % divisor or size[1] % divisor:
        raise ExportError(
            f"{net.architecture} exports only at sizes whose sides are multiples of {divisor} "
            f"(its pyramid pooling); got {size[0]}x{size[1]}, try "
            f"{default_export_size(net, max(size))[0]}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ScoresGraph(net.cpu().eval()).eval()
    dynamic_size = net.architecture not in FIXED_SIZE_ARCHITECTURES
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, *size, generator=generator)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=["pixel_values"],
                output_names=["scores"],
                dynamic_axes={"pixel_values": axes, "scores": axes},
                opset_version=opset,
                dynamo=False,
            )
        except Exception as error:
            raise ExportError(
                f"torch.onnx.export failed for {net.architecture}: {error}"
            ) from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(1, 3, *size), (2, 3, *size)]
    if dynamic_size:
        shapes.append((1, 3, size[0] + 32, max(32, size[1] - 32)))
    checks = [_compare(graph, session, shape, generator) for shape in shapes]
    report = ExportReport(
        onnx=str(path),
        metadata=str(path.with_name(path.name + ".json")),
        opset=opset,
        dynamic_size=dynamic_size,
        export_size=list(size),
        checks=checks,
    )
    _write_metadata(net, report)
    for check in checks:
        if check.max_abs_diff > tolerance or check.argmax_agreement < min_agreement:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch at input {check.shape}: max |diff| "
                f"{check.max_abs_diff:.2e} (tolerance {tolerance:.0e}), argmax agreement "
                f"{100 * check.argmax_agreement:.3f}% (needed {100 * min_agreement:.1f}%)"
            )
    return report


def _compare(
    graph: ScoresGraph, session: Any, shape: tuple[int, ...], generator: torch.Generator
) -> ParityCheck:
    inputs = torch.randn(*shape, generator=generator)
    with torch.no_grad():
        expected = graph(inputs).numpy()
    (found,) = session.run(["scores"], {"pixel_values": inputs.numpy()})
    if found.shape != expected.shape:
        raise ExportError(
            f"ONNX Runtime returned {found.shape} for input {shape}, expected {expected.shape}"
        )
    agreement = float(np.mean(found.argmax(axis=1) == expected.argmax(axis=1)))
    return ParityCheck(list(shape), float(np.abs(found - expected).max()), agreement)


def _write_metadata(net: SegmentationNet, report: ExportReport) -> None:
    metadata = {
        "architecture": net.architecture,
        "class_names": list(net.class_names),
        "input": {
            "name": "pixel_values",
            "layout": "B x 3 x H x W float32, RGB, (pixel / 255 - mean) / std",
            "mean": list(IMAGE_MEAN),
            "std": list(IMAGE_STD),
            "size": "any" if report.dynamic_size else report.export_size,
        },
        "output": {"name": "scores", "layout": "B x C x H x W float32 class probabilities"},
        "export": asdict(report),
    }
    Path(report.metadata).write_text(json.dumps(metadata, indent=2) + "\n")
