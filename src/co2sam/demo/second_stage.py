"""The demo's second stage: Co2SAM's pseudo-labels -> a distilled segmenter, run alone.

After Co2SAM has adapted the demo SAM, the demo

1. writes label-guided pseudo-labels of the target training split (the adapted SAM with
   the simulated detector's boxes; ``co2sam pseudo-labels``) and scores them against the
   masks it never trained on (the pseudo-label quality);
2. trains a small SegFormer from scratch on them (``co2sam distill``, the same Fabric
   loop; validation on the target val masks at the end);
3. evaluates it like the SAM rows: target and source validation, label-guided (its
   classes restricted to the image's labels) and open (no labels, no boxes);
4. times inference per image side by side in this process, on the same images and
   threads: Co2SAM (SAM encoder + decoder over the boxes + label map; the simulated
   detector costs nothing, so a real detector's time is not in it) against the
   segmenter alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SEGMENTER_ROW = "distilled SegFormer (no boxes)"


@dataclass
class SecondStageSettings:
    """Size of the demo's distillation (a tiny SegFormer from scratch on 128 px images)."""

    iterations: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    timed_images: int = 16
    """Target validation images whose inference is timed (after one warm-up pass)."""


def second_stage_settings(*, quick: bool = False) -> SecondStageSettings:
    """The same 150 steps in both (80 left seeds 3 and 4 of --quick near 50 mIoU, under-
    trained; 150 gave 86 and 84); --quick times fewer images."""
    return SecondStageSettings(timed_images=8) if quick else SecondStageSettings()


def distill_config(
    settings: SecondStageSettings,
    pseudo_labels: Path,
    out_dir: Path,
    overrides: Sequence[str] = (),
) -> Any:
    """The demo's DistillConfig: SegFormer's recipe scaled to 128 px and a CPU.

    overrides: more ``section.field=value`` settings (the app's small workspace limits
    the images).
    """
    from co2sam.distill.config import load_distill_config

    return load_distill_config(
        None,
        [
            "model.architecture=segformer",
            "model.pretrained=tiny",
            "data.dataset=synthetic",
            "data.num_workers=0",
            f"pseudo_labels.dir={pseudo_labels}",
            "augment.scale=[512,128]",
            "augment.crop_size=128",
            "train.accelerator=cpu",
            "train.precision=32-true",
            f"train.batch_size={settings.batch_size}",
            f"train.iterations={settings.iterations}",
            f"train.val_every={settings.iterations}",
            "train.checkpoint_every=100000",
            f"train.out_dir={out_dir}",
            "optim.warmup_steps=20",
            f"optim.lr={settings.lr}",
            "eval.scale=[512,128]",
            *overrides,
        ],
    )


def run_second_stage(
    config: Any,
    data: Any,
    co2sam_segmenter: Any,
    out_dir: Path,
    settings: SecondStageSettings,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Pseudo-labels -> distill -> evaluate -> time; returns the report's ``second_stage``.

    config: the demo's Co2SamConfig (eval batch size). data: the demo's DemoData.
    co2sam_segmenter: the adapted SAM (:class:`co2sam.sam.Segmenter`).
    """
    from co2sam.distill.loop import distill
    from co2sam.evaluate import evaluate_predictor
    from co2sam.inference.sam import SamPredictor
    from co2sam.inference.segmenter import SegmenterPredictor
    from co2sam.pseudo_labels import export_pseudo_labels

    pseudo_dir = out_dir / "pseudo_labels"
    quality = export_pseudo_labels(
        co2sam_segmenter,
        data.target_train,
        data.target_train_boxes,
        pseudo_dir,
        split="train",
        batch_size=config.eval.batch_size,
        progress=False,
    )
    tick = time.perf_counter()
    result = distill(
        distill_config(settings, pseudo_dir, out_dir / "distill"),
        train_dataset=data.target_train,
        val_dataset=data.target_val,
        progress=progress,
    )
    train_seconds = time.perf_counter() - tick
    net = result.net.eval()
    segmenter = SegmenterPredictor(net, scale=(512, 128))
    common = {"batch_size": config.eval.batch_size, "progress": False}
    results = {
        "target": evaluate_predictor(segmenter, data.target_val, **common),
        "source": evaluate_predictor(segmenter, data.source_val, **common),
    }
    co2sam = SamPredictor(co2sam_segmenter, data.target_val_boxes, len(data.target_val.class_names))
    speed = time_side_by_side(
        {"co2sam": co2sam, "segmenter": segmenter}, data.target_val, settings.timed_images
    )
    return {
        "row": SEGMENTER_ROW,
        "results": results,
        "pseudo_labels": {
            "folder": str(pseudo_dir),
            "miou_label_guided": quality["miou"],
            "by_min_confidence": quality["confidence_quality"],
        },
        "segmenter": str(result.last_dir),
        "parameters": sum(p.numel() for p in net.parameters()),
        "distill_iterations": result.step,
        "distill_seconds": round(train_seconds, 1),
        "speed": speed,
    }


def time_side_by_side(
    predictors: dict[str, Any], dataset: Any, images: int, rounds: int = 3
) -> dict[str, Any]:
    """Seconds per image of each predictor (open mode), interleaved on the same images.

    Each predictor first segments the images once (warm-up); then ``rounds`` times every
    predictor segments them all, one image at a time, in turn; the fastest round counts
    (the least disturbed by other work on the machine).
    """
    samples = [dataset[index] for index in range(min(images, len(dataset)))]
    best = dict.fromkeys(predictors, float("inf"))
    with torch.inference_mode():
        for attempt in range(rounds + 1):
            for name, predictor in predictors.items():
                predictor.model.eval()
                start = time.perf_counter()
                for sample in samples:
                    predictor.predict([sample], ("open",))
                elapsed = (time.perf_counter() - start) / len(samples)
                if attempt > 0:
                    best[name] = min(best[name], elapsed)
    co2sam, segmenter = best.get("co2sam"), best.get("segmenter")
    return {
        "seconds_per_image": {name: round(value, 5) for name, value in best.items()},
        "images": len(samples),
        "threads": torch.get_num_threads(),
        "segmenter_speedup": round(co2sam / segmenter, 1) if co2sam and segmenter else None,
        "note": "Co2SAM's time is the SAM encoder, decoder and label map with cached boxes; "
        "a real detector (Grounding DINO) would add its own time per image",
    }
