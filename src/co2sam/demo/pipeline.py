"""``co2sam demo``: the whole method on generated data, on a CPU, in about a minute.

1. generate a *target* domain (image-level labels; masks only to score) and a small
   *source* validation split (:mod:`co2sam.demo.data`), from scene seeds the
   pretraining never used;
2. load the demo SAM, pretrained with box -> mask supervision on the source domain
   (shipped weights, :mod:`co2sam.demo.model`);
3. box prompts from a simulated detector built on the ground-truth instance masks
   (:mod:`co2sam.demo.detector`), in its ``default`` setting and, beside it, a
   ``harder`` one;
4. Co2SAM training on the target training split with the real :func:`co2sam.train.fit`,
   once per detector setting;
5. evaluate before (plain SAM) and after, label-guided and open
   (:func:`co2sam.evaluate.evaluate_model`), optionally with ablations;
6. the second stage for the default setting: pseudo-labels -> a distilled segmenter,
   evaluated and timed beside Co2SAM (:mod:`co2sam.demo.second_stage`); write the
   report (:mod:`co2sam.demo.report`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from co2sam.config import Co2SamConfig, load_config
from co2sam.demo.data import make_domain, source_val_spec, target_spec
from co2sam.demo.detector import (
    BoxTable,
    box_quality,
    detector_settings,
    simulated_boxes,
    supervision_record,
)
from co2sam.demo.model import demo_sam_path, load_demo_sam

ABLATIONS: dict[str, list[str]] = {
    "without template loss": ["loss.template_weight=0"],
    "without contrastive loss": ["loss.contrastive_weight=0"],
    "without strong view": ["loss.strong_view=false"],
}
"""Ablation name -> config overrides (what each ingredient adds, ``--ablation``)."""


@dataclass
class DemoSettings:
    """Sizes and seeds of a demo run (the training itself is described by the config)."""

    quick: bool = False
    seed: int = 0
    """Seed of the generated scenes (see :func:`co2sam.demo.data.scene_seed`) and of the
    simulated detector."""
    target_train: int = 160
    target_val: int = 64
    source_val: int = 48
    epochs: int = 3
    ablation: bool = False
    detectors: tuple[str, ...] = ("default", "harder")
    """Simulated-detector settings to run, each a full before/after (the first is the
    main result; ablations use it)."""
    overlays: int = 4
    """Target validation images drawn in the overlays and the before/after figure."""

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("the demo needs at least one detector setting")
        for name in self.detectors:
            detector_settings(name, self.seed)  # unknown names fail here


def demo_settings(
    *, quick: bool = False, seed: int = 0, ablation: bool = False, harder_boxes: bool = True
) -> DemoSettings:
    """Full demo or ``quick`` (smaller data, fewer epochs); ``harder_boxes`` adds that run."""
    detectors = ("default", "harder") if harder_boxes else ("default",)
    if quick:
        return DemoSettings(
            quick=True,
            seed=seed,
            target_train=64,
            target_val=32,
            source_val=16,
            epochs=2,
            ablation=ablation,
            detectors=detectors,
        )
    return DemoSettings(seed=seed, ablation=ablation, detectors=detectors)


def demo_config(
    settings: DemoSettings, out_dir: str | Path, overrides: list[str] | None = None
) -> Co2SamConfig:
    """The ``demo`` preset with this run's folders, epochs and the shipped SAM resolved."""
    out_dir = Path(out_dir)
    base = [
        f"data.root={out_dir / 'data' / 'target'}",
        f"train.out_dir={out_dir / 'train'}",
        f"train.epochs={settings.epochs}",
    ]
    config = load_config("demo", base + list(overrides or []))
    if config.model.sam == "demo":
        config.model.sam = str(demo_sam_path())
    return config


@dataclass
class DemoData:
    """The datasets of a demo run and one simulated detector's boxes on each."""

    source_val: Any
    target_train: Any
    target_val: Any
    source_val_boxes: BoxTable
    target_train_boxes: BoxTable
    target_val_boxes: BoxTable
    detector: str = "default"
    specs: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    out_dir: str | Path, settings: DemoSettings, detector: str = "default"
) -> DemoData:
    """Generate the source validation split and the target domain, and their boxes."""
    from co2sam.data.voc import VocDataset

    data_dir = Path(out_dir) / "data"
    source = source_val_spec(num_val=settings.source_val, seed=settings.seed)
    target = target_spec(
        num_train=settings.target_train, num_val=settings.target_val, seed=settings.seed
    )
    source_root = make_domain(data_dir / "source", source)
    target_root = make_domain(data_dir / "target", target)
    source_val = VocDataset(source_root, "val")
    target_train = VocDataset(target_root, "train")
    target_val = VocDataset(target_root, "val")
    data = DemoData(
        source_val=source_val,
        target_train=target_train,
        target_val=target_val,
        source_val_boxes=BoxTable({}),
        target_train_boxes=BoxTable({}),
        target_val_boxes=BoxTable({}),
        specs={"source_val": source.to_dict(), "target": target.to_dict()},
    )
    return with_detector(data, detector, settings.seed)


def with_detector(data: DemoData, detector: str, seed: int) -> DemoData:
    """The same datasets with the boxes of the named simulated-detector setting."""
    settings = detector_settings(detector, seed)
    return DemoData(
        source_val=data.source_val,
        target_train=data.target_train,
        target_val=data.target_val,
        source_val_boxes=simulated_boxes(data.source_val, settings, all_classes=True),
        target_train_boxes=simulated_boxes(data.target_train, settings, all_classes=False),
        target_val_boxes=simulated_boxes(data.target_val, settings, all_classes=True),
        detector=detector,
        specs=data.specs,
    )


def evaluate_both(
    segmenter: Any, data: DemoData, config: Co2SamConfig, *, keep: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scores on the target and source validation splits, both modes.

    Returns ``({"target": {mode: metrics}, "source": {mode: metrics}}, predictions)``
    where predictions maps ``(image_id, mode)`` to the label maps of the first ``keep``
    target images (for the figures).
    """
    from co2sam.evaluate import evaluate_model

    predictions: dict[tuple[str, str], Any] = {}
    wanted = set(data.target_val.ids[:keep])

    def remember(prediction: Any) -> None:
        if prediction.sample.id in wanted:
            key = (prediction.sample.id, prediction.mode)
            predictions[key] = (prediction.label_map.cpu().numpy(), prediction.boxes)

    common = {"batch_size": config.eval.batch_size, "device": "cpu", "progress": False}
    target = evaluate_model(
        segmenter, data.target_val, data.target_val_boxes, on_prediction=remember, **common
    )
    source = evaluate_model(segmenter, data.source_val, data.source_val_boxes, **common)
    return {"target": target, "source": source}, predictions


def adapt(
    config: Co2SamConfig,
    data: DemoData,
    *,
    sam_path: str | Path | None = None,
    progress: bool,
    validation: bool = False,
) -> Any:
    """Co2SAM training (the real ``fit``) on the target training split; returns FitResult.

    validation: validate every ``train.val_every`` epochs on the target validation split
    with the simulated detector's boxes (``co2sam app``'s workspace plots it); the demo
    itself evaluates before and after instead.
    """
    from co2sam.sam import Segmenter, attach_lora
    from co2sam.train.loop import fit

    model = attach_lora(
        load_demo_sam(sam_path), rank=config.model.lora_rank, alpha=config.model.lora_alpha
    )
    return fit(
        config,
        segmenter=Segmenter(model),
        train_dataset=data.target_train,
        boxes_fn=data.target_train_boxes,
        val_dataset=data.target_val if validation else None,
        val_boxes_fn=data.target_val_boxes if validation else None,
        progress=progress,
    )


def machine_record() -> dict[str, Any]:
    """Threads, CPUs and load average: what a demo time depends on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "torch_threads": torch.get_num_threads(),
        "cpus": cpus,
        "load_average_1_5_15_min": [round(value, 2) for value in load],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def run_demo(
    out_dir: str | Path = "co2sam-demo",
    *,
    quick: bool = False,
    ablation: bool = False,
    seed: int = 0,
    harder_boxes: bool = True,
    overrides: list[str] | None = None,
    sam_path: str | Path | None = None,
    console: Any = None,
    progress: bool = True,
    figures: bool = True,
    second_stage: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` and return the report (also written as report.json).

    harder_boxes: also adapt with the ``harder`` simulated detector, reported beside
        the default one.
    second_stage: also distill the main run's Co2SAM pseudo-labels into a segmenter and
        report it (:mod:`co2sam.demo.second_stage`).
    overrides: ``section.field=value`` config overrides (as ``--set``).
    sam_path: demo SAM folder (default: the shipped ``co2sam/assets/demo_sam``).
    """
    from rich.console import Console

    from co2sam.demo import report as reporting
    from co2sam.metrics import write_report
    from co2sam.sam import Segmenter

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    if (out_dir / "train").exists():
        raise FileExistsError(
            f"{out_dir} already holds a demo run; remove it or pass another --out folder"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} is not empty and is not a demo run; the demo writes config.yaml, "
            "report.json, train/ and images/ into its folder, so pass a new or empty --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    started = time.perf_counter()
    machine_at_start = machine_record()
    timings: dict[str, float] = {}
    settings = demo_settings(quick=quick, seed=seed, ablation=ablation, harder_boxes=harder_boxes)
    config = demo_config(settings, out_dir, overrides)
    config.save(out_dir / "config.yaml")

    def step(message: str) -> None:
        console.print(f"[bold cyan]demo[/] [{time.perf_counter() - started:5.1f} s] {message}")

    step("generating the source and target domains (shapes with co-occurring classes)")
    data = prepare_data(out_dir, settings, settings.detectors[0])
    timings["data"] = time.perf_counter() - started
    step(
        f"target: {len(data.target_train)} training images (image-level labels), "
        f"{len(data.target_val)} validation images; boxes: a simulated detector built on "
        "the ground-truth instance masks"
    )
    plain = Segmenter(load_demo_sam(sam_path))
    runs: dict[str, dict[str, Any]] = {}
    distilled: dict[str, Any] | None = None
    main_run: tuple[Any, Any, Any] | None = None
    figures_maps: tuple[Any, Any] | None = None
    for detector in settings.detectors:
        run_data = data if detector == data.detector else with_detector(data, detector, seed)
        run_config = config
        if detector != settings.detectors[0]:
            run_config = demo_config(
                settings,
                out_dir,
                list(overrides or [])
                + [f"train.out_dir={out_dir / f'{detector}-boxes' / 'train'}"],
            )
        quality = {
            "target_train": box_quality(run_data.target_train, run_data.target_train_boxes),
            "target_val": box_quality(run_data.target_val, run_data.target_val_boxes),
        }
        step(
            f"{detector} boxes: {run_data.target_train_boxes.count()} training boxes, "
            f"recall@0.5 {quality['target_train']['recall']:.2f}, mean best IoU "
            f"{quality['target_train']['mean_best_iou']:.2f}, "
            f"{quality['target_train']['false_per_image']:.2f} false boxes per image"
        )
        keep = settings.overlays if figures_maps is None else 0
        before, before_maps = evaluate_both(plain, run_data, run_config, keep=keep)
        step(reporting.one_line(f"before ({detector} boxes)", before))
        step(f"Co2SAM training ({detector} boxes, {run_config.train.epochs} epochs, LoRA only)")
        tick = time.perf_counter()
        result = adapt(run_config, run_data, sam_path=sam_path, progress=progress)
        timings[f"train_{detector}"] = time.perf_counter() - tick
        after, after_maps = evaluate_both(result.segmenter, run_data, run_config, keep=keep)
        step(reporting.one_line(f"after ({detector} boxes)", after))
        if figures_maps is None:
            figures_maps = (before_maps, after_maps)
        runs[detector] = {
            "supervision": supervision_record(detector_settings(detector, seed)),
            "box_quality": quality,
            "before": before,
            "after": after,
            "adapter": str(result.last_adapter),
        }
        if detector == settings.detectors[0]:
            main_run = (run_config, run_data, result.segmenter)

    ablations: dict[str, Any] = {}
    if ablation:
        main = settings.detectors[0]
        for name, extra in ABLATIONS.items():
            step(f"ablation ({main} boxes): {name}")
            variant_dir = out_dir / "ablations" / name.replace(" ", "-")
            variant = demo_config(
                settings, out_dir, list(overrides or []) + extra + [f"train.out_dir={variant_dir}"]
            )
            fitted = adapt(variant, data, sam_path=sam_path, progress=progress)
            ablations[name] = evaluate_both(fitted.segmenter, data, variant)[0]
            step(reporting.one_line(name, ablations[name]))

    if second_stage and main_run is not None:
        # Last, so that nothing it draws from the global RNGs can change the rows above.
        from co2sam.demo.second_stage import run_second_stage, second_stage_settings

        main = settings.detectors[0]
        stage = second_stage_settings(quick=quick)
        step(
            f"second stage ({main} boxes): Co2SAM's pseudo-labels of the target training "
            f"split -> a SegFormer trained on them ({stage.iterations} steps, co2sam distill)"
        )
        tick = time.perf_counter()
        distilled = run_second_stage(*main_run, out_dir / "second_stage", stage, progress=progress)
        timings["second_stage"] = time.perf_counter() - tick
        step(reporting.one_line(distilled["row"], distilled["results"]))
        step(reporting.speed_line(distilled))

    timings["total"] = time.perf_counter() - started
    report = reporting.build_report(
        settings=asdict(settings),
        config=config.to_dict(),
        class_names=list(data.target_val.class_names),
        domains=data.specs,
        runs=runs,
        ablations=ablations,
        timings={key: round(value, 1) for key, value in timings.items()},
        machine={"at_start": machine_at_start, "at_end": machine_record()},
        second_stage=distilled,
    )
    if figures and figures_maps is not None:
        report["files"] = reporting.write_figures(
            out_dir, data, *figures_maps, list(data.target_val.class_names)
        )
    write_report(out_dir / "report.json", report)
    console.print(reporting.results_table(report))
    if distilled is not None:
        console.print(reporting.speed_line(distilled))
    console.print(reporting.class_table(report))
    step(f"done in {timings['total']:.0f} s; report: {out_dir / 'report.json'}")
    return report
