"""What the text-prompted detectors (Grounding DINO, SAM 3) share: the device, loading
a model with its tokenizer, the class-text table, an image's pixels, joining boxes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from co2sam.records import Boxes


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_with_tokenizer(
    model_class: Any, source: str | Path, name: str, hub_id: str
) -> tuple[Any, Any]:
    """``model_class`` and its tokenizer from a hub id or a local folder; ``name`` and an
    example ``hub_id`` go into the error that says how to fix a source that does not load."""
    from transformers import AutoTokenizer

    from co2sam.hub import hub_options

    options = hub_options(str(source), name)  # no network: at once, with the fix
    try:
        model = model_class.from_pretrained(str(source), **options)
        tokenizer = AutoTokenizer.from_pretrained(str(source), **options)
    except OSError as error:
        raise OSError(
            f"cannot load {name} from {source!r}: give a hub id ({hub_id}) or a folder "
            "holding config.json, the weights and the tokenizer files "
            f"(prompts.detector / --detector). {error}"
        ) from error
    return model, tokenizer


def class_text_table(
    class_names: Sequence[str], texts: Sequence[Sequence[str]]
) -> dict[int, list[str]]:
    """``{class index: its detector texts}`` for classes 1..C (``texts[c - 1]``: class c;
    ``class_names``: background first)."""
    if len(texts) != len(class_names) - 1:
        raise ValueError(f"{len(texts)} class texts for {len(class_names) - 1} object classes")
    return {index: list(options) for index, options in enumerate(texts, start=1)}


def check_label(label: int, class_texts: dict[int, list[str]]) -> None:
    """Refuse an image label that is not a class of the table."""
    if label not in class_texts:
        count = len(class_texts)
        raise ValueError(f"label {label} is not a class index in 1..{count}")


def unit_pixels(image: np.ndarray, device: Any = "cpu") -> torch.Tensor:
    """HWC uint8 RGB image -> (1, 3, H, W) float in [0, 1] on ``device``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 RGB image, got {image.shape} {image.dtype}")
    pixels = torch.from_numpy(np.array(image, copy=True)).to(device)
    return pixels.permute(2, 0, 1)[None].float() / 255.0


def concatenate_boxes(parts: list[Boxes]) -> Boxes:
    """One image's Boxes from several queries, in order."""
    if not parts:
        return Boxes()
    return Boxes(
        np.concatenate([part.xyxy for part in parts]),
        np.concatenate([part.classes for part in parts]),
        np.concatenate([part.scores for part in parts]),
    )
