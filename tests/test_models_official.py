"""Official Meta checkpoints: key mapping, strict loading, clear errors; and load_sam."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import SamModel

from co2sam.models.official import TIED_KEY, hf_to_meta_key, meta_to_hf_key
from co2sam.sam import (
    CheckpointError,
    Segmenter,
    build_sam,
    export_official_checkpoint,
    load_sam,
    sam_config,
    split_qkv,
)


def _outputs(model: SamModel) -> tuple[torch.Tensor, torch.Tensor]:
    segmenter = Segmenter(model)
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = segmenter.encode(pixels)
        (output,) = segmenter.decode(embeddings, [torch.tensor([[8.0, 16.0, 100.0, 90.0]])])
    return embeddings, output.low_res_logits


def test_key_mapping_is_a_bijection_on_every_sam_key() -> None:
    with torch.device("meta"):
        keys = [k for k in SamModel(sam_config("vit_b")).state_dict() if k != TIED_KEY]
    meta_keys = [hf_to_meta_key(k) for k in keys]
    assert len(set(meta_keys)) == len(keys)
    assert [meta_to_hf_key(k) for k in meta_keys] == keys
    # Names as they appear in sam_vit_b_01ec64.pth.
    for name in (
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.blocks.11.norm2.bias",
        "image_encoder.blocks.0.attn.rel_pos_h",
        "image_encoder.neck.3.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.point_embeddings.3.weight",
        "prompt_encoder.mask_downscaling.6.bias",
        "mask_decoder.transformer.layers.1.norm4.weight",
        "mask_decoder.transformer.norm_final_attn.bias",
        "mask_decoder.output_upscaling.3.weight",
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight",
        "mask_decoder.iou_prediction_head.layers.1.bias",
    ):
        assert name in meta_keys, name


def test_official_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = build_sam("tiny", seed=3).eval()
    path = export_official_checkpoint(model, tmp_path / "sam_tiny.pth")
    loaded = load_sam(str(path))
    for expected, found in zip(_outputs(model), _outputs(loaded), strict=True):
        assert torch.equal(expected, found)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not loaded.training
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_export_fuses_a_split_qkv_back(tmp_path: Path) -> None:
    model = build_sam("tiny").eval()
    expected = _outputs(model)
    path = export_official_checkpoint(split_qkv(model), tmp_path / "split.pth")
    torch.testing.assert_close(_outputs(load_sam(str(path)))[1], expected[1])


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = export_official_checkpoint(build_sam("tiny"), tmp_path / "sam.pth")
    state = torch.load(path, weights_only=True)
    del state["image_encoder.blocks.1.attn.rel_pos_w"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"image_encoder\.blocks\.1\.attn\.rel_pos_w"):
        load_sam(str(path))


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    path = export_official_checkpoint(build_sam("tiny"), tmp_path / "sam.pth")
    state = torch.load(path, weights_only=True)
    state["image_encoder.blocks.0.attn.extra_bias"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"image_encoder\.blocks\.0\.attn\.extra_bias"):
        load_sam(str(path))


def test_truncated_file_error_names_the_file(tmp_path: Path) -> None:
    path = export_official_checkpoint(build_sam("tiny"), tmp_path / "sam_vit_b_01ec64.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth.*truncated or corrupt"):
        load_sam(str(path))


def test_unknown_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = export_official_checkpoint(build_sam("tiny"), tmp_path / "sam.pth")
    state = torch.load(path, weights_only=True)
    del state["image_encoder.blocks.1.norm1.weight"]
    state = {k.replace("blocks.1.", "blocks.5."): v for k, v in state.items()}
    state["image_encoder.blocks.9.x"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="no registered SAM variant"):
        load_sam(str(path))


def test_registered_names_give_frozen_deterministic_models() -> None:
    first, second = load_sam("tiny"), load_sam("tiny")
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    pairs = zip(first.parameters(), second.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    other_seed = load_sam("tiny:1")
    assert not torch.equal(first.vision_encoder.pos_embed, other_seed.vision_encoder.pos_embed)


def test_transformers_folder_loads(tmp_path: Path) -> None:
    model = build_sam("tiny").eval()
    model.save_pretrained(tmp_path / "sam")
    loaded = load_sam(str(tmp_path / "sam"))
    assert torch.equal(_outputs(loaded)[1], _outputs(model)[1])


@pytest.mark.parametrize("source", ["./no/such/folder", "/no/such/sam_vit_b_01ec64.pth", "x"])
def test_missing_local_source_is_a_clear_error(source: str) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sam(source)


def test_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_sam(str(tmp_path))


def _decoder_eps(model: SamModel) -> set[float]:
    return {
        module.eps
        for module in model.mask_decoder.transformer.modules()
        if isinstance(module, torch.nn.LayerNorm)
    }


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_variants_use_metas_mask_decoder_layer_norm_eps(variant: str) -> None:
    assert sam_config(variant).mask_decoder_config.layer_norm_eps == 1e-5


def test_pth_load_has_metas_layer_norm_eps(tmp_path: Path) -> None:
    path = export_official_checkpoint(build_sam("tiny"), tmp_path / "sam.pth")
    loaded = load_sam(str(path))
    assert _decoder_eps(loaded) == {1e-5}
    assert loaded.mask_decoder.upscale_layer_norm.eps == 1e-6  # Meta's LayerNorm2d


def test_meta_weights_from_a_folder_get_metas_eps(tmp_path: Path, monkeypatch) -> None:
    """A folder whose config says transformers' default 1e-6: ViT-B/L/H loads use 1e-5."""
    from co2sam.models import loading
    from co2sam.models.variants import is_meta_variant

    assert is_meta_variant(sam_config("vit_b")) and not is_meta_variant(sam_config("tiny"))
    model = build_sam("tiny").eval()
    model.config.mask_decoder_config.layer_norm_eps = 1e-6
    model.save_pretrained(tmp_path / "sam")
    as_saved = SamModel.from_pretrained(tmp_path / "sam").eval()
    assert _decoder_eps(as_saved) == {1e-6, 1e-5}  # the final-attention norm is always 1e-5
    assert _decoder_eps(load_sam(str(tmp_path / "sam"))) == {1e-6, 1e-5}  # tiny: as saved
    monkeypatch.setattr(loading, "is_meta_variant", lambda config: True)
    loaded = load_sam(str(tmp_path / "sam"))
    assert _decoder_eps(loaded) == {1e-5}
    assert loaded.config.mask_decoder_config.layer_norm_eps == 1e-5
    assert torch.equal(_outputs(loaded)[1], _outputs(build_sam("tiny").eval())[1])
    assert not torch.equal(_outputs(as_saved)[1], _outputs(loaded)[1])
