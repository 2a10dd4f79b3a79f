"""Box prompters by name (timm style: a plain dict of builders).

A prompter turns class names into boxes: called with an HWC uint8 image and the labels
to query (``None``: all classes), it returns :class:`co2sam.records.Boxes` in the
image's pixel frame, classes 1..C, with confidences; ``detect(images, labels)`` does
several images. Which prompter runs is decided by ``prompts.detector`` alone (no second
setting to keep in step): a local folder by the ``model_type`` of its ``config.json``, a
hub id by its name (``facebook/sam3`` -> SAM 3; anything else -> Grounding DINO). The
prompter's name is the ``origin`` of the box caches it makes.

- ``grounding-dino`` (``GroundingDinoForObjectDetection``, :mod:`.grounding_dino`): a box
  is kept if its score (max token probability) > ``box_threshold`` and its best class
  span's score > ``text_threshold``; its confidence is the box score.
- ``sam3`` (``Sam3Model``, :mod:`.sam3`): one text prompt per class text; a query is kept
  if sigmoid(its logit) x sigmoid(the presence logit) > ``box_threshold`` (SAM 3's own
  score and rule); that product is its confidence. ``text_threshold`` does not apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from co2sam.records import Boxes


class Prompter(Protocol):
    """What every registered prompter is (see the module docstring)."""

    def __call__(self, image: np.ndarray, labels: Sequence[int] | None = None) -> Boxes: ...

    def detect(
        self, images: Sequence[np.ndarray], labels: Sequence[Sequence[int] | None]
    ) -> list[Boxes]: ...


@dataclass(frozen=True)
class PrompterSpec:
    """One registered prompter."""

    name: str
    """The box caches' ``origin``: ``grounding-dino``, ``sam3``."""
    title: str
    model_types: tuple[str, ...]
    """``model_type`` values of a local folder's ``config.json``."""
    hub_names: str
    """Regex (full match, case-insensitive) of the hub repository names (after ``owner/``)."""
    build: Callable[[Any, Sequence[str]], Prompter]
    """``build(config, class_names)``: the prompter of ``config.prompts``."""
    uses_text_threshold: bool


def _grounding_dino(config: Any, class_names: Sequence[str]) -> Prompter:
    from co2sam.prompts.grounding_dino import GroundingDinoPrompter

    return GroundingDinoPrompter.from_config(config, class_names)


def _sam3(config: Any, class_names: Sequence[str]) -> Prompter:
    from co2sam.prompts.sam3 import Sam3Prompter

    return Sam3Prompter.from_config(config, class_names)


PROMPTERS: dict[str, PrompterSpec] = {
    "grounding-dino": PrompterSpec(
        "grounding-dino",
        "Grounding DINO",
        ("grounding-dino", "mm-grounding-dino"),
        r"(mm[-_])?grounding[-_]dino.*",
        _grounding_dino,
        uses_text_threshold=True,
    ),
    "sam3": PrompterSpec(
        "sam3", "SAM 3", ("sam3",), r"sam[-_]?3([-_.].*)?", _sam3, uses_text_threshold=False
    ),
}
"""Registered prompters: name -> :class:`PrompterSpec`."""
DEFAULT_PROMPTER = "grounding-dino"
"""What a hub id that matches no registered name is taken to be."""


def prompter_spec(detector: str) -> PrompterSpec:
    """The registered prompter of a detector id or folder (``prompts.detector``)."""
    folder = Path(str(detector)).expanduser()
    config_path = folder / "config.json"
    if folder.is_dir() and config_path.is_file():
        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from error
        for spec in PROMPTERS.values():
            if model_type in spec.model_types:
                return spec
        known = ", ".join(t for spec in PROMPTERS.values() for t in spec.model_types)
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not a box prompter co2sam knows "
            f"({known}); prompts.detector / --detector takes a Grounding DINO or SAM 3 model"
        )
    name = str(detector).rstrip("/").rpartition("/")[2]
    for spec in PROMPTERS.values():
        if re.fullmatch(spec.hub_names, name, flags=re.IGNORECASE):
            return spec
    return PROMPTERS[DEFAULT_PROMPTER]


def build_prompter(config: Any, class_names: Sequence[str]) -> Prompter:
    """The prompter ``config.prompts.detector`` names, over ``class_names`` (background first)."""
    return prompter_spec(config.prompts.detector).build(config, class_names)
