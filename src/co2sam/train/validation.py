"""Per-epoch validation during training: evaluate, log, keep the best adapter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from co2sam.train.run_dir import save_adapter_folder


def validate(fabric, config, segmenter, dataset, boxes_fn, state, bar) -> None:
    """Evaluate on rank 0 (label-guided and open), record it, keep the best adapter."""
    record: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"], "metrics": {}}
    if fabric.global_rank == 0:
        from co2sam.evaluate import evaluate_model

        with torch.no_grad():
            record["metrics"] = evaluate_model(
                segmenter,
                dataset,
                boxes_fn,
                modes=("label-guided", "open"),
                batch_size=config.eval.batch_size,
                device=fabric.device,
                limit=config.train.limit_val,
                progress=False,
            )
        guided = record["metrics"].get("label-guided", {}).get("miou")
        opened = record["metrics"].get("open", {}).get("miou")
        bar.print(
            f"epoch {state['epoch']} step {state['step']}: val mIoU "
            f"label-guided {_pct(guided)}, open {_pct(opened)}"
        )
        best = state["best"]
        if guided is not None and (best is None or guided > best["miou"]):
            state["best"] = {
                "epoch": state["epoch"],
                "step": state["step"],
                "miou": float(guided),
                "open_miou": None if opened is None else float(opened),
            }
            save_adapter_folder(
                segmenter, Path(config.train.out_dir) / "best", config, state, state["best"]
            )
    state["history"].append(_plain(record))
    fabric.barrier()


def val_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {}
    for mode, values in record["metrics"].items():
        for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"):
            value = values.get(key)
            if isinstance(value, int | float) and not math.isnan(value):
                metrics[f"val/{mode}/{key}"] = float(value)
    return metrics


def _plain(value: Any) -> Any:
    """Metrics as plain Python (dicts, lists, floats, str, None): weights-only loadable."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"
