"""Adapter folders: round trip, self-description, architecture checks, size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import SamModel

from co2sam.models import variants
from co2sam.sam import (
    AdapterError,
    Segmenter,
    attach_lora,
    build_sam,
    load_adapter,
    load_sam,
    lora_parameters,
    sam_config,
    save_adapter,
)


def _trained_tiny() -> torch.nn.Module:
    model = attach_lora(load_sam("tiny"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator))
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    segmenter = Segmenter(model)
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = segmenter.encode(pixels)
        (output,) = segmenter.decode(embeddings, [torch.tensor([[4.0, 8.0, 100.0, 120.0]])])
    return output.low_res_logits


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _trained_tiny()
    folder = save_adapter(model, tmp_path / "adapter", base="tiny", extra={"step": 7})
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_model.safetensors",
        "co2sam_adapter.json",
    ]
    for source in (load_sam("tiny"), "tiny", None):
        loaded = load_adapter(source, folder)
        assert torch.equal(_logits(loaded), _logits(model))
        assert sum(p.numel() for p in loaded.parameters() if p.requires_grad) == sum(
            p.numel() for p in lora_parameters(model)
        )


def test_folder_is_self_describing_and_holds_only_lora(tmp_path: Path) -> None:
    folder = save_adapter(_trained_tiny(), tmp_path, base="tiny", extra={"metrics": {"miou": 0.5}})
    metadata = json.loads((folder / "co2sam_adapter.json").read_text())
    assert metadata["format_version"] == 1
    assert metadata["base"] == "tiny"
    assert metadata["fingerprint"]["hidden_size"] == 32
    assert metadata["fingerprint"]["num_hidden_layers"] == 2
    assert metadata["fingerprint"]["image_size"] == 128
    assert metadata["lora"]["rank"] == 4 and metadata["lora"]["alpha"] == 4.0
    assert "qkv" in metadata["lora"]["target_modules"]
    assert metadata["extra"] == {"metrics": {"miou": 0.5}}
    tensors = load_file(folder / "adapter_model.safetensors")
    assert len(tensors) == 8
    assert all(k.startswith("vision_encoder.layers.") and ".lora_" in k for k in tensors)


def test_adapter_files_follow_the_umask_like_checkpoints(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: a group sharing the runs folder can read them."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        folder = save_adapter(_trained_tiny(), tmp_path / "adapter", base="tiny")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
    assert modes == {"adapter_model.safetensors": 0o644, "co2sam_adapter.json": 0o644}


def test_loading_into_an_existing_peft_model_overwrites_its_lora(tmp_path: Path) -> None:
    model = _trained_tiny()
    folder = save_adapter(model, tmp_path, base="tiny")
    fresh = attach_lora(load_sam("tiny"))
    assert load_adapter(fresh, folder) is fresh
    assert torch.equal(_logits(fresh), _logits(model))
    with pytest.raises(AdapterError, match="rank 4.*rank 2"):
        load_adapter(attach_lora(load_sam("tiny"), rank=2), folder)


def test_loading_onto_a_different_architecture_fails_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_adapter(_trained_tiny(), tmp_path, base="tiny")

    def tiny_deeper():
        config = variants.tiny()
        config.vision_config.num_hidden_layers = 3
        config.vision_config.global_attn_indexes = [2]
        return config

    monkeypatch.setitem(variants.SAM_VARIANTS, "tiny_deeper", tiny_deeper)
    with pytest.raises(AdapterError, match=r"'tiny'.*num_hidden_layers': 2.*num_hidden_layers': 3"):
        load_adapter("tiny_deeper", folder)


def test_missing_or_corrupt_adapter_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="co2sam_adapter.json is missing"):
        load_adapter("tiny", tmp_path)
    folder = save_adapter(_trained_tiny(), tmp_path / "a", base="tiny")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        load_adapter("tiny", folder)


def test_adapter_with_wrong_tensor_names_fails(tmp_path: Path) -> None:
    folder = save_adapter(_trained_tiny(), tmp_path, base="tiny")
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["vision_encoder.layers.9.attn.qkv.q.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"unexpected \['vision_encoder.layers.9"):
        load_adapter("tiny", folder)


def test_vit_b_rank4_adapter_file_is_under_1_mb(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = attach_lora(SamModel(sam_config("vit_b")))
    model.to_empty(device="cpu")  # allocate without initialising (fast); values do not matter
    folder = save_adapter(model, tmp_path, base="vit_b")
    tensors = load_file(folder / "adapter_model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == 147_456
    assert (folder / "adapter_model.safetensors").stat().st_size < 1_000_000


def test_build_sam_seed_changes_weights() -> None:
    assert not torch.equal(
        build_sam("tiny", seed=0).vision_encoder.pos_embed,
        build_sam("tiny", seed=1).vision_encoder.pos_embed,
    )


def test_loading_onto_another_base_of_the_same_architecture_warns(tmp_path: Path) -> None:
    folder = save_adapter(_trained_tiny(), tmp_path / "adapter", base="tiny")
    with pytest.warns(UserWarning, match="trained on SAM 'tiny'.*'tiny:1'"):
        load_adapter("tiny:1", folder)
