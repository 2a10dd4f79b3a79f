"""``co2sam distill``: train a semantic segmenter on Co2SAM's pseudo-labels (second stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import (
    DataRootOption,
    ExcludeOption,
    SetOption,
    TrainAcceleratorOption,
    TrainDevicesOption,
    TrainNodesOption,
    TrainPrecisionOption,
    console,
    fail,
    flag_overrides,
    interrupted_exit,
    resume_run,
)
from co2sam.commands.guards import SkipBadOption, print_preflight_problems
from co2sam.distill.config import DistillTrainConfig, NetConfig, PseudoLabelConfig

DistillConfigOption = typer.Option(
    None, "--config", "-c", help="Preset name (voc, coco: configs/distill-*.yaml) or a YAML file."
)


def distill(
    config: str | None = DistillConfigOption,
    overrides: list[str] | None = SetOption,
    data_root: Path | None = DataRootOption,
    pseudo_labels: Path | None = typer.Option(
        None,
        help="Folder written by `co2sam pseudo-labels` (holds SegmentationClass/) "
        "(pseudo_labels.dir).",
    ),
    architecture: str | None = typer.Option(
        None,
        help="segformer, mask2former or upernet "
        f"(model.architecture; default {NetConfig.architecture}).",
    ),
    pretrained: str | None = typer.Option(
        None,
        help="Hub id or local folder of that architecture "
        f"(model.pretrained; default {NetConfig.pretrained}).",
    ),
    exclude: Path | None = ExcludeOption,
    skip_bad: bool = SkipBadOption,
    min_confidence: float | None = typer.Option(
        None,
        help="Ignore pixels whose pseudo-label confidence is below this (pseudo_labels."
        f"min_confidence; default {PseudoLabelConfig.min_confidence:g}: every pixel).",
    ),
    out: Path | None = typer.Option(
        None,
        help="Run folder (train.out_dir; default: the preset's, runs/voc-seg for voc, "
        f"runs/coco-seg for coco; {DistillTrainConfig.out_dir} without --config).",
    ),
    iterations: int | None = typer.Option(
        None,
        help=f"Optimizer steps (train.iterations; default {DistillTrainConfig.iterations}, "
        "coco: 160000).",
    ),
    max_steps: int | None = typer.Option(
        None,
        help="Stop after N steps in total; --resume continues (train.max_steps; default: "
        "no limit).",
    ),
    batch_size: int | None = typer.Option(
        None,
        help="Images per step over all processes "
        f"(train.batch_size; default {DistillTrainConfig.batch_size}).",
    ),
    devices: int | None = TrainDevicesOption,
    num_nodes: int | None = TrainNodesOption,
    accelerator: str | None = TrainAcceleratorOption,
    precision: str | None = TrainPrecisionOption,
    resume: Path | None = typer.Option(
        None,
        help="Continue the run in this folder from its last checkpoint (or the newest "
        "readable one), or restart from one checkpoint file (RUN/checkpoints/epoch-012.pt). "
        "Its config.yaml is used; --set and the flags above still apply.",
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train SegFormer / Mask2Former / UperNet on pseudo-labels; validate on the real masks.

    Every file it reads is checked first (the images of both splits, the validation
    masks, and the pseudo-labels against the split: missing files, sizes, values outside
    the classes), and all problems are listed in one table before it stops. Writes
    RUN_DIR/config.yaml, checkpoints/last.pt (resumable), best/ and last/ segmenter folders (for
    `co2sam evaluate --segmenter`, `predict --segmenter`, `export --segmenter`),
    tensorboard/ and csv/ logs. Multi-GPU and multi-node as for `co2sam train`.

    SIGTERM and Ctrl-C save a checkpoint at the end of the current step, print how to
    resume and exit with 143 / 130; under SLURM, SIGUSR1 also requeues the job.
    """
    from transformers.utils import logging as transformers_logging

    from co2sam.config import ConfigError
    from co2sam.data import DatasetError
    from co2sam.data.preflight import PreflightError
    from co2sam.distill.config import load_distill_config
    from co2sam.models.segmentation_net import SegmentationNetError
    from co2sam.train.checkpoint import CheckpointError
    from co2sam.train.loop import NonFiniteLossError
    from co2sam.train.run_dir import RunDirError

    resume_from: bool | Path = False
    if resume is not None:
        run_dir, resume_from, saved = resume_run(resume)
        config = config or str(saved)
        out = run_dir
    flags = {
        "data.root": data_root,
        "data.exclude": exclude.resolve() if exclude else None,
        "data.skip_bad": skip_bad or None,
        "pseudo_labels.dir": pseudo_labels,
        "pseudo_labels.min_confidence": min_confidence,
        "model.architecture": architecture,
        "model.pretrained": pretrained,
        "train.out_dir": out,
        "train.iterations": iterations,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.accelerator": accelerator,
        "train.precision": precision,
    }
    try:
        cfg = load_distill_config(config, list(overrides or []) + flag_overrides(flags))
    except ConfigError as error:
        fail(str(error))
        return
    if not cfg.pseudo_labels.dir:
        fail("no pseudo-labels given: pass --pseudo-labels DIR (made by `co2sam pseudo-labels`)")
    transformers_logging.disable_progress_bar()
    from co2sam.distill.loop import DistillInterrupted
    from co2sam.distill.loop import distill as run_distill

    try:
        result = run_distill(cfg, resume=resume_from, progress=progress)
    except DistillInterrupted as stopped:
        raise interrupted_exit(stopped) from None
    except PreflightError as error:
        print_preflight_problems(error)
        fail(str(error), code=1)
        return
    except (
        CheckpointError,
        DatasetError,
        FileNotFoundError,
        NonFiniteLossError,
        RunDirError,
        SegmentationNetError,
        ValueError,
    ) as error:
        fail(str(error))
        return
    summary = f"step {result.step}, epoch {result.epoch}; run folder {result.run_dir}"
    if cfg.data.exclude:
        summary += f"; {len(result.excluded)} image(s) excluded"
    if result.best is not None:
        summary += (
            f"; best val mIoU {100 * result.best['miou']:.1f} ({result.best['mode']} mode) "
            f"at step {result.best['step']} -> {result.best_dir}"
        )
    console.print(f"[green]distilled[/] {summary}")
