"""Box prompts: class names -> boxes (Grounding DINO, SAM 3, a cache file, oracle masks).

``box_source(config, split, dataset)`` is the entry point for training and evaluation;
``build_prompter(config, class_names)`` gives the detector ``prompts.detector`` names
(:mod:`co2sam.prompts.registry`). The prompters (torch, transformers) load lazily.
"""

from __future__ import annotations

from typing import Any

from co2sam.prompts.cache import (
    BoxCache,
    BoxCacheError,
    BoxCacheWriter,
    MissingBoxesError,
    load_box_cache,
    write_box_cache,
)
from co2sam.prompts.class_texts import class_prompts
from co2sam.prompts.oracle import oracle_boxes
from co2sam.prompts.registry import PROMPTERS, build_prompter, prompter_spec
from co2sam.prompts.simulate import perturb_boxes
from co2sam.prompts.source import (
    BoxSource,
    box_source,
    default_cache_path,
    detector_settings,
    query_mode,
)

__all__ = [
    "BoxCache",
    "BoxCacheError",
    "BoxCacheWriter",
    "BoxSource",
    "GroundingDinoPrompter",
    "MissingBoxesError",
    "PROMPTERS",
    "Sam3Prompter",
    "box_source",
    "build_prompter",
    "class_prompts",
    "default_cache_path",
    "detector_settings",
    "load_box_cache",
    "oracle_boxes",
    "perturb_boxes",
    "prompter_spec",
    "query_mode",
    "write_box_cache",
]


def __getattr__(name: str) -> Any:
    if name == "GroundingDinoPrompter":
        from co2sam.prompts.grounding_dino import GroundingDinoPrompter

        return GroundingDinoPrompter
    if name == "Sam3Prompter":
        from co2sam.prompts.sam3 import Sam3Prompter

        return Sam3Prompter
    raise AttributeError(f"module 'co2sam.prompts' has no attribute {name!r}")
