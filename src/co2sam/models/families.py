"""The model families co2sam can adapt, as a registry (timm style: a plain dict).

A family ties together what differs between SAM, SAM-HQ and SAM 2: the transformers
model class, the Segmenter that speaks to it, its registered architectures (random
weights for tests and benchmarks), and what identifies an architecture (for adapter
folders). Everything else (the training step, losses, template cache, evaluation,
pseudo-labels) goes through the :class:`~co2sam.models.segmenter.Segmenter` interface
and never asks which family it runs.

=========  ===============  ==========================================  =================
family     model class      hub ids                                     Meta checkpoints
=========  ===============  ==========================================  =================
``sam``    ``SamModel``     ``facebook/sam-vit-base|large|huge``        ``sam_vit_*.pth``
``sam-hq`` ``SamHQModel``   ``syscv-community/sam-hq-vit-base|...``     (not mapped)
``sam2``   ``Sam2Model``    ``facebook/sam2.1-hiera-tiny|...|large``    ``sam2.1_hiera_*.pt``
=========  ===============  ==========================================  =================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Sam2Model, SamHQModel, SamModel

from co2sam.models.sam2 import SAM2_VARIANTS, Sam2Segmenter, build_sam2, sam2_fingerprint
from co2sam.models.sam_hq import SAM_HQ_VARIANTS, SamHQSegmenter, build_sam_hq
from co2sam.models.segmenter import Segmenter
from co2sam.models.variants import SAM_VARIANTS, build_sam, fingerprint


@dataclass(frozen=True)
class Family:
    """One family of promptable segmenters (see the module docstring)."""

    name: str
    """Recorded in adapter folders: ``sam``, ``sam-hq`` or ``sam2``."""
    title: str
    """For messages and reports: ``SAM``, ``SAM-HQ``, ``SAM 2.1``."""
    model_class: type[PreTrainedModel]
    model_types: tuple[str, ...]
    """``model_type`` values of a transformers ``config.json`` that load as this family."""
    segmenter_class: type[Segmenter]
    variants: Mapping[str, Callable[[], PretrainedConfig]]
    build: Callable[..., PreTrainedModel]
    """``build(variant, seed=0)``: a model of a registered variant with random weights."""
    fingerprint: Callable[[PretrainedConfig], dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "sam": Family(
        "sam", "SAM", SamModel, ("sam",), Segmenter, SAM_VARIANTS, build_sam, fingerprint
    ),
    "sam-hq": Family(
        "sam-hq",
        "SAM-HQ",
        SamHQModel,
        ("sam_hq",),
        SamHQSegmenter,
        SAM_HQ_VARIANTS,
        build_sam_hq,
        fingerprint,
    ),
    "sam2": Family(
        "sam2",
        "SAM 2.1",
        Sam2Model,
        ("sam2", "sam2_video"),  # the hub's sam2.1 folders are video models; the image
        Sam2Segmenter,  # path loads from them (memory weights are ignored)
        SAM2_VARIANTS,
        build_sam2,
        sam2_fingerprint,
    ),
}
"""Registered families: name -> :class:`Family`."""


def family_of(model: nn.Module) -> Family:
    """The family of a plain model or of a ``PeftModel`` around one."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    for family in FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    known = ", ".join(family.model_class.__name__ for family in FAMILIES.values())
    raise ValueError(f"{type(model).__name__} is not a supported segmenter model ({known})")


def family_of_model_type(model_type: str, source: str = "config.json") -> Family:
    """The family whose transformers ``model_type`` is ``model_type``."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for family in FAMILIES.values() for t in family.model_types)
    hint = " (SAM 3 is used as a box prompter: --detector)" if model_type == "sam3" else ""
    raise ValueError(
        f"{source} describes a {model_type!r} model; co2sam adapts these model types: {known}{hint}"
    )


def variant_family(name: str) -> Family | None:
    """The family that registers the architecture ``name`` (``tiny``, ``tiny_sam2``, ...)."""
    for family in FAMILIES.values():
        if name in family.variants:
            return family
    return None


def all_variants() -> list[str]:
    """Every registered architecture name, family by family."""
    return [name for family in FAMILIES.values() for name in family.variants]


def segmenter_for(model: nn.Module, **options: Any) -> Segmenter:
    """The Segmenter of ``model``'s family around it (``options``: e.g. gradient_checkpointing)."""
    return family_of(model).segmenter_class(model, **options)
