import pytest
import torch
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

from co2sam.models.attention import (
    AutoAttention,
    FoldedAttention,
    folded_attention,
    key_positions,
    set_attention,
)
from co2sam.models.variants import SAM_VARIANTS
from co2sam.sam import Segmenter, attach_lora


def _model(image_size: int = 128) -> torch.nn.Module:
    """tiny SAM (a windowed and a global block) with LoRA, random rel-pos and LoRA B, float64."""
    config = SAM_VARIANTS["tiny"]()
    config.vision_config.image_size = image_size
    torch.manual_seed(0)
    model = attach_lora(SamModel(config)).double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name or "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def _encode(model, kind: str, pixels: torch.Tensor):
    encoder = model.base_model.model.vision_encoder
    set_attention(encoder, kind)
    for param in model.parameters():
        param.grad = None
    out = encoder(pixels).last_hidden_state
    out.square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return out.detach(), grads


@pytest.mark.parametrize("image_size", [128, 96])  # 96: the 4x4 windows need padding
def test_folded_attention_equals_eager_and_sdpa(image_size):
    model = _model(image_size)
    pixels = torch.randn(2, 3, image_size, image_size, dtype=torch.float64)
    eager = _encode(model, "eager", pixels)
    for kind in ("sdpa", "folded"):
        out, grads = _encode(model, kind, pixels)
        # eager's softmax runs in float32 even for float64 inputs: 1e-6, not 1e-12
        assert torch.allclose(out, eager[0], rtol=1e-6, atol=1e-7), kind
        assert torch.allclose(grads, eager[1], rtol=1e-5, atol=1e-9), kind  # LoRA gradients


def test_padded_value_path_is_the_same_attention():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 12, 8, dtype=torch.float64) for _ in range(3))
    rel_h, rel_w = torch.randn(2, 3, 12, 3, dtype=torch.float64), torch.randn(2, 3, 12, 4)
    rel_w = rel_w.double()
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(2, 3, 12, 12)
    expected = torch.softmax(query @ key.transpose(-1, -2) * 0.3 + bias, -1) @ value
    for pad_value in (False, True):
        output = folded_attention(query, key, value, rel_h, rel_w, scale=0.3, pad_value=pad_value)
        assert output.shape == value.shape
        assert torch.allclose(output, expected, atol=1e-12)


def test_key_positions_one_hot_rows_then_columns():
    positions = key_positions(2, 3, torch.device("cpu"), torch.float32)
    assert positions.shape == (6, 5)
    assert positions[4].tolist() == [0, 1, 0, 1, 0]  # key 4 = row 1, column 1


def test_segmenter_installs_the_chosen_attention():
    def kinds(segmenter):
        blocks = segmenter.sam.vision_encoder.modules()
        return {type(m) for m in blocks if isinstance(m, SamVisionAttention)}

    config = SAM_VARIANTS["tiny"]()
    assert kinds(Segmenter(SamModel(config))) == {AutoAttention}
    assert kinds(Segmenter(SamModel(config), attention="folded")) == {FoldedAttention}
    assert kinds(Segmenter(SamModel(config), attention="sdpa")) == {SamVisionSdpaAttention}
    assert kinds(Segmenter(SamModel(config), attention="eager")) == {SamVisionAttention}
    with pytest.raises(ValueError, match="attention must be one of"):
        Segmenter(SamModel(config), attention="flash")
