"""``co2sam demo``: the whole method on generated data, offline, on a CPU, in minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import SetOption, console, fail
from co2sam.commands.guards import output_errors

DEMO_THREADS = 1
"""Torch threads of the demo. Its 64-wide model gains little from a second thread, and
loses a lot when the CPU is shared: quick demo, seed 0, on 2 busy cores (load average
about 7), 23 s of demo time with 1 thread against 32 s with 2, identical results."""


def demo(
    out: Path = typer.Option(
        Path("co2sam-demo"), help="Run folder (created; must be new or empty)."
    ),
    # (no "[default: no-quick]": click wraps it at the hyphen at 80 columns)
    quick: bool = typer.Option(False, show_default=False, help="Smaller data and fewer epochs."),
    ablation: bool = typer.Option(
        False,
        show_default=False,
        help="Also train without the template loss, the contrastive loss, the strong view.",
    ),
    seed: int = typer.Option(0, help="Seed of the generated data and the simulated detector."),
    harder_boxes: bool = typer.Option(
        True,
        "--harder-boxes/--no-harder-boxes",
        help="Also adapt with a worse simulated detector, reported beside the default.",
    ),
    overrides: list[str] | None = SetOption,
    progress: bool = typer.Option(True, help="Show a progress bar while training."),
    second_stage: bool = typer.Option(
        True,
        "--second-stage/--no-second-stage",
        help="Also distill Co2SAM's pseudo-labels into a SegFormer and time it beside Co2SAM.",
    ),
) -> None:
    """Adapt a small pretrained SAM to a shifted domain, and report before and after.

    Generates a source and a target domain (coloured shapes, co-occurring classes; the
    target has noise and a colour cast), loads the shipped demo SAM (pretrained with
    box -> mask supervision on the source by scripts/make_demo_sam.py), and trains
    Co2SAM's LoRA on the target with `fit`. Supervision: image-level labels and box
    prompts from a simulated detector built on the ground-truth instance masks
    (jittered, missed and false boxes); no pixel labels. Evaluates before and after
    (label-guided and open), with the default and a harder simulated detector.
    Writes OUT/config.yaml, report.json, before_after.png, images/ and train/ (logs,
    adapter). No network, no GPU needed.
    """
    import torch
    from transformers.utils import logging as transformers_logging

    from co2sam.config import ConfigError
    from co2sam.demo.pipeline import run_demo

    transformers_logging.disable_progress_bar()  # "Loading weights" bars for a 0.7 MB file
    if torch.get_num_threads() > DEMO_THREADS:
        torch.set_num_threads(DEMO_THREADS)  # the tiny model gains nothing from more threads
    with output_errors(out):
        try:
            run_demo(
                out,
                quick=quick,
                ablation=ablation,
                seed=seed,
                harder_boxes=harder_boxes,
                overrides=overrides,
                console=console,
                progress=progress,
                second_stage=second_stage,
            )
        except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as error:
            fail(str(error))
