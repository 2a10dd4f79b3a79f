"""The second stage's training loop: a semantic segmenter learns Co2SAM's pseudo-labels.

``distill(config)`` trains a :class:`co2sam.models.segmentation_net.SegmentationNet`
on (image, pseudo-label) crops for ``train.iterations`` optimizer steps with AdamW and
the warm-up + poly schedule, on Lightning Fabric (CPU, one GPU, DDP over GPUs and
nodes; bf16-mixed on GPU). It validates on the real masks of ``data.val_split`` every
``train.val_every`` steps and at the end (open mode) and keeps the best network. Run
folder: :mod:`co2sam.distill.run_files`.

Exact resume: an epoch's order depends on (seed, epoch), each crop's augmentation on
(seed, epoch, index), every process's torch RNG is checkpointed, and the checkpoint
stores the position inside the epoch; a resumed run reaches the same weights as an
uninterrupted one (bit for bit on CPU). The pseudo-labels are checked against the
split before anything is trained.

Long runs get ``co2sam train``'s guarantees (``co2sam.train.interrupt``, ``run_dir``):
SIGTERM / SIGINT (and SIGUSR1 under SLURM, which also requeues the job) stop every
process at the same step boundary with ``last.pt`` written (:class:`DistillInterrupted`);
``last.pt`` is written before each validation too, and the state at the latest
validation is kept as ``epoch-XXX.pt``, the fallback when ``last.pt`` is unreadable; what
a killed save left behind is tidied at the next start; loader workers die with the run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from co2sam.config import SETTINGS_CHANGES
from co2sam.distill.augment import TrainAugment
from co2sam.distill.config import DistillConfig
from co2sam.distill.data import PseudoLabelFolder, PseudoLabelSet
from co2sam.distill.preflight import checked_splits
from co2sam.distill.run_files import (
    check_distill_checkpoint,
    restore_rng,
    save_distill_state,
    save_segmenter_folder,
)
from co2sam.distill.schedule import build_optimizer
from co2sam.distill.validation import val_metrics, validate
from co2sam.lifetime import WorkerGuard
from co2sam.models.segmentation_net import SegmentationNet, build_net
from co2sam.train.checkpoint import (
    copy_checkpoint,
    epoch_checkpoint_path,
    epoch_checkpoints,
    last_checkpoint_path,
)
from co2sam.train.data import EpochSampler
from co2sam.train.interrupt import (
    StopRequested,
    StopSignals,
    TrainingInterrupted,
    stop_signals,
    stop_with_checkpoint,
)
from co2sam.train.loop import NonFiniteLossError, launch_fabric, limit_dataset
from co2sam.train.monitor import (
    TrainProgress,
    add_epoch_losses,
    close_monitors,
    epoch_mean_losses,
    log_metrics,
    make_loggers,
    new_epoch_losses,
)
from co2sam.train.resume import changed_settings, settings_history
from co2sam.train.run_dir import finish_run, open_run_dir, tidy_run_dir

__all__ = ["DistillInterrupted", "DistillResult", "distill"]


class DistillInterrupted(TrainingInterrupted):
    """A signal stopped ``co2sam distill`` after its state was saved (as for ``train``)."""

    def __init__(self, signum: int, **details: Any) -> None:
        super().__init__(signum, **details)
        self.args = (str(self).replace("co2sam train --resume", "co2sam distill --resume"),)


@dataclass
class DistillResult:
    """What a finished (or stopped) run produced.

    net: the trained network (on the training device). best: ``{"step", "miou",
    "mode"}`` of the best validation, or None. history: one record per validation.
    excluded: ids left out of the training split by ``data.exclude``.
    """

    run_dir: Path
    net: SegmentationNet
    step: int
    epoch: int
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_dir: Path | None = None
    last_dir: Path | None = None
    excluded: list[str] = field(default_factory=list)


def distill(
    config: DistillConfig,
    *,
    net: SegmentationNet | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    resume: bool | str | Path = False,
    progress: bool = True,
) -> DistillResult:
    """Train a segmenter on the pseudo-labels in ``pseudo_labels.dir``; see the module.

    net: the network to train (default: ``model.architecture`` from ``model.pretrained``).
    train_dataset / val_dataset: SegmentationDatasets (default: ``data.train_split`` /
        ``data.val_split`` of ``data.root``; ``data.exclude``, then ``train.limit_train``,
        apply to the training split).
    resume: True continues from ``<train.out_dir>/checkpoints/last.pt`` (or the newest
        readable ``epoch-XXX.pt``); a path restarts from that checkpoint file.
    Raises :class:`DistillInterrupted` after a stop signal (state saved).
    """
    train = config.train
    world = train.devices * train.num_nodes
    fabric = launch_fabric(train)
    run_dir = Path(train.out_dir)
    rank_zero = fabric.global_rank == 0
    if rank_zero:
        for note in tidy_run_dir(run_dir):
            fabric.print(note, file=sys.stderr)
    resume_point = open_run_dir(run_dir, resume)
    if resume_point is not None:
        check_distill_checkpoint(resume_point.state, run_dir)

    train_dataset, val_dataset, exclusion = _datasets(config, train_dataset, val_dataset)
    if exclusion is not None and rank_zero:
        summary = exclusion.summary(config.data.exclude, config.data.train_split)
        fabric.print(summary, file=sys.stderr)
    folder = PseudoLabelFolder.find(config.pseudo_labels.dir)
    min_confidence = config.pseudo_labels.min_confidence
    # Every file the run reads, both splits, before the first step (one list of problems).
    train_dataset, val_dataset = checked_splits(config, train_dataset, val_dataset, folder, fabric)
    training_set = PseudoLabelSet(
        train_dataset,
        folder,
        TrainAugment(config.augment),
        seed=train.seed,
        min_confidence=min_confidence,
    )

    fabric.seed_everything(train.seed, verbose=False)  # same initial weights everywhere
    if net is None:
        net = build_net(
            config.model.architecture, config.model.pretrained, train_dataset.class_names
        )
    if list(net.class_names) != list(train_dataset.class_names):
        raise ValueError(
            f"the network's classes {list(net.class_names)[:4]}... differ from the dataset's "
            f"{list(train_dataset.class_names)[:4]}..."
        )
    if world > 1 and train.sync_batchnorm and fabric.device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    fabric.seed_everything(train.seed + fabric.global_rank, verbose=False)

    per_process = train.batch_size // fabric.world_size
    _check_batch(net, per_process)
    sampler = EpochSampler(
        training_set, num_replicas=fabric.world_size, rank=fabric.global_rank, seed=train.seed
    )
    batches_per_epoch = sampler.num_samples // per_process
    if batches_per_epoch == 0:
        raise ValueError(
            f"{len(training_set)} training images cannot fill one batch of {per_process} per "
            "process; lower train.batch_size"
        )
    loader = DataLoader(
        training_set,
        batch_size=per_process,
        sampler=sampler,
        num_workers=config.data.num_workers,
        drop_last=True,
        pin_memory=fabric.device.type == "cuda",
        # Workers die with this process (even on kill -9) and leave signals to it.
        worker_init_fn=WorkerGuard() if config.data.num_workers > 0 else None,
        # Each new iterator draws a seed; from the global RNG it would shift dropout's
        # stream by where an epoch began relative to a stop (no exact resume).
        generator=torch.Generator().manual_seed(train.seed),
    )
    optimizer, scheduler = build_optimizer(
        net, net.backbone_prefixes(), config.optim, train.iterations
    )
    model, optimizer = fabric.setup(net, optimizer)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    state.update(best=None, history=[], epoch_losses=new_epoch_losses(1))
    state[SETTINGS_CHANGES] = []
    if resume_point is not None:
        saved = resume_point.state
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for key in ("step", "epoch", "batch_in_epoch", "best", "history"):
            state[key] = saved[key]
        state["epoch_losses"] = saved.get("epoch_losses") or new_epoch_losses(
            state["step"] + 1, complete=not state["batch_in_epoch"]
        )
        restore_rng(fabric, saved)
        changes = changed_settings(saved, config)
        state[SETTINGS_CHANGES] = settings_history(saved, config)
        for note in resume_point.notes + _changes_note(changes, resume_point.path):
            fabric.print(note, file=sys.stderr)
        fabric.print(
            f"resuming from {resume_point.path}: step {state['step']}, epoch {state['epoch']}",
            file=sys.stderr,
        )
    if rank_zero:  # the settings now, and which of them changed at which step
        config.save(run_dir / "config.yaml", changes=state[SETTINGS_CHANGES])
    loggers = make_loggers(run_dir, state["step"]) if rank_zero else []
    last_step = min(train.iterations, train.max_steps or train.iterations)
    # Without a bar (--no-progress: a batch job's log) the main process still prints the
    # epoch and validation lines.
    bar = TrainProgress(
        train.iterations, state["step"], enabled=progress and rank_zero, lines=rank_zero
    )
    if train.val_every == 0:
        bar.print("validation off (train.val_every = 0): no best/ segmenter will be kept")

    def save() -> None:
        save_distill_state(fabric, run_dir, net, optimizer, scheduler, config, state)

    def validate_and_keep() -> None:
        """last.pt before validating (a kill during it loses no training; the resumed run
        validates first), then the result; the state is kept as the fallback epoch file."""
        save()
        with signals.during("whole validation"):  # it stops at the next step, not inside
            validate(fabric, config, net, val_dataset, state, bar)
        log_metrics(loggers, val_metrics(state["history"][-1]), state["step"])
        save()
        if rank_zero:
            older = epoch_checkpoints(run_dir)
            kept = copy_checkpoint(
                last_checkpoint_path(run_dir), epoch_checkpoint_path(run_dir, state["epoch"])
            )
            for path in older:
                if path != kept:
                    path.unlink(missing_ok=True)

    # SIGTERM / SIGINT (and SLURM's requeue signal) only set a flag that every process
    # reads at the next step boundary: the run stops there with its state saved.
    signals = StopSignals(stop_signals())
    try:
        with stop_with_checkpoint(signals, fabric, state, run_dir, save, DistillInterrupted):
            if _validation_due(state, train):  # killed while validating last time
                validate_and_keep()
            while state["step"] < last_step:
                training_set.set_epoch(state["epoch"])
                sampler.set_position(state["epoch"], state["batch_in_epoch"] * per_process)
                for pixels, labels in loader:
                    loss = _optimizer_step(
                        model, pixels, labels, fabric, optimizer, config, state, signals
                    )
                    scheduler.step()
                    state["step"] += 1
                    state["batch_in_epoch"] += 1
                    step = state["step"]
                    bar.advance(step, per_process * fabric.world_size, {"total": loss})
                    add_epoch_losses(state["epoch_losses"], {"loss": loss})
                    if state["batch_in_epoch"] == batches_per_epoch:
                        state["epoch"] += 1
                        state["batch_in_epoch"] = 0
                        bar.print(_epoch_line(state, train.iterations, bar))
                        state["epoch_losses"] = new_epoch_losses(step + 1)
                    if step % train.log_every == 0 or step == 1:
                        metrics = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}
                        metrics["train/images_per_s"] = bar.images_per_s
                        log_metrics(loggers, metrics, step)
                    if _validation_due(state, train):
                        validate_and_keep()
                    elif step % train.checkpoint_every == 0:
                        save()
                    if step >= last_step:
                        break
    finally:
        close_monitors(bar, loggers)

    last_dir, best_dir = finish_run(
        fabric,
        run_dir,
        save,
        lambda folder: save_segmenter_folder(net, folder, config, state),
    )
    return DistillResult(
        run_dir=run_dir,
        net=net,
        step=state["step"],
        epoch=state["epoch"],
        best=state["best"],
        history=state["history"],
        best_dir=best_dir,
        last_dir=last_dir,
        excluded=exclusion.excluded if exclusion is not None else [],
    )


def _optimizer_step(model, pixels, labels, fabric, optimizer, config, state, signals) -> float:
    """Forward, backward and update on one batch; returns the loss averaged over processes.

    Processes agree on whether any of them received a stop signal before the forward
    (:class:`StopRequested`: this batch is left for the resumed run, which sees the same
    RNG state) and on whether any loss is non-finite before stepping, so all of them stop
    or fail together (DDP hangs if its processes run different collectives).
    """
    received = torch.tensor(signals.flags, device=fabric.device)
    if fabric.world_size > 1:
        received = fabric.all_reduce(received, reduce_op="sum")
    signum = signals.agreed(received.tolist())
    if signum is not None:
        raise StopRequested(signum)
    pixels, labels = fabric.to_device((pixels, labels))
    loss = model(pixels, labels).loss
    flags = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()])
    if fabric.world_size > 1:
        flags = fabric.all_reduce(flags, reduce_op="sum")
    if flags[1].item() > 0:
        raise NonFiniteLossError(
            f"non-finite loss at step {state['step'] + 1} (epoch {state['epoch']}, batch "
            f"{state['batch_in_epoch']}). Try a lower optim.lr, --precision 32-true, or "
            "check the pseudo-labels."
        )
    fabric.backward(loss)
    if config.optim.clip_grad_norm is not None:
        fabric.clip_gradients(model, optimizer, max_norm=config.optim.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(flags[0].item()) / fabric.world_size


def _changes_note(changes: list[dict[str, Any]], path: Path) -> list[str]:
    """``settings changed since last.pt (applied from step 8): optim.lr 0.001 -> 0.0005``."""
    if not changes:
        return []
    listed = "; ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes)
    return [f"settings changed since {path.name} (applied from step {changes[0]['from_step']}): "
            f"{listed}"]  # fmt: skip


def _epoch_line(state: dict[str, Any], iterations: int, bar: TrainProgress) -> str:
    """``epoch 3 done: step 1983/80000, 12.31 img/s, loss 0.412`` (the epoch's mean loss,
    also across a stop and resume inside it)."""
    loss = epoch_mean_losses(state["epoch_losses"], ("loss",), state["step"])
    return (
        f"epoch {state['epoch']} done: step {state['step']}/{iterations}, "
        f"{bar.period_rate():.2f} img/s" + (f", {loss}" if loss else "")
    )


def _validation_due(state: dict[str, Any], train: Any) -> bool:
    """At a validation step (every ``val_every`` and the last) not yet validated."""
    step, history = state["step"], state["history"]
    if train.val_every <= 0 or step == 0:
        return False
    if step % train.val_every and step != train.iterations:
        return False
    return not (history and history[-1]["step"] == step)


def _check_batch(net: SegmentationNet, per_process: int) -> None:
    if net.architecture == "upernet" and per_process < 2:
        raise ValueError(
            "upernet needs at least 2 images per process (its pyramid pooling has batch "
            "norm after a 1x1 pooling); raise train.batch_size"
        )


def _datasets(config: DistillConfig, train_dataset: Any, val_dataset: Any) -> tuple[Any, Any, Any]:
    """The training split (without ``data.exclude``'s ids, first ``train.limit_train``),
    the validation split, and the :class:`co2sam.data.exclude.Exclusion` (None without
    ``data.exclude``)."""
    from co2sam.data import build_dataset

    if train_dataset is None:
        train_dataset = build_dataset(config.data, config.data.train_split)
    exclusion = None
    if config.data.exclude:
        from co2sam.data.exclude import exclude_ids, read_id_list

        train_dataset, exclusion = exclude_ids(train_dataset, read_id_list(config.data.exclude))
    train_dataset = _limited(train_dataset, config.train.limit_train)
    if val_dataset is None and config.train.val_every > 0:
        val_dataset = build_dataset(config.data, config.data.val_split)
    if val_dataset is not None and not getattr(val_dataset, "has_masks", True):
        raise ValueError(
            f"validation split {config.data.val_split!r} has no masks; choose another "
            "data.val_split or set train.val_every=0"
        )
    return train_dataset, val_dataset, exclusion


def _limited(dataset: Any, limit: int | None) -> Any:
    """The first ``limit`` images, keeping what the pseudo-label set reads (ids, paths)."""
    limited = limit_dataset(dataset, limit)
    if limited is not dataset:
        limited.image_path = dataset.image_path
    return limited
