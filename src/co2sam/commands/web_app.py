"""``co2sam app``: the local web page (Segment, Review, Run); needs the ``app`` extra."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import ConfigOption, SetOption, console, fail, resolve_config


def app(
    adapter: Path | None = typer.Option(
        None, help="Adapter folder (RUN/best): the 'adapted' side of the before/after switch."
    ),
    segmenter: Path | None = typer.Option(
        None,
        help="Segmenter folder of `co2sam distill` (RUN/best): a third view that needs no "
        "boxes, detector or class names.",
    ),
    sam: str | None = typer.Option(
        None, help="SAM weights (default: the adapter's base, else the demo SAM)."
    ),
    detector: str | None = typer.Option(
        None,
        help="Detector (Grounding DINO or SAM 3) hub id or folder (default: boxes drawn by hand).",
    ),
    classes: str | None = typer.Option(
        None, help='Default class names of the Segment tab, e.g. "dog,sofa".'
    ),
    review: list[Path] | None = typer.Option(
        None,
        "--review",
        "--pseudo-labels",
        help="A pseudo-label or evaluation folder for the Review tab (repeatable).",
    ),
    data_root: Path | None = typer.Option(
        None, help="Dataset root of the Review folders (default: the one each recorded)."
    ),
    run: list[Path] | None = typer.Option(
        None,
        "--run",
        help="A training run folder for the Run tab (repeatable; default: the adapter's run).",
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; anything else than this machine is warned about."
    ),
    port: int | None = typer.Option(None, help="Port (default: the first free from 7860)."),
    max_file_size: float = typer.Option(20.0, help="Largest upload, in MB."),
    max_pixels: int = typer.Option(40_000_000, help="Largest image (width x height) segmented."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    demo_dir: Path | None = typer.Option(
        None,
        help="Where the demo workspace is kept when nothing else is given "
        "(default: ~/.cache/co2sam/app-demo-<version>).",
    ),
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """A local web page: segment your images (boxes drawn or detected, plain SAM vs. the
    adapted model, or the distilled segmenter without boxes), review pseudo-labels image by
    image and flag bad ones, and plot a training run.

    Given nothing, it opens a workspace made once from the demo (offline, under a minute on
    2 CPU cores): the demo SAM and its adapted run, pseudo-labels of the demo's data and a
    segmenter distilled from them.
    """
    from co2sam.app.settings import AppSettings, AppSettingsError

    cfg = resolve_config(config, overrides)
    try:
        settings = AppSettings(
            sam=sam,
            adapter=str(adapter) if adapter else None,
            segmenter=str(segmenter) if segmenter else None,
            detector=detector,
            classes=tuple(n.strip() for n in (classes or "").split(",") if n.strip()),
            data_root=str(data_root) if data_root else None,
            review=[str(folder) for folder in review or []],
            runs=[str(folder) for folder in run or []],
            host=host,
            port=port,
            max_file_mb=max_file_size,
            max_pixels=max_pixels,
            device=device,
            demo_dir=str(demo_dir) if demo_dir else None,
        )
    except AppSettingsError as error:
        fail(str(error))
        return
    warning = settings.host_warning()
    if warning:
        console.print(f"[bold yellow]{warning}[/]")
    try:
        from co2sam.app.gradio_env import import_gradio

        import_gradio()
    except ImportError as error:
        fail(str(error))
        return
    from co2sam.app.server import build_context, launch

    try:
        context = build_context(settings, config=cfg, log=lambda line: console.print(line))
    except (OSError, ValueError, RuntimeError) as error:
        fail(str(error))
        return
    from co2sam.app.page import Page

    page = Page(context).build()
    console.print(f"models: {context.models.describe()}")
    launch(page, settings, block=True, log=lambda line: console.print(line))
