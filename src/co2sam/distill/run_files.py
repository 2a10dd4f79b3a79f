"""What a distill run folder holds, and writing it (rank 0 only, every write atomic)::

    RUN_DIR/config.yaml               the resolved DistillConfig
    RUN_DIR/checkpoints/last.pt       resumable state (every train.checkpoint_every steps
                                      and at each validation), weights_only-loadable
    RUN_DIR/best/  RUN_DIR/last/      segmenter folders (co2sam.models.segmentation_net):
                                      best open-mode val mIoU, and the final weights
    RUN_DIR/tensorboard/  csv/        logs (co2sam.train.monitor)

The checkpoint holds the network's state dict, the optimizer and scheduler states, the
position (step, epoch, batch in epoch), the best validation and its history, every
process's torch RNG state (dropout, drop-path and Mask2Former's point sampling draw from
it) and rank 0's numpy/python states. Reading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from co2sam.config import SETTINGS_CHANGES
from co2sam.models.segmentation_net import SegmentationNet, save_net
from co2sam.train.checkpoint import (
    CheckpointError,
    last_checkpoint_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

KIND = "distill"


def process_rng_states(fabric: Any) -> list[dict[str, torch.Tensor]]:
    """Every process's torch RNG states (CPU, and CUDA when used), gathered on all ranks."""
    states = {"cpu": torch.get_rng_state()}
    if fabric.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(fabric.device)
    if fabric.world_size == 1:
        return [states]
    gathered = fabric.all_gather({key: value.to(fabric.device) for key, value in states.items()})
    return [{key: gathered[key][rank].cpu() for key in states} for rank in range(fabric.world_size)]


def restore_rng(fabric: Any, checkpoint: dict[str, Any]) -> None:
    """Put back this process's torch RNG (and rank 0's numpy/python) states."""
    per_rank = checkpoint["process_rng"]
    if len(per_rank) != fabric.world_size:
        raise CheckpointError(
            f"the checkpoint was written by {len(per_rank)} process(es); resume it with the "
            f"same --devices x --num-nodes (now {fabric.world_size})"
        )
    if fabric.global_rank == 0:
        set_rng_state(checkpoint["rng"])
    mine = per_rank[fabric.global_rank]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and fabric.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], fabric.device)


def save_distill_state(fabric, run_dir, net, optimizer, scheduler, config, state) -> None:
    """Write checkpoints/last.pt (every process joins the RNG gather; rank 0 writes)."""
    process_rng = process_rng_states(fabric)
    if fabric.global_rank != 0:
        return
    save_checkpoint(
        last_checkpoint_path(run_dir),
        {
            "kind": KIND,
            "model": {name: value.detach().cpu() for name, value in net.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "process_rng": process_rng,
            "config": config.to_dict(),
            **state,
        },
    )


def check_distill_checkpoint(checkpoint: dict[str, Any], run_dir: Path) -> None:
    if checkpoint.get("kind") != KIND:
        raise CheckpointError(
            f"{run_dir} holds a `co2sam train` run, not a `co2sam distill` run; resume it "
            "with `co2sam train --resume`"
        )


def save_segmenter_folder(
    net: SegmentationNet, folder: Path, config: Any, state: dict[str, Any]
) -> Path:
    """A segmenter folder with what evaluate/predict/export need to run it."""
    return save_net(
        net,
        folder,
        {
            "pretrained": config.model.pretrained,
            "pseudo_labels": config.pseudo_labels.dir,
            "step": state["step"],
            "best": state["best"],
            "eval": asdict(config.eval),
            "config": config.to_dict(),
            # Settings changed when the run was resumed (config is the latest).
            SETTINGS_CHANGES: state.get(SETTINGS_CHANGES, []),
        },
    )
