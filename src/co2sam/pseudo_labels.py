"""Write label maps as palette PNGs: pseudo-labels of a training split, evaluation
predictions, and the VOC test-server layout.

Pseudo-labels are what a second-stage segmenter (DeepLab, ...) trains on, so they are
made in label-guided mode by default: the image-level labels are known on a training
split, and filtering by them is what the published pipeline does. Layout written by
:func:`export_pseudo_labels` (the VOC one, so VOC loaders read it)::

    out_dir/SegmentationClass/<id>.png          palette PNGs (VOC colours), 0..C
    out_dir/Confidence/<id>.png                 8-bit grayscale, round(255 x confidence)
    out_dir/ImageSets/Segmentation/<split>.txt  the ids written
    out_dir/report.json                         mode, box source, quality vs. ground truth

Confidence of a pixel: how strongly the box prompts back its label, box score x SAM's mask
probability (:func:`co2sam.semantic.label_confidence`); ``co2sam distill`` can ignore the
pixels below a threshold (``pseudo_labels.min_confidence``).

Quality (when the split has masks, e.g. VOC ``train_aug``): the mIoU of the pseudo-labels
against the ground truth, the standard WSSS "mask quality" number, and per confidence
threshold the share of labelled pixels kept and their mIoU and accuracy
(:class:`ConfidenceQuality`), to choose ``min_confidence``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from co2sam.classes import IGNORE_INDEX
from co2sam.evaluate import Prediction, evaluate_model
from co2sam.metrics import ConfusionMatrix
from co2sam.records import Boxes, Sample
from co2sam.visualize import overlay, save_image, save_label_png

CONFIDENCE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

VOC_TEST_FOLDER = Path("results/VOC2012/Segmentation/comp6_test_cls")
"""Where the VOC evaluation server expects segmentation results (comp6: trained with
data beyond VOC, as SAM and Grounding DINO are)."""


class PredictionWriter:
    """An ``on_prediction`` callback that writes each mode's label maps as palette PNGs.

    label_folders: mode -> folder of ``<id>.png`` label maps (modes not listed are skipped).
    overlay_folders: mode -> folder of ``<id>.png`` colour overlays (image, classes, boxes).
    confidence_folders: mode -> folder of ``<id>.png`` 8-bit confidence maps (predictions
        must carry ``confidence``).
    """

    def __init__(
        self,
        label_folders: Mapping[str, Path],
        overlay_folders: Mapping[str, Path] | None = None,
        class_names: Sequence[str] | None = None,
        confidence_folders: Mapping[str, Path] | None = None,
    ) -> None:
        self.label_folders = {mode: Path(folder) for mode, folder in label_folders.items()}
        self.overlay_folders = {m: Path(f) for m, f in (overlay_folders or {}).items()}
        self.confidence_folders = {m: Path(f) for m, f in (confidence_folders or {}).items()}
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
        if mode in self.confidence_folders:
            if prediction.confidence is None:
                raise ValueError("confidence maps asked for but the prediction has none")
            save_confidence_png(
                self.confidence_folders[mode] / f"{image_id}.png", prediction.confidence
            )
        if mode in self.overlay_folders:
            image = overlay(
                prediction.sample.image,
                label,
                boxes=_boxes_shown(prediction.boxes, prediction.sample, mode),
                class_names=self.class_names,
            )
            save_image(self.overlay_folders[mode] / f"{image_id}.png", image)


def save_confidence_png(path: Path, confidence: torch.Tensor) -> Path:
    """Write an (H, W) confidence in [0, 1] as an 8-bit grayscale PNG (x 255, rounded)."""
    values = (confidence.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    Image.fromarray(values.cpu().numpy()).save(temp, format="PNG")  # 2-D uint8: mode L
    temp.replace(path)
    return path


class ConfidenceQuality:
    """Pseudo-label quality above confidence thresholds (an ``on_prediction`` callback).

    For each threshold t: ``pixels_kept``, the share of the ground truth's labelled pixels
    whose confidence is >= t, and the mIoU / pixel accuracy of the pseudo-labels on them.
    Images without a mask are skipped.
    """

    def __init__(self, num_classes: int, thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS):
        self.num_classes = num_classes
        self.thresholds = tuple(thresholds)
        self.matrices: dict[float, ConfusionMatrix] = {}
        self.kept = dict.fromkeys(self.thresholds, 0)
        self.labelled = 0

    def __call__(self, prediction: Prediction) -> None:
        if prediction.sample.mask is None or prediction.confidence is None:
            return
        self.update(prediction.label_map, prediction.confidence, prediction.sample.mask)

    def update(self, label_map: Any, confidence: Any, target: Any) -> None:
        """One image: (H, W) labels, confidences in [0, 1] and ground truth (255 ignored)."""
        if not torch.is_tensor(label_map):
            label_map = torch.from_numpy(np.asarray(label_map))
        confidence = torch.as_tensor(confidence, device=label_map.device)
        target = torch.as_tensor(np.asarray(target), device=label_map.device).long()
        labelled = target != IGNORE_INDEX
        self.labelled += int(labelled.sum())
        for threshold in self.thresholds:
            keep = confidence >= threshold
            if threshold not in self.matrices:
                self.matrices[threshold] = ConfusionMatrix(
                    self.num_classes, device=label_map.device
                )
            self.matrices[threshold].update(label_map, torch.where(keep, target, IGNORE_INDEX))
            self.kept[threshold] += int((keep & labelled).sum())

    def compute(self) -> list[dict[str, Any]]:
        """One row per threshold: min_confidence, pixels_kept, miou, pixel_accuracy."""
        if not self.labelled:
            return []
        rows = []
        for threshold in self.thresholds:
            metrics = self.matrices[threshold].compute() if threshold in self.matrices else {}
            rows.append(
                {
                    "min_confidence": threshold,
                    "pixels_kept": self.kept[threshold] / self.labelled,
                    "miou": metrics.get("miou"),
                    "pixel_accuracy": metrics.get("pixel_accuracy"),
                }
            )
        return rows


def confidence_quality_of_folder(
    dataset: Any, out_dir: str | Path, ids: Sequence[str], thresholds=CONFIDENCE_THRESHOLDS
) -> list[dict[str, Any]]:
    """:meth:`ConfidenceQuality.compute` from the files a run wrote (any number of
    processes and restarts): ``SegmentationClass/`` and ``Confidence/`` PNGs of ``ids``
    against the dataset's masks. Empty when the split has no masks."""
    from co2sam.data.image_io import DatasetError, read_label_png

    if not getattr(dataset, "has_masks", False):
        return []
    out_dir = Path(out_dir)
    quality = ConfidenceQuality(len(dataset.class_names), thresholds)
    for image_id in ids:
        confidence_path = out_dir / "Confidence" / f"{image_id}.png"
        if not confidence_path.is_file():
            continue
        label_path = out_dir / "SegmentationClass" / f"{image_id}.png"
        try:
            label = read_label_png(label_path)
        except DatasetError as error:
            raise PseudoLabelFileError(label_path, error) from error
        try:
            with Image.open(confidence_path) as image:
                confidence = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors on a damaged PNG
            raise PseudoLabelFileError(confidence_path, error) from error
        try:
            target = dataset.read_mask(image_id)
        except DatasetError as error:  # a mask that was read fine when the image was done
            raise PseudoLabelFileError(
                getattr(error, "path", None) or f"the ground-truth mask of {image_id}",
                error,
                fix="restore that mask, then run the same `co2sam pseudo-labels` command again",
            ) from error
        quality.update(torch.from_numpy(label).long(), confidence, target)
    return quality.compute()


class PseudoLabelFileError(ValueError):
    """A file the pseudo-labels' quality step reads cannot be read; the message names it
    and the fix (by default: redo that pseudo-label)."""

    def __init__(self, path: Path | str, error: Exception, fix: str | None = None) -> None:
        reason = " ".join(str(error).split())
        fix = fix or (
            "delete it and run the same `co2sam pseudo-labels` command again (an image whose "
            "files are missing is redone)"
        )
        super().__init__(f"cannot read {path} ({reason}): {fix}")
        self.path = path


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
    confidence: bool = True,
) -> dict[str, Any]:
    """Segment every image of ``dataset`` in one mode and write the VOC layout above.

    compat: the label-map assembly (``eval.compat``), see :func:`evaluate_model`.
    confidence: also write ``Confidence/<id>.png`` and the quality per threshold (with
        the ``paper`` assembly only; ``reference`` writes none).
    Returns the mode's metrics against the ground truth (``num_images`` 0 and None
    values when the split has no masks), plus ``label_folder``, ``num_written`` and
    ``confidence_quality`` (rows of :meth:`ConfidenceQuality.compute`; empty without
    masks or confidences).
    """
    out_dir = Path(out_dir)
    label_folder = out_dir / "SegmentationClass"
    confidence = confidence and compat == "paper"
    confidence_folders = {mode: out_dir / "Confidence"} if confidence else {}
    writer = PredictionWriter({mode: label_folder}, confidence_folders=confidence_folders)
    quality = ConfidenceQuality(len(dataset.class_names))

    def on_prediction(prediction: Prediction) -> None:
        writer(prediction)
        quality(prediction)

    results = evaluate_model(
        segmenter,
        dataset,
        boxes_fn,
        modes=(mode,),
        batch_size=batch_size,
        limit=limit,
        progress=progress,
        on_prediction=on_prediction,
        num_workers=num_workers,
        compat=compat,
        confidence=confidence,
    )
    ids = writer.written[mode]
    write_split_list(out_dir, split or getattr(dataset, "split", "pseudo"), ids)
    return {
        **results[mode],
        "label_folder": str(label_folder),
        "num_written": len(ids),
        "confidence_quality": quality.compute(),
    }


def write_split_list(out_dir: str | Path, split: str, ids: Sequence[str]) -> Path:
    """``out_dir/ImageSets/Segmentation/<split>.txt``: the ids written, one per line."""
    split_file = Path(out_dir) / "ImageSets" / "Segmentation" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{image_id}\n" for image_id in ids))
    return split_file
