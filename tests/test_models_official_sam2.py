"""Meta's SAM 2.1 checkpoints: the name mapping, strict loading, variant detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Sam2Model

from co2sam.models.official import CheckpointError
from co2sam.models.official_sam2 import (
    TRUNK,
    detect_sam2_variant,
    export_sam2_checkpoint,
    hf_to_meta_key,
    meta_to_hf_key,
    sam2_official_state_dict,
)
from co2sam.models.sam2 import SAM2_VARIANTS, build_sam2
from co2sam.sam import load_sam, split_qkv

# Names as Meta's sam2 code (sam2/modeling) defines them -> transformers' Sam2Model.
META_NAMES = {
    "image_encoder.trunk.patch_embed.proj.weight": "vision_encoder.backbone.patch_embed.projection.weight",  # noqa: E501
    "image_encoder.trunk.pos_embed_window": "vision_encoder.backbone.pos_embed_window",
    "image_encoder.trunk.blocks.3.norm1.bias": "vision_encoder.backbone.blocks.3.layer_norm1.bias",
    "image_encoder.trunk.blocks.3.attn.qkv.weight": "vision_encoder.backbone.blocks.3.attn.qkv.weight",  # noqa: E501
    "image_encoder.trunk.blocks.3.mlp.layers.1.weight": "vision_encoder.backbone.blocks.3.mlp.proj_out.weight",  # noqa: E501
    "image_encoder.trunk.blocks.1.proj.weight": "vision_encoder.backbone.blocks.1.proj.weight",
    "image_encoder.neck.convs.2.conv.bias": "vision_encoder.neck.convs.2.bias",
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "prompt_encoder.shared_embedding.positional_embedding",  # noqa: E501
    "sam_prompt_encoder.mask_downscaling.4.weight": "prompt_encoder.mask_embed.layer_norm2.weight",
    "sam_prompt_encoder.not_a_point_embed.weight": "prompt_encoder.not_a_point_embed.weight",
    "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight": "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight",  # noqa: E501
    "sam_mask_decoder.transformer.layers.0.mlp.layers.0.bias": "mask_decoder.transformer.layers.0.mlp.proj_in.bias",  # noqa: E501
    "sam_mask_decoder.transformer.layers.0.norm4.weight": "mask_decoder.transformer.layers.0.layer_norm4.weight",  # noqa: E501
    "sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.bias": "mask_decoder.transformer.final_attn_token_to_image.o_proj.bias",  # noqa: E501
    "sam_mask_decoder.transformer.norm_final_attn.weight": "mask_decoder.transformer.layer_norm_final_attn.weight",  # noqa: E501
    "sam_mask_decoder.output_upscaling.1.weight": "mask_decoder.upscale_layer_norm.weight",
    "sam_mask_decoder.output_hypernetworks_mlps.2.layers.1.weight": "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",  # noqa: E501
    "sam_mask_decoder.pred_obj_score_head.layers.2.bias": "mask_decoder.pred_obj_score_head.proj_out.bias",  # noqa: E501
    "sam_mask_decoder.conv_s0.weight": "mask_decoder.conv_s0.weight",
    "sam_mask_decoder.obj_score_token.weight": "mask_decoder.obj_score_token.weight",
    "no_mem_embed": "no_memory_embedding",
}


def test_meta_names_map_to_transformers_names_and_back() -> None:
    for meta, hf in META_NAMES.items():
        assert meta_to_hf_key(meta) == hf, meta
        assert hf_to_meta_key(hf) == meta, hf
    assert meta_to_hf_key("memory_attention.layers.0.self_attn.q_proj.weight") is None


def test_every_transformers_key_has_a_meta_name_that_maps_back() -> None:
    model = build_sam2("tiny_sam2")
    special = {"shared_image_embedding.positional_embedding", "prompt_encoder.point_embed.weight"}
    for key in model.state_dict():
        if key not in special:
            assert meta_to_hf_key(hf_to_meta_key(key)) == key, key


def _with_video_parts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    video = {
        "memory_attention.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2),
        "memory_encoder.out_proj.weight": torch.zeros(2, 2),
        "maskmem_tpos_enc": torch.zeros(7, 1, 1, 2),
        "no_mem_pos_enc": torch.zeros(1, 1, 2),
        "obj_ptr_proj.layers.0.weight": torch.zeros(2, 2),
        "no_obj_embed_spatial": torch.zeros(1, 2),
    }
    return {**state, **video}


def test_a_meta_file_loads_strictly_and_equals_the_model(tmp_path: Path) -> None:
    model = split_qkv(build_sam2("tiny_sam2", seed=3))  # exported fused, as Meta's files are
    state = sam2_official_state_dict(model)
    assert f"{TRUNK}blocks.0.attn.qkv.weight" in state
    assert "sam_prompt_encoder.point_embeddings.3.weight" in state
    path = tmp_path / "sam2.1_hiera_tiny_test.pt"
    torch.save({"model": _with_video_parts(state)}, path)  # video-only parts are dropped
    loaded = load_sam(str(path))
    assert isinstance(loaded, Sam2Model)
    expected = build_sam2("tiny_sam2", seed=3).state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert torch.equal(
        loaded.shared_image_embedding.positional_embedding,
        loaded.prompt_encoder.shared_embedding.positional_embedding,
    )
    again = export_sam2_checkpoint(loaded, tmp_path / "again.pt")
    assert torch.load(again, weights_only=True)["model"].keys() == state.keys()


def test_bad_files_are_refused_naming_the_key(tmp_path: Path) -> None:
    state = sam2_official_state_dict(build_sam2("tiny_sam2"))
    extra = tmp_path / "extra.pt"
    odd = {**state, "image_encoder.trunk.blocks.0.attn.extra": torch.zeros(1)}
    torch.save({"model": odd}, extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['image_encoder.trunk.blocks.0"):
        load_sam(str(extra))
    missing = tmp_path / "missing.pt"
    torch.save({"model": {k: v for k, v in state.items() if k != "no_mem_embed"}}, missing)
    with pytest.raises(CheckpointError, match=r"missing keys \['no_mem_embed'\]"):
        load_sam(str(missing))
    shape = tmp_path / "shape.pt"
    torch.save({"model": {**state, "no_mem_embed": torch.zeros(1, 1, 7)}}, shape)
    with pytest.raises(CheckpointError, match="no_mem_embed.*shape"):
        load_sam(str(shape))


@pytest.mark.parametrize("variant", sorted(SAM2_VARIANTS))
def test_the_variant_is_read_off_the_trunk(variant: str) -> None:
    backbone = SAM2_VARIANTS[variant]().vision_config.backbone_config
    width = backbone.embed_dim_per_stage[0]
    state = {f"{TRUNK}patch_embed.proj.weight": torch.empty(width, 3, 7, 7, device="meta")}
    for index in range(sum(backbone.blocks_per_stage)):
        state[f"{TRUNK}blocks.{index}.norm1.weight"] = torch.empty(1, device="meta")
    assert detect_sam2_variant(state) == variant


def test_an_unknown_trunk_is_refused() -> None:
    state = {f"{TRUNK}patch_embed.proj.weight": torch.empty(48, 3, 7, 7, device="meta")}
    with pytest.raises(CheckpointError, match="no registered SAM 2 variant"):
        detect_sam2_variant(state, "odd.pt")
