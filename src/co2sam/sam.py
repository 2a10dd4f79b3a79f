"""SAM for co2sam: load it, adapt it with LoRA, and segment boxes with it.

SAM, SAM-HQ and SAM 2.1 are the model families (:mod:`co2sam.models.families`);
``load_sam`` loads any of them and ``segmenter_for`` wraps one in its Segmenter.
The code lives in :mod:`co2sam.models` (one concept per file); this module is the
stable import point.
"""

from co2sam.models.adapter_io import (
    AdapterError,
    adapter_state_dict,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from co2sam.models.families import FAMILIES, Family, family_of, segmenter_for
from co2sam.models.loading import load_sam
from co2sam.models.lora import (
    LORA_TARGET_MODULES,
    SplitQkv,
    attach_lora,
    freeze,
    lora_parameters,
    lora_target_modules,
    split_qkv,
)
from co2sam.models.official import (
    CheckpointError,
    export_official_checkpoint,
    load_official_checkpoint,
)
from co2sam.models.official_sam2 import export_sam2_checkpoint, load_sam2_checkpoint
from co2sam.models.sam2 import SAM2_VARIANTS, Sam2Segmenter, build_sam2
from co2sam.models.sam_hq import SAM_HQ_VARIANTS, SamHQSegmenter, build_sam_hq
from co2sam.models.segmenter import (
    PIXEL_MEAN,
    PIXEL_STD,
    ImageFeatures,
    MaskOutput,
    PreparedBatch,
    Segmenter,
    resized_size,
)
from co2sam.models.variants import SAM_VARIANTS, build_sam, fingerprint, sam_config

__all__ = [
    "AdapterError",
    "CheckpointError",
    "FAMILIES",
    "Family",
    "ImageFeatures",
    "LORA_TARGET_MODULES",
    "MaskOutput",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PreparedBatch",
    "SAM2_VARIANTS",
    "SAM_HQ_VARIANTS",
    "SAM_VARIANTS",
    "Sam2Segmenter",
    "SamHQSegmenter",
    "Segmenter",
    "SplitQkv",
    "adapter_state_dict",
    "attach_lora",
    "build_sam",
    "build_sam2",
    "build_sam_hq",
    "export_official_checkpoint",
    "export_sam2_checkpoint",
    "family_of",
    "fingerprint",
    "freeze",
    "load_adapter",
    "load_official_checkpoint",
    "load_sam",
    "load_sam2_checkpoint",
    "lora_parameters",
    "lora_target_modules",
    "read_adapter_metadata",
    "resized_size",
    "sam_config",
    "save_adapter",
    "segmenter_for",
    "split_qkv",
]
