"""``co2sam train``: fine-tune SAM's encoder with LoRA (Co2SAM), resumable, 1..N devices."""

from __future__ import annotations

from pathlib import Path

import typer

from co2sam.commands.common import (
    SAM_HELP,
    ConfigOption,
    DataRootOption,
    ExcludeOption,
    SetOption,
    TrainAcceleratorOption,
    TrainDevicesOption,
    TrainNodesOption,
    TrainPrecisionOption,
    console,
    fail,
    interrupted_exit,
    resolve_config,
    resume_run,
)
from co2sam.commands.guards import SkipBadOption, output_errors, print_preflight_problems
from co2sam.config import ModelConfig, TrainConfig

BOX_SOURCES = ("cache", "detector", "oracle")


def train(
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    data_root: Path | None = DataRootOption,
    sam: str | None = typer.Option(
        None, help=f"{SAM_HELP} (model.sam; default {ModelConfig.sam})."
    ),
    boxes: str | None = typer.Option(
        None,
        help="Box prompts: a folder of box caches (<split>.jsonl, made by `co2sam boxes`), "
        "or cache / detector (live Grounding DINO or SAM 3) / oracle (ground-truth masks) "
        "(prompts.source; default cache, from DATA_ROOT/co2sam_boxes).",
    ),
    detector: str | None = typer.Option(
        None,
        help="Detector (Grounding DINO, or SAM 3: facebook/sam3) the box caches were made "
        "with, or to run live (prompts.detector).",
    ),
    skip_bad: bool = SkipBadOption,
    exclude: Path | None = ExcludeOption,
    out: Path | None = typer.Option(
        None,
        help="Run folder (train.out_dir; default: the preset's, runs/voc for voc, runs/coco "
        f"for coco; {TrainConfig.out_dir} without --config).",
    ),
    devices: int | None = TrainDevicesOption,
    num_nodes: int | None = TrainNodesOption,
    accelerator: str | None = TrainAcceleratorOption,
    precision: str | None = TrainPrecisionOption,
    epochs: int | None = typer.Option(
        None, help=f"Epochs (train.epochs; default {TrainConfig.epochs}, coco: 10)."
    ),
    max_steps: int | None = typer.Option(
        None, help="Stop after N optimizer steps in total (train.max_steps; default: no limit)."
    ),
    limit_train: int | None = typer.Option(
        None, help="Train on the first N images only (train.limit_train; default: all)."
    ),
    resume: Path | None = typer.Option(
        None,
        help="Continue the run in this folder from its last checkpoint (or the newest "
        "readable one), or restart from one checkpoint file (RUN/checkpoints/epoch-003.pt; "
        "what came after it is moved to RUN/abandoned-<time>/). Its config.yaml is used "
        "(no --config); --set and the flags above apply where a resumed run can honour "
        "them (README, Long runs).",
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train LoRA adapters on SAM with dual teachers (frozen SAM, weak view) and one student.

    Writes RUN_DIR/config.yaml, checkpoints/last.pt (resumable), best/ and last/ adapter
    folders, tensorboard/ and csv/ logs.

    With --devices N > 1 on one machine Fabric starts N processes (DDP). On several
    machines, run the same command on every node with --num-nodes and the usual
    variables (MASTER_ADDR, MASTER_PORT, NODE_RANK), or under SLURM / torchrun.

    SIGTERM and Ctrl-C save a checkpoint at the end of the current step, print how to
    resume and exit with 143 / 130. Under SLURM, SIGUSR1 (#SBATCH --signal=USR1@300)
    also requeues the job (README, "Long runs").
    """
    resume_from: bool | Path = False
    if resume is not None:
        if not resume.exists():
            fail(f"--resume {resume}: no such run folder or checkpoint file")
        if not (resume.is_file() or resume.is_dir()):
            fail(f"--resume {resume}: not a run folder or a checkpoint file")
        run_dir, resume_from, saved = resume_run(resume)
        if config is not None:
            fail(
                f"--config {config} cannot be used with --resume: the run's own {saved} is "
                "its config; change single fields with --set (or start a new run with --out)"
            )
        config = str(saved)
        out = run_dir
    flags: dict[str, object] = {
        "data.root": data_root,
        "data.skip_bad": skip_bad or None,
        "data.exclude": exclude.resolve() if exclude else None,
        "model.sam": sam,
        "prompts.detector": detector,
        "train.out_dir": out,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.accelerator": accelerator,
        "train.precision": precision,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.limit_train": limit_train,
    }
    if boxes is not None:
        if boxes in BOX_SOURCES:
            flags["prompts.source"] = boxes
        elif Path(boxes).is_dir():
            flags["prompts.source"] = "cache"
            flags["prompts.cache_dir"] = boxes
        else:
            fail(
                f"--boxes {boxes}: give a folder of box caches (made by `co2sam boxes`) "
                f"or one of {', '.join(BOX_SOURCES)}"
            )
    cfg = resolve_config(config, overrides, **flags)
    if not progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bars too

    from co2sam.data import DatasetError
    from co2sam.data.preflight import SKIPPED_FILE, PreflightError, SkipLog
    from co2sam.prompts import BoxCacheError
    from co2sam.train.checkpoint import CheckpointError
    from co2sam.train.loop import NonFiniteLossError, RunDirError, TrainingInterrupted, fit

    try:
        with output_errors(cfg.train.out_dir):
            result = fit(cfg, resume=resume_from, progress=progress)
    except TrainingInterrupted as stopped:
        raise interrupted_exit(stopped) from None
    except PreflightError as error:
        print_preflight_problems(error)
        _fail_once(str(error), code=1)
        return
    except (
        BoxCacheError,
        CheckpointError,
        DatasetError,
        FileNotFoundError,
        NonFiniteLossError,
        RunDirError,
    ) as error:
        # Every process meets these together (they agree on them): say it once.
        _fail_once(str(error))
        return
    if result.rank != 0:
        return
    summary = f"step {result.step}, epoch {result.epoch}; run folder {result.run_dir}"
    if result.skipped_images:
        summary += f"; {result.skipped_images} image(s) without boxes skipped"
    bad_files = len(SkipLog(Path(result.run_dir) / SKIPPED_FILE).listed())
    if bad_files:
        summary += f"; {bad_files} image(s) with bad files left out ({SKIPPED_FILE})"
    console.print(f"[green]trained[/] {summary}")
    for line in checkpoint_lines(result, cfg.data.val_split):
        console.print(line)


def _fail_once(message: str, code: int = 2) -> None:
    """:func:`fail` on the main process; the other processes of a DDP run exit quietly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        raise typer.Exit(code)
    fail(message, code=code)


def checkpoint_lines(result, val_split: str) -> list[str]:
    """What ``last/`` and ``best/`` scored on the validation split, and how best was chosen."""
    lines = []
    last = result.history[-1] if result.history else None
    if last is not None and last.get("step") == result.step and last.get("metrics"):
        metrics = last["metrics"]
        lines.append(
            f"last/ (epoch {last['epoch']}): {val_split} mIoU "
            + _modes(metrics["label-guided"]["miou"], metrics["open"]["miou"])
            + f" -> {result.last_adapter}"
        )
    else:
        lines.append(f"last/ (epoch {result.epoch}, not validated) -> {result.last_adapter}")
    best = result.best
    if best is not None:
        lines.append(
            f"best/ (epoch {best['epoch']}): {val_split} mIoU "
            + _modes(best["miou"], best["open_miou"])
            + f" -> {result.best_adapter}; chosen by label-guided mIoU on {val_split!r}, so "
            "its number on that split is optimistic: report last/ beside it"
        )
    return lines


def _modes(guided: float | None, opened: float | None) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    return f"label-guided {pct(guided)}, open {pct(opened)}"
