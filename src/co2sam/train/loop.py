"""The training loop: Fabric (CPU, one GPU, DDP over GPUs and nodes), checkpoints, resume.

``fit(config)`` builds what it is not given (SAM + LoRA, datasets, box sources), then
runs epochs of :func:`co2sam.train.step.training_step` with Adam and the warm-up /
step-decay schedule, validates every ``train.val_every`` epochs and keeps the best
adapter. A run folder (``train.out_dir``) holds::

    config.yaml                 the resolved config
    checkpoints/last.pt         resumable state (every train.checkpoint_every steps, epoch ends)
    checkpoints/epoch-XXX.pt    the state at the end of each epoch
    best/  last/                self-describing adapter folders (co2sam.sam.load_adapter)
    tensorboard/  csv/          logs (co2sam.train.monitor)

Exact resume: the epoch order depends on (seed, epoch) only (the sampler ignores
Fabric's per-process ``set_epoch`` count), each sample's augmentation on (seed, epoch,
index), and the checkpoint stores how far into the epoch's order the run got, so a run
killed at any step and resumed skips the images already seen and reaches the same
weights as an uninterrupted one: bit for bit on CPU with ``train.template_cache_gib=0``,
on any number of processes and loader workers; with the template cache (the default) to
float rounding, because the resumed process starts with an empty cache and recomputes
T-teacher outputs in other batch compositions. Resumed with another number of processes
or batch size, the run trains on the rest of the same epoch (each image once).
SIGTERM / SIGINT save and stop at the next step boundary, or between two validation
batches (:mod:`co2sam.train.interrupt`). The run folder is locked for the run and a fresh
run needs an empty one (:mod:`co2sam.train.run_dir`); restarting from an older
checkpoint moves the later history aside (:mod:`co2sam.train.abandoned`); what may change
on resume is in :mod:`co2sam.train.resume`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from co2sam.config import SETTINGS_CHANGES, Co2SamConfig
from co2sam.data.preflight import (
    SKIPPED_FILE,
    PreflightError,
    SkipLog,
    SkipPlaceholders,
    checked_split,
)
from co2sam.lifetime import WorkerGuard
from co2sam.losses import LOSS_NAMES
from co2sam.parallel import from_fabric
from co2sam.prompts.source import reads_masks
from co2sam.records import Boxes, Sample
from co2sam.train.abandoned import rebuild_best, set_aside_abandoned
from co2sam.train.checkpoint import (
    copy_checkpoint,
    epoch_checkpoint_path,
    last_checkpoint_path,
    load_checkpoint,
    load_lora_state_dict,
    set_rng_state,
)
from co2sam.train.data import EpochSampler, TrainingSet, collate_train_items
from co2sam.train.interrupt import (
    StopRequested,
    StopSignals,
    TrainingInterrupted,
    stop_signals,
    stop_with_checkpoint,
)
from co2sam.train.monitor import (
    TrainProgress,
    add_epoch_losses,
    close_monitors,
    epoch_mean_losses,
    log_metrics,
    make_loggers,
    new_epoch_losses,
)
from co2sam.train.resume import (
    absolute_paths,
    check_changes,
    check_checkpoint_kind,
    check_epoch_size,
    epoch_position,
    epoch_steps_left,
    reapply_optim,
    scheduled_images,
    settings_history,
)
from co2sam.train.run_dir import (
    ResumePoint,
    RunDirError,
    RunFolder,
    finish_run,
    save_adapter_folder,
    save_state,
)
from co2sam.train.schedule import build_optimizer
from co2sam.train.step import training_step
from co2sam.train.template_cache import TemplateCache
from co2sam.train.validation import check_validation_split, val_metrics, validate

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "RunDirError",
    "TrainingInterrupted",
    "build_segmenter",
    "fit",
]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops with the step, images and losses."""


@dataclass
class FitResult:
    """What a finished (or stopped) run produced.

    segmenter: the trained :class:`co2sam.sam.Segmenter` (on the training device).
    best: ``{"epoch", "step", "miou", "open_miou"}`` of the best validation (label-guided
        mIoU), or None without validation.
    history: one dict per validation: epoch, step and ``{mode: metrics}``.
    """

    run_dir: Path
    segmenter: Any
    step: int
    epoch: int
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_adapter: Path | None = None
    last_adapter: Path | None = None
    skipped_images: int = 0
    skipped_steps: int = 0
    template_cache_hit_rate: float | None = None
    """Share of T-teacher lookups this process served from its template cache."""
    rank: int = 0
    """This process's rank (DDP): only rank 0 should report."""


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` on a GPU, ``32-true`` elsewhere; other values unchanged."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def launch_fabric(train: Any, ddp: Callable[[], Any] | None = None) -> Any:
    """A launched Fabric on ``train``'s accelerator, devices, nodes and precision; with
    more than one process its strategy is ``ddp()`` (default: Fabric's ``"ddp"``)."""
    from lightning.fabric import Fabric

    world = train.devices * train.num_nodes
    strategy = ("ddp" if ddp is None else ddp()) if world > 1 else "auto"
    fabric = Fabric(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=strategy,
        precision=resolve_precision(train.precision, train.accelerator),  # type: ignore[arg-type]
    )
    fabric.launch()
    return fabric


def limit_dataset(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of ``dataset``, keeping ``class_names``/``ids``/... attributes."""
    if limit is None or limit >= len(dataset):
        return dataset
    subset = Subset(dataset, range(limit))
    for name in ("class_names", "has_masks", "root", "split"):
        if hasattr(dataset, name):
            setattr(subset, name, getattr(dataset, name))
    if hasattr(dataset, "ids"):
        subset.ids = list(dataset.ids[:limit])
    if hasattr(dataset, "instance_mask"):
        subset.instance_mask = dataset.instance_mask
    return subset


def build_segmenter(config: Co2SamConfig) -> Any:
    """The model of ``model.sam`` (SAM, SAM-HQ or SAM 2.1) with LoRA (fresh, or
    ``model.adapter`` to start from), in its family's Segmenter."""
    from co2sam.sam import attach_lora, load_adapter, load_sam, segmenter_for

    sam = load_sam(config.model.sam)
    if config.model.adapter:
        model = load_adapter(sam, config.model.adapter)
    else:
        model = attach_lora(sam, rank=config.model.lora_rank, alpha=config.model.lora_alpha)
    segmenter = segmenter_for(
        model,
        gradient_checkpointing=config.model.gradient_checkpointing,
        attention=config.model.attention,
    )
    if config.model.compile:
        # In place: the encoder's forward is compiled on first use (benchmarks: no win on
        # CPU, measure on your GPU with benchmarks/train_step.py --compile).
        segmenter.sam.vision_encoder.compile()
    return segmenter


def fit(
    config: Co2SamConfig,
    *,
    segmenter: Any = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    boxes_fn: Callable[[Sample], Boxes] | None = None,
    val_boxes_fn: Callable[[Sample], Boxes] | None = None,
    resume: bool | str | Path = False,
    progress: bool = True,
) -> FitResult:
    """Train LoRA on SAM with Co2SAM's dual-teacher loss; the run folder is ``train.out_dir``.

    segmenter: a Segmenter whose model has LoRA (default: :func:`build_segmenter`).
    train_dataset / val_dataset: datasets of Sample (default: ``build_dataset`` of
        ``data.train_split`` / ``data.val_split``; ``train.limit_train`` applies).
    boxes_fn / val_boxes_fn: ``Sample -> Boxes`` (default: ``prompts.box_source``).
    resume: True continues from ``<train.out_dir>/checkpoints/last.pt`` (or, if it is
        missing or unreadable, the newest readable ``epoch-XXX.pt``, saying so); a path
        restarts from that checkpoint file (e.g. an older ``epoch-XXX.pt``; what the run
        wrote after it is moved aside: :mod:`co2sam.train.abandoned`). The config may
        differ from the checkpoint's where :mod:`co2sam.train.resume` allows it.
    The run folder is locked for the run (:class:`co2sam.train.run_dir.RunFolder`); a
    fresh run needs an empty or new one. The config written there has absolute paths.
    SIGTERM / SIGINT (and SIGUSR1 under SLURM: save, then ``scontrol requeue``) stop the
    run at the next step boundary, or between two validation batches, with its state
    saved: :class:`TrainingInterrupted`.
    With ``train.devices``/``train.num_nodes`` > 1 this runs DDP; launched from a
    script, Fabric starts the other local processes by re-running the command.
    """
    from lightning.fabric.strategies import DDPStrategy

    config = absolute_paths(config)
    train = config.train
    # SAM's buffers are constants: no per-forward buffer broadcast, so forwards need no
    # collective and a process without boxes can join a step with one dummy forward.
    fabric = launch_fabric(train, ddp=lambda: DDPStrategy(**_no_buffer_sync()))
    folder = RunFolder(train.out_dir)
    try:
        resume_point = _claim(fabric, folder, resume)
        return _train(
            fabric, config, resume_point, progress=progress, segmenter=segmenter,
            datasets=(train_dataset, val_dataset), boxes_fns=(boxes_fn, val_boxes_fn),
        )  # fmt: skip
    finally:
        folder.release()


def _claim(fabric: Any, folder: RunFolder, resume: bool | str | Path) -> ResumePoint | None:
    """The main process claims the run folder; every process gets its verdict (and the
    checkpoint to resume from), so all of them go on or stop together. The main process
    raises the error itself, the others a :class:`RunDirError` with its message."""
    point, failure = None, None
    verdict: tuple[str | None, str | None] = (None, None)
    if fabric.global_rank == 0:
        try:
            point, notes = folder.claim(resume)
            for note in notes:
                fabric.print(note, file=sys.stderr)
            verdict = (None, None if point is None else str(point.path))
        except Exception as error:
            failure, verdict = error, (str(error), None)
    if fabric.world_size > 1:
        verdict = fabric.broadcast(verdict, src=0)
    message, path = verdict
    if failure is not None:
        raise failure
    if message is not None:
        raise RunDirError(message)
    if point is None and path is not None:
        point = ResumePoint(Path(path), load_checkpoint(path))
    return point


def _train(fabric, config, resume_point, *, progress, segmenter, datasets, boxes_fns):
    """The run in a claimed folder (see :func:`fit`)."""
    train = config.train
    run_dir = Path(train.out_dir)
    rank_zero = fabric.global_rank == 0
    saved = None if resume_point is None else resume_point.state
    notes = []
    if saved is not None:  # refusals first, before anything is loaded
        check_checkpoint_kind(saved, resume_point.path)
        notes = check_changes(saved, config, path=resume_point.path)

    # Same initial weights on every process (LoRA's A is random), then per-rank RNGs.
    fabric.seed_everything(train.seed, verbose=False)
    if segmenter is None:
        segmenter = build_segmenter(config)
    parameters = segmenter.trainable_parameters()
    if not parameters:
        raise ValueError("the segmenter has no LoRA parameters: build it with attach_lora")
    fabric.seed_everything(train.seed + fabric.global_rank, verbose=False)

    train_dataset, val_dataset = datasets
    boxes_fn, val_boxes_fn = boxes_fns
    skipped = SkipLog(run_dir / SKIPPED_FILE)
    # Every split the run reads is checked before one stops it: all problems in one list.
    failed: list[PreflightError] = []
    train_dataset = _split_data(config, "train", train_dataset, fabric, skipped, failed)
    if train.val_every > 0:
        val_dataset = _split_data(config, "val", val_dataset, fabric, skipped, failed)
    if failed:
        raise PreflightError.merged(failed)
    if train.val_every > 0:
        check_validation_split(train_dataset, val_dataset)
        val_boxes_fn = _boxes_of(config, config.data.val_split, val_dataset, val_boxes_fn)
    boxes_fn = _boxes_of(config, config.data.train_split, train_dataset, boxes_fn)
    training_set, sampler, loader = _loader(config, train_dataset, boxes_fn, fabric)

    # The geometry of this session: a resumed run may have others (co2sam.train.resume).
    images_per_step = train.batch_size * fabric.world_size
    epoch_size = len(training_set)
    start_step = 0 if saved is None else int(saved["step"])
    start_images = 0 if saved is None else scheduled_images(saved)
    optimizer, scheduler = build_optimizer(
        parameters, config.optim, images_per_step, start_step=start_step, start_images=start_images
    )
    model, optimizer = fabric.setup(segmenter, optimizer)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=False)

    # Plain SAM never changes: keep the T-teacher's outputs per weak view (SPEC-exact).
    template_cache = None
    if train.template_cache_gib > 0:
        template_cache = TemplateCache.from_gib(train.template_cache_gib)
    state = {"step": 0, "epoch": 0, "seen_in_epoch": 0, "best": None, "history": []}
    state.update(skipped_images=0, skipped_steps=0, epoch_losses=new_epoch_losses(1))
    state[SETTINGS_CHANGES] = []
    if saved is not None:
        check_epoch_size(saved, epoch_size, path=resume_point.path)
        if rank_zero:
            aside, best_moved = set_aside_abandoned(run_dir, resume_point)
            notes += aside
            if best_moved:
                notes += rebuild_best(run_dir, segmenter, config, saved)
        load_lora_state_dict(segmenter.model, saved["lora"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        reapply_optim(optimizer, scheduler, config.optim)
        for key in ("step", "epoch", "best", "history", "skipped_images", "skipped_steps"):
            state[key] = saved[key]
        state["seen_in_epoch"] = epoch_position(saved)
        state[SETTINGS_CHANGES] = settings_history(saved, config)
        state["epoch_losses"] = saved.get("epoch_losses") or new_epoch_losses(
            state["step"] + 1, complete=not state["seen_in_epoch"]
        )
        if rank_zero:
            set_rng_state(saved["rng"])
        for note in notes:
            fabric.print(note, file=sys.stderr)
        fabric.print(_resume_line(resume_point.path, state, epoch_size, train), file=sys.stderr)
    if rank_zero:  # the settings now, and which of them changed at which step
        config.save(run_dir / "config.yaml", changes=state[SETTINGS_CHANGES])
    loggers = make_loggers(run_dir, state["step"]) if rank_zero else []

    total_steps = _planned_steps(state, train, epoch_size, fabric.world_size)
    bar = TrainProgress(total_steps, state["step"], enabled=progress and rank_zero, lines=rank_zero)
    bar.print(f"{_describe(segmenter)}: {sum(p.numel() for p in parameters):,} trainable")
    if train.val_every == 0:
        bar.print("validation off (train.val_every = 0): no best/ adapter will be kept")
    signals = StopSignals(stop_signals())

    def save() -> None:
        geometry = {"world_size": fabric.world_size, "batch_size": train.batch_size}
        geometry["epoch_size"] = epoch_size
        geometry["step_images"] = start_images + (state["step"] - start_step) * images_per_step
        save_state(fabric, run_dir, segmenter, optimizer, scheduler, config, state | geometry)

    def end_epoch() -> None:
        """Validate the epoch just finished if due, then write last.pt and epoch-XXX.pt.

        last.pt is written before a validation too: a kill during a long validation loses
        no training, and the resumed run validates first (``_validation_due``).
        """
        if _validation_due(state, train.val_every):
            save()
            validate(fabric, config, segmenter, val_dataset, val_boxes_fn, state, bar, signals)
            log_metrics(loggers, val_metrics(state["history"][-1]), state["step"])
        save()
        if rank_zero:
            copy_checkpoint(
                last_checkpoint_path(run_dir), epoch_checkpoint_path(run_dir, state["epoch"])
            )

    # SIGTERM / SIGINT (and SLURM's requeue signal) only set a flag that every process
    # reads at the next step boundary: the run stops there with its state saved.
    stop = train.max_steps is not None and state["step"] >= train.max_steps
    try:
        with stop_with_checkpoint(signals, fabric, state, run_dir, save):
            if _validation_due(state, train.val_every):  # killed while validating last time
                end_epoch()
            while state["epoch"] < train.epochs and not stop:
                epoch = state["epoch"]
                training_set.set_epoch(epoch)
                sampler.set_position(epoch, consumed=state["seen_in_epoch"])
                for batch in loader:
                    stepped = _optimizer_step(
                        model, batch, config, fabric, optimizer, scheduler, state,
                        template_cache, signals,
                    )  # fmt: skip
                    # Every process used a batch: that many more images of the epoch's order.
                    seen = state["seen_in_epoch"] + images_per_step
                    state["seen_in_epoch"] = min(seen, epoch_size)
                    if stepped is None:
                        continue
                    losses, images = stepped
                    state["step"] += 1
                    note = ""
                    if template_cache is not None:
                        note = f"T-cache {template_cache.hit_rate:.0%}"
                    bar.advance(state["step"], images, losses, note)
                    add_epoch_losses(state["epoch_losses"], losses)
                    if state["step"] % train.log_every == 0 or state["step"] == 1:
                        metrics = {f"train/{name}": value for name, value in losses.items()}
                        metrics["train/lr"] = scheduler.get_last_lr()[0]
                        metrics["train/images_per_s"] = bar.images_per_s
                        if template_cache is not None:
                            metrics["train/template_cache_hit_rate"] = template_cache.hit_rate
                            metrics["train/template_cache_gib"] = template_cache.bytes / 2**30
                        log_metrics(loggers, metrics, state["step"])
                    if state["step"] % train.checkpoint_every == 0:
                        save()
                    if train.max_steps is not None and state["step"] >= train.max_steps:
                        stop = True
                        break
                if state["seen_in_epoch"] >= epoch_size:
                    state["epoch"] += 1
                    state["seen_in_epoch"] = 0
                    bar.print(_epoch_line(state, train.epochs, bar))
                    state["epoch_losses"] = new_epoch_losses(state["step"] + 1)
                    end_epoch()
    finally:
        close_monitors(bar, loggers)

    last_adapter, best_adapter = finish_run(
        fabric,
        run_dir,
        save,
        lambda folder: save_adapter_folder(segmenter, folder, config, state, state["best"]),
    )
    return FitResult(
        run_dir=run_dir,
        segmenter=segmenter,
        step=state["step"],
        epoch=state["epoch"],
        best=state["best"],
        history=state["history"],
        best_adapter=best_adapter,
        last_adapter=last_adapter,
        skipped_images=state["skipped_images"],
        skipped_steps=state["skipped_steps"],
        template_cache_hit_rate=template_cache.hit_rate if template_cache is not None else None,
        rank=fabric.global_rank,
    )


def _planned_steps(state: dict[str, Any], train: Any, epoch_size: int, world_size: int) -> int:
    """The step the run will end at: the rest of this epoch, the epochs after, max_steps."""
    steps = state["step"]
    if state["epoch"] < train.epochs:
        steps += epoch_steps_left(epoch_size, state["seen_in_epoch"], world_size, train.batch_size)
        full_epoch = epoch_steps_left(epoch_size, 0, world_size, train.batch_size)
        steps += (train.epochs - state["epoch"] - 1) * full_epoch
    if train.max_steps:
        steps = min(steps, max(train.max_steps, state["step"]))
    return steps


def _resume_line(path: Path, state: dict[str, Any], epoch_size: int, train: Any) -> str:
    """``resuming from X: step 8, in epoch 3 of 3 (4 of its 6 images done)``; epochs count
    from 1, as in ``epoch-NNN.pt`` (the state at the end of epoch NNN)."""
    where = f"resuming from {path}: step {state['step']}, "
    if state["seen_in_epoch"]:
        return where + (
            f"in epoch {state['epoch'] + 1} of {train.epochs} "
            f"({state['seen_in_epoch']} of its {epoch_size} images done)"
        )
    return where + f"after epoch {state['epoch']} of {train.epochs}"


def _epoch_line(state: dict[str, Any], epochs: int, bar: TrainProgress) -> str:
    """``epoch 2/50 done: step 21164, 5.31 img/s, total 8.605 focal 0.173 ...``: the
    means of the epoch's steps (also across a stop and resume inside it)."""
    losses = epoch_mean_losses(state["epoch_losses"], TrainProgress.SHOWN, state["step"])
    return (
        f"epoch {state['epoch']}/{epochs} done: step {state['step']}, "
        f"{bar.period_rate():.2f} img/s" + (f", {losses}" if losses else "")
    )


# ----------------------------------------------------------------------------- steps


def _optimizer_step(
    model, batch, config, fabric, optimizer, scheduler, state, template_cache, signals
):
    """Forward, backward and update on one batch; None when no process had a box.

    Processes agree (one all-reduce each) on whether any of them has a box or received a
    stop signal before the forward, and on whether any loss is non-finite after it, so
    all of them skip, step, stop or fail together: DDP hangs if its processes run
    different collectives. A stop raises :class:`StopRequested` before this batch is used.
    """
    distributed = fabric.world_size > 1
    has_boxes = any(len(boxes) > 0 for boxes in batch.boxes)
    flags = torch.tensor([float(has_boxes), *signals.flags], device=fabric.device)
    if distributed:
        flags = fabric.all_reduce(flags, reduce_op="sum")
    anyone, *received = flags.tolist()
    signum = signals.agreed(received)
    if signum is not None:
        raise StopRequested(signum)
    # Images without boxes; placeholders of bad files are counted in skipped.txt instead.
    unreadable = getattr(batch, "unreadable", 0)
    if anyone == 0:
        state["skipped_images"] += len(batch) - unreadable
        state["skipped_steps"] += 1
        return None
    if has_boxes:
        total, logs = training_step(model, batch, config.loss, template_cache)
    else:
        # Others have boxes: join the gradient all-reduce with a zero loss (DDP needs
        # every process to run a forward and a backward).
        total, logs = _zero_loss(model), {"images": torch.zeros(()), "skipped": None}
    without_boxes = len(batch) if logs["skipped"] is None else int(logs["skipped"])
    state["skipped_images"] += without_boxes - unreadable
    finite = bool(torch.isfinite(total))
    flags = torch.tensor([float(not finite), float(logs["images"])], device=fabric.device)
    if distributed:
        flags = fabric.all_reduce(flags, reduce_op="sum")
    if flags[0].item() > 0:
        where = f"step {state['step'] + 1} (epoch {state['epoch']})"
        if not finite:
            values = {name: round(float(v), 6) for name, v in logs.items()}
            raise NonFiniteLossError(
                f"non-finite loss at {where} on images {batch.image_ids}: {values}. "
                "Try a lower optim.lr, --precision 32-true, or check these images' boxes."
            )
        raise NonFiniteLossError(f"another process hit a non-finite loss at {where}; see its log")
    fabric.backward(total)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    losses = {name: float(logs[name]) for name in (*LOSS_NAMES, "total") if name in logs}
    return losses, int(flags[1].item())


def _validation_due(state: dict[str, Any], val_every: int) -> bool:
    """At the end of an epoch that should be validated and has no validation record yet."""
    epoch, history = state["epoch"], state["history"]
    if val_every <= 0 or epoch == 0 or epoch % val_every or state["seen_in_epoch"]:
        return False
    return not (history and history[-1]["epoch"] == epoch)


def _no_buffer_sync() -> dict[str, bool]:
    """DDP keyword that turns off the per-forward buffer broadcast (renamed in torch 2.13)."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _describe(segmenter: Any) -> str:
    """``SAM 2.1 + LoRA r=4 on q, v of 24 encoder blocks`` (for the log)."""
    from co2sam.models.families import family_of

    model = segmenter.model
    title = family_of(model).title
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    if config is None:
        return title
    blocks = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    return f"{title} + LoRA r={config.r} on q, v of {len(blocks) // 2} encoder blocks"


def _zero_loss(model: Any) -> torch.Tensor:
    size = model.image_size
    pixels = torch.zeros(1, 3, size, size, device=model.device)
    box = torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]], device=model.device)
    embeddings, decoded = model(pixels, [box])
    return 0.0 * (embeddings.float().sum() + decoded[0].low_res_logits.float().sum())


# ----------------------------------------------------------------------------- data


def _split_data(config, which, dataset, fabric, skipped, failed):
    """The ``train`` or ``val`` split (first ``train.limit_<which>`` images), checked by the
    pre-flight, unreadable files skipped (co2sam.data.preflight). A split the pre-flight
    refuses is added to ``failed`` (and None returned), so the next one is checked too."""
    if dataset is None:
        from co2sam.data import build_dataset

        split = config.data.train_split if which == "train" else config.data.val_split
        dataset = build_dataset(config.data, split, check_masks=not config.data.preflight)
    if which == "train" and config.data.exclude:
        from co2sam.data.exclude import exclude_ids, read_id_list

        dataset, exclusion = exclude_ids(dataset, read_id_list(config.data.exclude))
        if fabric.global_rank == 0:
            fabric.print(
                exclusion.summary(config.data.exclude, config.data.train_split),
                file=sys.stderr,
            )
    limit = config.train.limit_train if which == "train" else config.train.limit_val
    dataset = limit_dataset(dataset, limit)
    # Training reads the masks only for boxes made from them; validation scores on them.
    masks = which == "val" or reads_masks(config.prompts.source)
    processes = from_fabric(fabric)
    try:
        return checked_split(dataset, config.data, log=skipped, processes=processes, masks=masks)
    except PreflightError as error:
        failed.append(error)
        return None


def _boxes_of(config, split, dataset, boxes_fn):
    """``boxes_fn`` (default: ``prompts.box_source``), giving no box to skipped images."""
    if boxes_fn is None:
        from co2sam.prompts import box_source

        boxes_fn = box_source(config, split, dataset)
    return SkipPlaceholders(boxes_fn)


def _loader(config, dataset, boxes_fn, fabric):
    from co2sam.data.views import TrainViews

    train = config.train
    views = TrainViews(train.seed, strong=config.loss.strong_view)
    training_set = TrainingSet(
        dataset, boxes_fn, views, seed=train.seed, flip_boxes=config.prompts.compat != "reference"
    )
    sampler = EpochSampler(
        training_set, num_replicas=fabric.world_size, rank=fabric.global_rank, seed=train.seed
    )
    # A live detector holds a large model: keep it in the main process.
    workers = 0 if config.prompts.source == "detector" else config.data.num_workers
    loader = DataLoader(
        training_set,
        batch_size=train.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_train_items,
        # Workers die with this process (even on kill -9) and leave signals to it.
        worker_init_fn=WorkerGuard() if workers > 0 else None,
        # Each new iterator draws a seed for its workers: from the global RNG, that draw
        # would shift every later random number by where the resumed session began.
        generator=torch.Generator().manual_seed(train.seed),
    )
    return training_set, sampler, loader
