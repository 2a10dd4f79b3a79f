"""The demo's small SAM: architecture, and where its shipped ("pretrained") weights live.

The architecture is SAM's (ViT image encoder with windowed + global attention, prompt
encoder, two-way-transformer mask decoder), shrunk so that it trains on a laptop CPU:
input 128x128 in 8x8 patches, a 3-block encoder 64 wide, and a 64-wide neck, prompt
encoder and mask decoder (real SAM: 256). Embeddings are (64, 16, 16), low-res mask
logits (64, 64).

Its weights are made by ``scripts/make_demo_sam.py`` (box -> mask training on the
demo's source domain) and shipped as a transformers folder in
``co2sam/assets/demo_sam`` (``config.json`` + fp16 ``model.safetensors``), so they load
through the ordinary path: ``co2sam.sam.load_sam(str(demo_sam_path()))`` or
``--set model.sam=<that folder>``; ``config.json`` says ``dtype: float32`` so the
fp16 file is upcast on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import SamConfig, SamModel

from co2sam.asset_paths import DEMO_SAM_ASSET, demo_sam_path
from co2sam.models.variants import _sam_config, meta_style_init

__all__ = [
    "DEMO_SAM_ASSET",
    "PATCH_SIZE",
    "PROVENANCE_FILE",
    "build_demo_sam",
    "demo_sam_available",
    "demo_sam_config",
    "demo_sam_path",
    "load_demo_sam",
    "save_demo_sam",
]

PATCH_SIZE = 8
"""Finer than SAM's 16: 16x16 embeddings and 64x64 low-res masks for 128x128 inputs."""
PROVENANCE_FILE = "provenance.json"
"""How the shipped weights were made: command, seed, data, losses, timings."""


def demo_sam_config() -> SamConfig:
    """The demo SAM's architecture (random weights come from ``SamModel(config)``)."""
    config = _sam_config(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        global_attn_indexes=[2],
        image_size=128,
        window_size=4,
        mlp_dim=128,
        decoder_mlp_dim=128,
        iou_head_hidden_dim=64,
    )
    width = 64
    config.vision_config.patch_size = PATCH_SIZE
    config.prompt_encoder_config.patch_size = PATCH_SIZE
    config.prompt_encoder_config.image_embedding_size = 128 // PATCH_SIZE
    config.vision_config.output_channels = width
    config.vision_config.num_pos_feats = width // 2
    config.prompt_encoder_config.hidden_size = width
    config.mask_decoder_config.hidden_size = width
    return config


def build_demo_sam(seed: int = 0) -> SamModel:
    """A randomly initialised demo SAM, deterministic in ``seed`` (global RNG untouched).

    Initialised as Meta's SAM is (:func:`co2sam.models.variants.meta_style_init`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return meta_style_init(SamModel(demo_sam_config()))


def demo_sam_available(path: str | Path | None = None) -> bool:
    folder = Path(path) if path is not None else demo_sam_path()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def load_demo_sam(path: str | Path | None = None) -> SamModel:
    """The shipped demo SAM (frozen, eval mode, float32) via :func:`co2sam.sam.load_sam`."""
    from co2sam.sam import load_sam

    folder = Path(path) if path is not None else demo_sam_path()
    if not demo_sam_available(folder):
        raise FileNotFoundError(
            f"demo SAM weights not found in {folder}; recreate them with "
            "`python scripts/make_demo_sam.py` (about 3 minutes of CPU time)"
        )
    return load_sam(str(folder)).float()


def save_demo_sam(model: SamModel, folder: str | Path, provenance: dict) -> Path:
    """Write ``model`` as a transformers folder with fp16 weights (upcast to fp32 on load)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    half = SamModel(model.config)
    half.load_state_dict(model.state_dict())
    half.half().save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    for path in folder.iterdir():
        path.chmod(0o644)  # save_pretrained writes through a private temporary file
    return folder
