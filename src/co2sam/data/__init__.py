"""Datasets (VOC, prepared COCO, custom folders), training views and generated data.

``build_dataset(config.data, split)`` is the one entry point the rest of the package
uses; ``TrainViews`` makes the weak/strong views; ``make_synthetic_dataset`` writes
generated data in the VOC layout. Albumentations is imported only with ``views``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from co2sam.data.base import SegmentationDataset
from co2sam.data.image_io import DatasetError

if TYPE_CHECKING:
    from co2sam.config import DataConfig

__all__ = [
    "DatasetError",
    "DomainShift",
    "SegmentationDataset",
    "TrainViews",
    "ViewPair",
    "build_dataset",
    "make_synthetic_dataset",
]


def build_dataset(
    data_config: DataConfig, split: str, *, check_masks: bool = True
) -> SegmentationDataset:
    """The dataset of ``split`` described by ``data_config`` (dataset kind and root).

    ``voc`` and ``synthetic`` read the VOC layout (generated data is written in it),
    ``coco`` reads the output of ``co2sam prepare coco``, ``folder`` a custom folder.
    Raises :class:`DatasetError` naming the folder or file and the fix.
    check_masks: refuse a split where some masks are missing; False leaves each one to
        the pre-flight (co2sam.data.preflight), which lists them all.
    """
    if not data_config.root:
        raise DatasetError("data.root is not set (pass --data-root or --set data.root=PATH)")
    if data_config.dataset in ("voc", "synthetic"):
        from co2sam.data.voc import VocDataset

        return VocDataset(data_config.root, split, check_masks=check_masks)
    if data_config.dataset == "coco":
        from co2sam.data.coco import CocoDataset

        return CocoDataset(data_config.root, split)
    if data_config.dataset == "folder":
        from co2sam.data.folder import FolderDataset

        return FolderDataset(data_config.root, split, check_masks=check_masks)
    raise DatasetError(f"unknown dataset kind {data_config.dataset!r}")


def __getattr__(name: str) -> Any:
    if name in ("TrainViews", "ViewPair"):
        from co2sam.data import views

        return getattr(views, name)
    if name in ("make_synthetic_dataset", "DomainShift"):
        from co2sam.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'co2sam.data' has no attribute {name!r}")
