"""SAM-HQ's Segmenter: equal to transformers' SamHQModel, HQ features, checkpointing."""

from __future__ import annotations

import pytest
import torch
from segmenter_support import checkpointed_gradients, segmenter_inputs

from co2sam.models.sam_hq import SAM_HQ_VARIANTS, build_sam_hq, hq_config
from co2sam.models.variants import fingerprint, tiny
from co2sam.sam import SamHQSegmenter, attach_lora


@pytest.fixture(scope="module")
def model():
    return build_sam_hq("tiny_hq").eval()


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_decoding_equals_transformers_samhq_forward(model, hq_token_only: bool) -> None:
    segmenter = SamHQSegmenter(model, hq_token_only=hq_token_only)
    pixels, boxes = segmenter_inputs()
    with torch.no_grad():
        features = segmenter.encode(pixels)
        found = segmenter.decode(features, boxes)
        for index, image_boxes in enumerate(boxes):
            expected = model(
                pixel_values=pixels[index : index + 1],
                input_boxes=image_boxes[None],
                multimask_output=False,
                hq_token_only=hq_token_only,
            )
            torch.testing.assert_close(
                found[index].low_res_logits, expected.pred_masks[0, :, 0], rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                found[index].iou_scores, expected.iou_scores[0, :, 0], rtol=1e-5, atol=1e-5
            )
    # the early ViT features ride along: (B, s, s, C) of the first global block
    assert features.extras[0].shape == (2, 8, 8, 32) and features.embeddings.shape == (2, 256, 8, 8)


def test_ragged_batches_decode_as_each_image_alone(model) -> None:
    segmenter = SamHQSegmenter(model)
    pixels, (first, second) = segmenter_inputs()
    pixels = torch.cat([pixels, pixels[:1]])
    boxes = [first, torch.zeros(0, 4), second]
    with torch.no_grad():
        features = segmenter.encode(pixels)
        together = segmenter.decode(features, boxes)
        alone = [segmenter.decode(features[i : i + 1], [boxes[i]])[0] for i in range(3)]
    assert [o.low_res_logits.shape[0] for o in together] == [2, 0, 1]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched.low_res_logits, single.low_res_logits)
        torch.testing.assert_close(batched.iou_scores, single.iou_scores)


def test_the_hq_path_changes_the_masks(model) -> None:
    pixels, boxes = segmenter_inputs()
    with torch.no_grad():
        combined = SamHQSegmenter(model).decode(SamHQSegmenter(model).encode(pixels), boxes)
        hq_only = SamHQSegmenter(model, hq_token_only=True)
        alone = hq_only.decode(hq_only.encode(pixels), boxes)
    assert not torch.allclose(combined[0].low_res_logits, alone[0].low_res_logits, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch) -> None:
    segmenter = SamHQSegmenter(attach_lora(build_sam_hq("tiny_hq")))
    gradients, calls = checkpointed_gradients(segmenter, monkeypatch)
    assert calls == 2  # every encoder block ran checkpointed, once
    assert any(float(g.abs().sum()) > 0 for g in gradients)
    assert "forward" not in vars(segmenter.sam.vision_encoder.layers[0])  # restored


def test_variants_are_sams_plus_the_hq_parts() -> None:
    config = hq_config(tiny())
    assert fingerprint(config) == fingerprint(tiny())
    assert config.mask_decoder_config.vit_dim == 32
    assert set(SAM_HQ_VARIANTS) == {"sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "tiny_hq"}
    assert SAM_HQ_VARIANTS["sam_hq_vit_l"]().mask_decoder_config.vit_dim == 1024
    with pytest.raises(ValueError, match="registered variants"):
        build_sam_hq("vit_b")
