"""``co2sam predict``: segment an image or a folder of images (open mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from co2sam.commands.common import ConfigOption, SetOption, console, fail, resolve_config


def predict(
    images: Path = typer.Argument(..., help="An image file or a folder of images."),
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    classes: str | None = typer.Option(
        None, help='Comma-separated class names, e.g. "dog,sofa" (default: the config\'s dataset).'
    ),
    sam: str | None = typer.Option(
        None, help="SAM weights (default: the adapter's base or model.sam)."
    ),
    adapter: str | None = typer.Option(None, help="Adapter folder (e.g. runs/voc/best)."),
    detector: str | None = typer.Option(
        None, help="Grounding DINO hub id or folder: detect all classes at once."
    ),
    boxes: Path | None = typer.Option(
        None, help="Boxes per image: a JSON file {image: [{xyxy, class, score}]} or a box cache."
    ),
    out: Path = typer.Option(Path("predictions"), help="Output folder."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Label PNG, colour overlay and per-class areas (JSON) for each image."""
    from co2sam.commands.evaluate import load_segmenter, resolve_device
    from co2sam.predict import list_images, predict_images

    if (detector is None) == (boxes is None):
        fail("give exactly one box source: --detector ID_OR_FOLDER or --boxes FILE")
    cfg = resolve_config(config, overrides, **{"model.adapter": adapter, "eval.device": device})
    class_names = _class_names(cfg, classes, config)
    try:
        image_paths = list_images(images)
    except FileNotFoundError as error:
        fail(str(error))
        raise
    boxes_fn = _boxes_fn(cfg, class_names, detector, boxes)
    segmenter, base = load_segmenter(
        sam or (None if cfg.model.adapter else cfg.model.sam),
        cfg.model.adapter,
        resolve_device(cfg.eval.device),
    )
    results = predict_images(segmenter, image_paths, boxes_fn, class_names, out)
    for result in results:
        found = ", ".join(
            f"{name} {100 * area['fraction']:.1f}%"
            for name, area in result.areas.items()
            if name != class_names[0]
        )
        console.print(f"{result.image.name}: {found or 'background only'}")
    console.print(f"{len(results)} image(s) segmented with {base}; outputs in {out}")


def _class_names(cfg: Any, classes: str | None, config: str | None) -> tuple[str, ...]:
    from co2sam.classes import dataset_classes

    if classes:
        names = [name.strip() for name in classes.split(",") if name.strip()]
        if len(set(names)) != len(names):
            fail(f"--classes lists a class twice: {classes!r}")
        return ("background", *names)
    if config is None:
        fail('give the classes: --classes "dog,sofa" or --config voc')
    if cfg.data.dataset in ("voc", "coco") and not cfg.data.root:
        return dataset_classes(cfg.data.dataset)
    from co2sam.commands.evaluate import load_split

    return tuple(load_split(cfg, cfg.data.val_split).class_names)


def _boxes_fn(cfg: Any, class_names: tuple[str, ...], detector: str | None, boxes: Path | None):
    """(image stem, HWC uint8 image) -> Boxes in the original frame."""
    from co2sam.records import Boxes

    max_boxes = cfg.prompts.max_boxes
    if detector is not None:
        from co2sam.prompts import GroundingDinoPrompter

        cfg.prompts.detector = detector
        try:
            prompter = GroundingDinoPrompter.from_config(cfg, class_names)
        except (OSError, ValueError) as error:
            fail(f"cannot load detector {detector!r}: {error}")
            raise
        return lambda stem, image: prompter(image, None).top_k(max_boxes)
    from co2sam.predict import read_boxes_json

    try:
        if boxes.suffix == ".jsonl":
            from co2sam.prompts import load_box_cache

            by_id: Any = load_box_cache(boxes, {"class_names": list(class_names)})
        else:
            by_id = read_boxes_json(boxes, class_names)
    except (OSError, ValueError) as error:
        fail(str(error))
        raise

    def lookup(stem: str, image: Any) -> Boxes:
        if stem not in by_id:
            console.print(f"[yellow]{boxes} has no boxes for {stem}: all background[/]")
            return Boxes()
        return by_id[stem].top_k(max_boxes)

    return lookup
