"""``co2sam export``: a trained segmenter as ONNX, checked against PyTorch in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import console, fail


def export(
    segmenter: Path = typer.Option(
        ...,
        "--segmenter",
        help="Segmenter folder of a `co2sam distill` run (e.g. runs/voc-seg/best).",
    ),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write (model.onnx)."),
    size: str | None = typer.Option(
        None,
        help="Example input size H or H,W (default 512; UperNet: 576). SegFormer graphs "
        "accept any size; Mask2Former and UperNet graphs only this one.",
    ),
    opset: int = typer.Option(17, help="ONNX opset."),
    tolerance: float = typer.Option(
        1e-4, help="Largest allowed |ONNX Runtime - PyTorch| of the class probabilities."
    ),
    overwrite: bool = typer.Option(
        False,
        show_default=False,
        help="Replace an existing ONNX file (and its ONNX.json) instead of refusing.",
    ),
) -> None:
    """Export SEGMENTER to ONNX (class probabilities), then check it in ONNX Runtime.

    Writes ONNX and ONNX.json (class names, normalisation, input/output layout, parity
    numbers). Fails (exit 1) when ONNX Runtime's output differs from PyTorch's beyond the
    tolerance or the argmax disagrees on more than 0.1% of pixels. An existing ONNX or
    ONNX.json is refused unless --overwrite.
    """
    from co2sam.inference.onnx_export import ExportError, default_export_size, export_onnx
    from co2sam.models.segmentation_net import SegmentationNetError, load_net

    existing = [p for p in (onnx, onnx.with_name(onnx.name + ".json")) if p.exists()]
    if existing and not overwrite:
        fail(
            f"{' and '.join(map(str, existing))} already "
            f"{'exist' if len(existing) > 1 else 'exists'}: choose another --onnx, or pass "
            "--overwrite to replace it"
        )
    try:
        net, _ = load_net(segmenter)
    except SegmentationNetError as error:
        fail(str(error))
        return
    shape = default_export_size(net) if size is None else _parse_size(size)
    try:
        report = export_onnx(net, onnx, size=shape, opset=opset, tolerance=tolerance)
    except ExportError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(1) from error
    for check in report.checks:
        console.print(
            f"input {'x'.join(map(str, check.shape))}: max |ONNX Runtime - PyTorch| "
            f"{check.max_abs_diff:.1e}, same argmax on {100 * check.argmax_agreement:.3f}% "
            "of pixels"
        )
    sizes = "any input size" if report.dynamic_size else f"input size {shape[0]}x{shape[1]} only"
    console.print(
        f"[green]exported[/] {report.onnx} ({sizes}, opset {report.opset}); {report.metadata}"
    )


def _parse_size(text: str) -> tuple[int, int]:
    try:
        values = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 32:
        fail(f"--size must be H or H,W (each >= 32), got {text!r}")
    return (values[0], values[-1])
