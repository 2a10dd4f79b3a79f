"""``co2sam predict``: segment an image or a folder of images (open mode), with SAM and
box prompts or with a distilled segmenter alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from co2sam.commands.common import (
    AdapterOption,
    AdapterSamOption,
    ConfigOption,
    DeviceOption,
    SetOption,
    console,
    fail,
    resolve_config,
)
from co2sam.commands.guards import (
    DevicesOption,
    NumNodesOption,
    ctrl_c_resumable,
    launch,
    output_errors,
)

PREDICT_OUTPUTS = ("labels", "overlays", "details", "skipped.txt")
"""What ``predict`` writes in its folder (``--overwrite`` clears these)."""


def predict(
    images: Path = typer.Argument(
        ..., metavar="IMAGES", show_default=False, help="An image file or a folder of images."
    ),
    config: str | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    classes: str | None = typer.Option(
        None, help='Comma-separated class names, e.g. "dog,sofa" (default: the config\'s dataset).'
    ),
    sam: str | None = AdapterSamOption,
    adapter: str | None = AdapterOption,
    detector: str | None = typer.Option(
        None,
        help="Detector hub id or folder (Grounding DINO, or SAM 3: facebook/sam3): "
        "detect all classes at once.",
    ),
    boxes: Path | None = typer.Option(
        None, help="Boxes per image: a JSON file {image: [{xyxy, class, score}]} or a box cache."
    ),
    out: Path = typer.Option(Path("predictions"), help="Output folder."),
    overwrite: bool = typer.Option(
        False,
        show_default=False,
        help="Replace an output folder of another prediction run instead of refusing.",
    ),
    device: str | None = DeviceOption,
    devices: int | None = DevicesOption,
    num_nodes: int | None = NumNodesOption,
    segmenter: Path | None = typer.Option(
        None,
        "--segmenter",
        help="A `co2sam distill` segmenter folder: runs alone (open mode; no boxes, no "
        "detector, classes from the folder).",
    ),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="With --segmenter: multi-scale + flip test-time augmentation."
    ),
) -> None:
    """Label PNG, colour overlay and per-class areas (JSON) for each image (open mode).

    A folder: every readable image is segmented and the unreadable ones are listed (and
    kept in OUT/skipped.txt). Resumable: the same command on the same folder continues.
    With --devices N (--num-nodes M) the images are shared among the processes.
    """
    from co2sam.commands.inference import (
        base_sam,
        fingerprint,
        load_segmenter,
        load_segmenter_folder,
        model_identity,
        open_output_folder,
        run_device,
        segmenter_identity,
    )
    from co2sam.data.preflight import SKIPPED_FILE, SkipLog
    from co2sam.inference.sam import SamPredictor
    from co2sam.predict import list_images, output_names, predict_images

    if segmenter is not None:
        if detector or boxes or sam or adapter or classes:
            fail(
                "--segmenter runs alone: drop --detector, --boxes, --sam, --adapter and "
                "--classes (its classes are the ones it was trained on)"
            )
    elif (detector is None) == (boxes is None):
        fail("give exactly one box source: --detector ID_OR_FOLDER or --boxes FILE")
    elif tta is not None:
        fail("--tta applies to --segmenter only")
    cfg = resolve_config(config, overrides, **{"model.adapter": adapter, "eval.device": device})
    if segmenter is not None:
        class_names = _segmenter_classes(segmenter)
    else:
        class_names = _class_names(cfg, classes, config)
    try:
        image_paths = list_images(images)
        names = output_names(image_paths)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
        raise
    processes = launch(devices, num_nodes, cfg.eval.device)
    identity = {
        "command": "predict",
        "images": str(images.resolve()),
        "classes": list(class_names),
        **model_identity(cfg, sam),
        "detector": detector,
        "boxes": str(boxes.resolve()) if boxes else None,
        "boxes_sha256": fingerprint(boxes) if boxes else None,
        "max_boxes": cfg.prompts.max_boxes,
        "output_names": "file name",  # labels/<image file name>.png (folders of 0.x: stems)
    }
    if segmenter is not None:
        identity.update(segmenter_identity(segmenter, tta))
    by_name = {name: path for path, name in names.items()}

    def files_of(name: str, record: Any) -> list[str]:
        return [f"labels/{name}.png", f"overlays/{name}.png", f"details/{name}.json"]

    def stale(name: str, record: Any) -> str | None:
        """An image changed since its outputs were made (rewritten, cut, replaced)."""
        path = by_name.get(name)
        if path is None or "input" not in record or record["input"] == _stamp(path):
            return None
        return f"{path}: changed since"

    with output_errors(out), ctrl_c_resumable("predict"):
        folder = open_output_folder(
            out,
            identity,
            PREDICT_OUTPUTS,
            overwrite=overwrite,
            processes=processes,
            files_of=files_of,
            stale=stale,
        )
        if processes.is_main and folder.redone:
            console.print(f"[yellow]{escape(folder.redo_summary())}[/]")
        try:
            done = folder.done
            todo = processes.shard([path for path in image_paths if names[path] not in done])
            device_used = run_device(processes, cfg)
            if segmenter is not None:
                predictor, _ = load_segmenter_folder(segmenter, device_used, tta=tta)
                base = f"segmenter {segmenter} ({predictor.describe()})"
            else:
                if processes.distributed:
                    cfg.prompts.device = str(processes.device)  # the detector runs beside SAM
                boxes_fn = _boxes_fn(cfg, class_names, detector, boxes)
                model, base = load_segmenter(base_sam(cfg, sam), cfg.model.adapter, device_used)
                predictor = SamPredictor(
                    model, lambda sample: boxes_fn(sample.id, sample.image), len(class_names)
                )
            skipped = SkipLog(out / SKIPPED_FILE)

            def on_result(result: Any) -> None:
                folder.record(result.name, areas=result.areas, input=_stamp(result.image))
                found = ", ".join(
                    f"{name} {100 * area['fraction']:.1f}%"
                    for name, area in result.areas.items()
                    if name != class_names[0]
                )
                console.print(f"{result.image.name}: {found or 'background only'}")

            predict_images(
                predictor,
                todo,
                class_names,
                out,
                names=names,
                progress=processes.is_main,
                on_unreadable=lambda path, reason: skipped.add(names[path], str(path), reason),
                on_result=on_result,
            )
        finally:
            folder.close()
        processes.barrier()
    if not processes.is_main:
        return
    finished = folder.records()
    segmented = [path for path in image_paths if names[path] in finished]
    earlier = sum(names[path] in folder.done for path in segmented)
    listed = skipped.listed()
    unreadable = [p for p in image_paths if names[p] in listed and names[p] not in finished]
    if unreadable:
        removed = sum(names[path] in folder.redone for path in unreadable)
        console.print(
            f"[yellow]{len(unreadable)} unreadable image(s), not segmented"
            + (f" (earlier outputs of {removed} of them removed)" if removed else "")
            + ":[/]"
        )
        for path in unreadable:
            console.print(f"  {path}: {listed[names[path]]}")
    if not segmented:
        fail(f"no image of {images} could be read (see {out / SKIPPED_FILE})")
    now = f"{len(segmented) - earlier} image(s) segmented with {base}"
    if earlier:
        now += f" ({earlier} more done by an earlier run)"
    console.print(f"{now}; outputs of {len(segmented)} in {out}")


def _stamp(path: Path) -> list[int] | None:
    """What tells a changed input file: [size, modification time in ns] (None: gone)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def _segmenter_classes(folder: Path) -> tuple[str, ...]:
    """The class names a segmenter folder was trained for (exits on a bad folder)."""
    from co2sam.models.segmentation_net import SegmentationNetError, read_net_metadata

    try:
        return tuple(read_net_metadata(folder)["class_names"])
    except SegmentationNetError as error:
        fail(str(error))
        raise


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
    from co2sam.commands.inference import load_split

    return tuple(load_split(cfg, cfg.data.val_split).class_names)


def _boxes_fn(cfg: Any, class_names: tuple[str, ...], detector: str | None, boxes: Path | None):
    """(output name, HWC uint8 image) -> Boxes in the original frame."""
    from co2sam.records import Boxes

    max_boxes = cfg.prompts.max_boxes
    if detector is not None:
        from co2sam.prompts import build_prompter

        cfg.prompts.detector = detector
        try:
            prompter = build_prompter(cfg, class_names)
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

    def lookup(name: str, image: Any) -> Boxes:
        key = name if name in by_id else Path(name).stem
        if key not in by_id:
            console.print(f"[yellow]{boxes} has no boxes for {name}: all background[/]")
            return Boxes()
        return by_id[key].top_k(max_boxes)

    return lookup
