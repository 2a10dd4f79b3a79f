"""Validation of the second stage during training: the real val masks, open mode.

Every process segments its share of the split (images ``r, r + W, ...``, as training's
validation does) with the plain (unwrapped) network, and the confusion matrices are
summed, so all processes see the same numbers and none waits for one to score 5,000
COCO images. The best open-mode mIoU so far is kept as ``best/`` (written by rank 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from co2sam.distill.run_files import save_segmenter_folder
from co2sam.inference.segmenter import SegmenterPredictor

MODE = "open"


def validate(fabric, config, net, dataset, state, bar) -> None:
    """Evaluate on every process, record it in ``state["history"]``, keep the best segmenter.

    ``train.limit_val`` takes the split's first images before they are shared out. The
    network's buffers (BatchNorm statistics, which each process updated on its own
    images) are first set to rank 0's, the network that ``best/`` and ``last/`` hold.
    Validation leaves the global RNGs as it found them.
    """
    from co2sam.data.preflight import SplitSubset
    from co2sam.evaluate import evaluate_predictor
    from co2sam.parallel import from_fabric

    processes = from_fabric(fabric)
    limit = config.train.limit_val
    if limit is not None:
        dataset = SplitSubset(dataset, range(min(limit, len(dataset))))
    shard = SplitSubset(dataset, processes.shard(range(len(dataset))))
    if processes.distributed:
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer, src=0)
    record: dict[str, Any] = {"step": state["step"], "epoch": state["epoch"], "metrics": {}}
    cuda = [fabric.device] if fabric.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        predictor = SegmenterPredictor(net, scale=config.eval.scale)
        metrics = evaluate_predictor(
            predictor,
            shard,
            modes=(MODE,),
            progress=False,
            reduce_across_processes=processes.distributed,
        )[MODE]
    record["metrics"] = {
        MODE: {key: metrics[key] for key in ("miou", "pixel_accuracy", "mean_accuracy")}
    }
    miou = metrics["miou"]
    bar.print(f"step {state['step']}: val mIoU ({MODE} mode) {_pct(miou)}")
    best = state["best"]
    if miou is not None and (best is None or miou > best["miou"]):
        state["best"] = {"step": state["step"], "miou": float(miou), "mode": MODE}
        if processes.is_main:
            save_segmenter_folder(net, Path(config.train.out_dir) / "best", config, state)
    state["history"].append(record)
    fabric.barrier()


def val_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``val/open/miou`` ... of one history record, for the loggers."""
    return {
        f"val/{mode}/{key}": float(value)
        for mode, values in record["metrics"].items()
        for key, value in values.items()
        if isinstance(value, int | float) and not math.isnan(value)
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"
