"""Write label maps as palette PNGs: pseudo-labels of a training split, evaluation
predictions, and the VOC test-server layout.

Pseudo-labels are what a second-stage segmenter (DeepLab, ...) trains on, so they are
made in label-guided mode by default: the image-level labels are known on a training
split, and filtering by them is what the published pipeline does. Layout written by
:func:`export_pseudo_labels` (the VOC one, so VOC loaders read it)::

    out_dir/SegmentationClass/<id>.png          palette PNGs (VOC colours), 0..C
    out_dir/ImageSets/Segmentation/<split>.txt  the ids written
    out_dir/report.json                         mode, box source, mIoU vs. ground truth
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from co2sam.evaluate import Prediction, evaluate_model
from co2sam.records import Boxes, Sample
from co2sam.visualize import overlay, save_image, save_label_png

VOC_TEST_FOLDER = Path("results/VOC2012/Segmentation/comp6_test_cls")
"""Where the VOC evaluation server expects segmentation results (comp6: trained with
data beyond VOC, as SAM and Grounding DINO are)."""


class PredictionWriter:
    """An ``on_prediction`` callback that writes each mode's label maps as palette PNGs.

    label_folders: mode -> folder of ``<id>.png`` label maps (modes not listed are skipped).
    overlay_folders: mode -> folder of ``<id>.png`` colour overlays (image, classes, boxes).
    """

    def __init__(
        self,
        label_folders: Mapping[str, Path],
        overlay_folders: Mapping[str, Path] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.label_folders = {mode: Path(folder) for mode, folder in label_folders.items()}
        self.overlay_folders = {m: Path(f) for m, f in (overlay_folders or {}).items()}
        self.class_names = class_names
        self.written: dict[str, list[str]] = {mode: [] for mode in self.label_folders}

    def __call__(self, prediction: Prediction) -> None:
        mode, image_id = prediction.mode, prediction.sample.id
        if mode not in self.label_folders and mode not in self.overlay_folders:
            return
        label = prediction.label_map.to("cpu").numpy().astype("uint8")
        if mode in self.label_folders:
            save_label_png(self.label_folders[mode] / f"{image_id}.png", label)
            self.written[mode].append(image_id)
        if mode in self.overlay_folders:
            image = overlay(
                prediction.sample.image,
                label,
                boxes=_boxes_shown(prediction.boxes, prediction.sample, mode),
                class_names=self.class_names,
            )
            save_image(self.overlay_folders[mode] / f"{image_id}.png", image)


def _boxes_shown(boxes: Boxes, sample: Sample, mode: str) -> Boxes:
    """The boxes that took part in this mode's label map (label-guided drops some)."""
    if mode != "label-guided":
        return boxes
    return boxes.select([int(c) in sample.labels for c in boxes.classes])


def export_pseudo_labels(
    segmenter: Any,
    dataset: Any,
    boxes_fn: Callable[[Sample], Boxes],
    out_dir: str | Path,
    *,
    mode: str = "label-guided",
    split: str | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    progress: bool = True,
    num_workers: int = 0,
    compat: str = "paper",
) -> dict[str, Any]:
    """Segment every image of ``dataset`` in one mode and write the VOC layout above.

    compat: the label-map assembly (``eval.compat``), see :func:`evaluate_model`.

    Returns the mode's metrics against the ground truth (``num_images`` 0 and None
    values when the split has no masks), plus ``label_folder`` and ``num_written``.
    """
    out_dir = Path(out_dir)
    label_folder = out_dir / "SegmentationClass"
    writer = PredictionWriter({mode: label_folder})
    results = evaluate_model(
        segmenter,
        dataset,
        boxes_fn,
        modes=(mode,),
        batch_size=batch_size,
        limit=limit,
        progress=progress,
        on_prediction=writer,
        num_workers=num_workers,
        compat=compat,
    )
    ids = writer.written[mode]
    write_split_list(out_dir, split or getattr(dataset, "split", "pseudo"), ids)
    return {**results[mode], "label_folder": str(label_folder), "num_written": len(ids)}


def write_split_list(out_dir: str | Path, split: str, ids: Sequence[str]) -> Path:
    """``out_dir/ImageSets/Segmentation/<split>.txt``: the ids written, one per line."""
    split_file = Path(out_dir) / "ImageSets" / "Segmentation" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{image_id}\n" for image_id in ids))
    return split_file
