"""The prompter registry: which prompter a detector id or folder names, and what follows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from co2sam.config import load_config
from co2sam.prompts import registry
from co2sam.prompts.build import build_box_cache
from co2sam.prompts.registry import PROMPTERS, build_prompter, prompter_spec
from co2sam.prompts.source import detector_settings

CLASSES = ("background", "cat", "dog")


def _folder(tmp_path: Path, model_type: str) -> Path:
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.mark.parametrize(
    ("detector", "name"),
    [
        ("facebook/sam3", "sam3"),
        ("someone/SAM3-finetuned", "sam3"),
        ("IDEA-Research/grounding-dino-base", "grounding-dino"),
        ("openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg", "grounding-dino"),
        ("someone/detector", "grounding-dino"),  # the default for other hub ids
        ("someone/sam-vit-base3", "grounding-dino"),
    ],
)
def test_hub_ids_are_told_apart_by_name(detector: str, name: str) -> None:
    assert prompter_spec(detector).name == name


def test_folders_are_told_apart_by_model_type(tmp_path: Path) -> None:
    assert prompter_spec(str(_folder(tmp_path, "sam3"))).name == "sam3"
    assert prompter_spec(str(_folder(tmp_path, "grounding-dino"))).name == "grounding-dino"
    with pytest.raises(ValueError, match="'sam2' is not a box prompter"):
        prompter_spec(str(_folder(tmp_path, "sam2")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        prompter_spec(str(broken))


def test_build_prompter_calls_the_registered_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(config, class_names):
        calls.append((config.prompts.detector, tuple(class_names)))
        return "prompter"

    monkeypatch.setitem(PROMPTERS, "sam3", dataclasses.replace(PROMPTERS["sam3"], build=fake))
    config = load_config(None, ["prompts.detector=facebook/sam3"])
    assert build_prompter(config, CLASSES) == "prompter"
    assert calls == [("facebook/sam3", CLASSES)]
    assert registry.DEFAULT_PROMPTER in PROMPTERS


def test_cache_settings_record_the_prompter(tmp_path: Path) -> None:
    sam3 = load_config(None, ["prompts.detector=facebook/sam3"])
    settings = detector_settings(sam3, "val", CLASSES)
    assert settings["origin"] == "sam3" and "text_threshold" not in settings
    dino = load_config(None, [])
    settings = detector_settings(dino, "val", CLASSES)
    assert settings["origin"] == "grounding-dino" and settings["text_threshold"] == 0.25

    class Split:
        class_names = CLASSES
        ids = ["a"]

    with pytest.raises(ValueError, match="'grounding-dino'.*is a sam3 model"):
        build_box_cache(sam3, "val", Split(), origin="grounding-dino", path=tmp_path / "b.jsonl")
