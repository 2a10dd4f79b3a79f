"""SAM for co2sam: load it, adapt it with LoRA, and segment boxes with it.

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
from co2sam.models.loading import load_sam
from co2sam.models.lora import (
    LORA_TARGET_MODULES,
    SplitQkv,
    attach_lora,
    freeze,
    lora_parameters,
    split_qkv,
)
from co2sam.models.official import (
    CheckpointError,
    export_official_checkpoint,
    load_official_checkpoint,
)
from co2sam.models.segmenter import (
    PIXEL_MEAN,
    PIXEL_STD,
    MaskOutput,
    PreparedBatch,
    Segmenter,
    resized_size,
)
from co2sam.models.variants import SAM_VARIANTS, build_sam, fingerprint, sam_config

__all__ = [
    "AdapterError",
    "CheckpointError",
    "LORA_TARGET_MODULES",
    "MaskOutput",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PreparedBatch",
    "SAM_VARIANTS",
    "Segmenter",
    "SplitQkv",
    "adapter_state_dict",
    "attach_lora",
    "build_sam",
    "export_official_checkpoint",
    "fingerprint",
    "freeze",
    "load_adapter",
    "load_official_checkpoint",
    "load_sam",
    "lora_parameters",
    "read_adapter_metadata",
    "resized_size",
    "sam_config",
    "save_adapter",
    "split_qkv",
]
