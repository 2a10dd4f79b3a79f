"""Validation of the second stage during training: the real val masks, open mode.

Rank 0 evaluates the plain (unwrapped) network while the other processes wait; the
best open-mode mIoU so far is kept as ``best/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from co2sam.distill.run_files import save_segmenter_folder
from co2sam.inference.segmenter import SegmenterPredictor

MODE = "open"


def validate(fabric, config, net, dataset, state, bar) -> None:
    """Evaluate on rank 0, record it in ``state["history"]``, keep the best segmenter."""
    from co2sam.evaluate import evaluate_predictor

    record: dict[str, Any] = {"step": state["step"], "epoch": state["epoch"], "metrics": {}}
    if fabric.global_rank == 0:
        predictor = SegmenterPredictor(net, scale=config.eval.scale)
        metrics = evaluate_predictor(
            predictor, dataset, modes=(MODE,), limit=config.train.limit_val, progress=False
        )[MODE]
        record["metrics"] = {
            MODE: {key: metrics[key] for key in ("miou", "pixel_accuracy", "mean_accuracy")}
        }
        miou = metrics["miou"]
        bar.print(f"step {state['step']}: val mIoU ({MODE} mode) {_pct(miou)}")
        best = state["best"]
        if miou is not None and (best is None or miou > best["miou"]):
            state["best"] = {"step": state["step"], "miou": float(miou), "mode": MODE}
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
