"""co2sam.sam exports the names other modules code against; the variant registry."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel

import co2sam.sam as sam
from co2sam.sam import SAM_VARIANTS, Segmenter, build_sam, sam_config

CONTRACT_NAMES = (
    "SAM_VARIANTS",
    "load_sam",
    "attach_lora",
    "save_adapter",
    "load_adapter",
    "Segmenter",
    "PreparedBatch",
    "MaskOutput",
    "build_sam",
    "export_official_checkpoint",
)


def test_contract_names_are_exported() -> None:
    for name in CONTRACT_NAMES:
        assert hasattr(sam, name), name
        assert name in sam.__all__, name


@pytest.mark.parametrize(
    ("variant", "hidden", "depth", "heads", "global_attn"),
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_published_variants(
    variant: str, hidden: int, depth: int, heads: int, global_attn: list[int]
) -> None:
    vision = sam_config(variant).vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        hidden,
        depth,
        heads,
    )
    assert list(vision.global_attn_indexes) == global_attn
    assert vision.image_size == 1024 and vision.window_size == 14


@pytest.mark.parametrize("variant", sorted(SAM_VARIANTS))
def test_every_variant_builds_with_sam_shapes(variant: str) -> None:
    with torch.device("meta"):
        model = SamModel(sam_config(variant))
    size = model.config.vision_config.image_size
    assert model.config.prompt_encoder_config.image_size == size
    assert model.config.prompt_encoder_config.image_embedding_size == size // 16
    assert model.config.mask_decoder_config.hidden_size == 256


def test_tiny_forward_is_fast_and_has_sam_layout() -> None:
    segmenter = Segmenter(build_sam("tiny").eval())
    size = segmenter.image_size
    with torch.no_grad():
        embeddings = segmenter.encode(torch.randn(1, 3, size, size))
        (output,) = segmenter.decode(embeddings, [torch.tensor([[0.0, 0.0, 50.0, 50.0]])])
    assert embeddings.shape == (1, 256, size // 16, size // 16)
    assert output.low_res_logits.shape == (1, size // 4, size // 4)
    assert embeddings.std() > 0.1  # a random encoder that still depends on its input


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="tiny"):
        sam_config("vit_x")


def test_demo_name_loads_the_shipped_demo_sam():
    from co2sam.demo.model import load_demo_sam

    model = sam.load_sam("demo")
    shipped = load_demo_sam()
    assert model.config.vision_config.image_size == shipped.config.vision_config.image_size
    for (name, value), (_, expected) in zip(
        model.state_dict().items(), shipped.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name
