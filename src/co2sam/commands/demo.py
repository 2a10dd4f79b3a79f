"""``co2sam demo``: the whole method on generated data, offline, on a CPU, in minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import SetOption, console, fail
from co2sam.commands.guards import output_errors


def demo(
    out: Path = typer.Option(
        Path("co2sam-demo"), help="Run folder (created; must be new or empty)."
    ),
    quick: bool = typer.Option(False, help="Smaller data and fewer epochs: under a minute."),
    ablation: bool = typer.Option(
        False, help="Also train without the template loss, the contrastive loss, the strong view."
    ),
    seed: int = typer.Option(0, help="Seed of the generated data and the simulated detector."),
    overrides: list[str] | None = SetOption,
    progress: bool = typer.Option(True, help="Show a progress bar while training."),
) -> None:
    """Adapt a small pretrained SAM to a shifted domain from image-level labels, and report.

    Generates a source and a target domain (coloured shapes, co-occurring classes; the
    target has noise and a colour cast), loads the shipped demo SAM (pretrained with
    box -> mask supervision on the source by scripts/make_demo_sam.py), draws box prompts
    with a simulated detector (jittered, missed and false boxes), trains Co2SAM's LoRA on
    the target with `fit`, and evaluates before and after (label-guided and open).
    Writes OUT/config.yaml, report.json, before_after.png, images/ and train/ (logs,
    adapter). No network, no GPU needed.
    """
    import torch
    from transformers.utils import logging as transformers_logging

    from co2sam.config import ConfigError
    from co2sam.demo.pipeline import run_demo

    transformers_logging.disable_progress_bar()  # "Loading weights" bars for a 0.7 MB file
    if torch.get_num_threads() > 4:
        torch.set_num_threads(4)  # the tiny model gains nothing from more threads
    with output_errors(out):
        try:
            run_demo(
                out,
                quick=quick,
                ablation=ablation,
                seed=seed,
                overrides=overrides,
                console=console,
                progress=progress,
            )
        except (ConfigError, FileExistsError, FileNotFoundError) as error:
            fail(str(error))
