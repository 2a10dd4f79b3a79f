"""SAM 2's Segmenter: stretched input, multi-scale features, equal to transformers'
Sam2Model, one mask per box in train and eval mode, checkpointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segmenter_support import checkpointed_gradients, segmenter_inputs

from co2sam.models.sam2 import SAM2_VARIANTS, build_sam2, sam2_fingerprint
from co2sam.sam import PIXEL_MEAN, PIXEL_STD, Sam2Segmenter, attach_lora


@pytest.fixture(scope="module")
def model():
    return build_sam2("tiny_sam2").eval()


def test_images_are_stretched_to_the_square_input(model) -> None:
    segmenter = Sam2Segmenter(model)
    image = np.zeros((40, 100, 3), dtype=np.uint8)
    image[:, :50] = (200, 100, 50)
    prepared = segmenter.preprocess([image])
    assert prepared.resized_sizes == [(128, 128)] and prepared.original_sizes == [(40, 100)]
    pixels = prepared.pixel_values[0]
    expected = (torch.tensor([200.0, 100.0, 50.0]) - torch.tensor(PIXEL_MEAN)) / torch.tensor(
        PIXEL_STD
    )
    torch.testing.assert_close(pixels[:, 64, 10], expected)  # no padding: the whole frame
    torch.testing.assert_close(pixels[:, 127, 10], expected)
    box = segmenter.scale_boxes(torch.tensor([[10.0, 4.0, 50.0, 40.0]]), (40, 100))
    torch.testing.assert_close(box, torch.tensor([[12.8, 12.8, 64.0, 128.0]]))
    masks = segmenter.postprocess(torch.randn(3, 32, 32), (128, 128), (40, 100))
    assert masks.shape == (3, 40, 100)


def test_decoding_equals_transformers_sam2_forward(model) -> None:
    segmenter = Sam2Segmenter(model)
    pixels, boxes = segmenter_inputs()
    with torch.no_grad():
        features = segmenter.encode(pixels)
        found = segmenter.decode(features, boxes)
        for index, image_boxes in enumerate(boxes):
            expected = model(
                pixel_values=pixels[index : index + 1],
                input_boxes=image_boxes[None],
                multimask_output=False,
            )
            torch.testing.assert_close(
                found[index].low_res_logits, expected.pred_masks[0, :, 0], rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                found[index].iou_scores, expected.iou_scores[0, :, 0], rtol=1e-5, atol=1e-6
            )
    # E at stride 16 plus the projected stride-4 and stride-8 levels
    shapes = [tuple(features.embeddings.shape)] + [tuple(x.shape) for x in features.extras]
    assert shapes == [(2, 32, 8, 8), (2, 4, 32, 32), (2, 8, 16, 16)]
    assert all(float(o.iou_scores.min()) >= 0 and float(o.iou_scores.max()) <= 1 for o in found)


def test_one_mask_per_box_in_train_and_eval_mode(model) -> None:
    segmenter = Sam2Segmenter(model)
    assert model.mask_decoder.dynamic_multimask_via_stability is False
    pixels, boxes = segmenter_inputs()
    with torch.no_grad():
        evaluated = segmenter(pixels, boxes)[1]
        segmenter.train()
        trained = segmenter(pixels, boxes)[1]
        segmenter.eval()
    for a, b in zip(evaluated, trained, strict=True):
        assert torch.equal(a.low_res_logits, b.low_res_logits)
    Sam2Segmenter(model, dynamic_multimask=True)
    assert model.mask_decoder.dynamic_multimask_via_stability is True
    Sam2Segmenter(model)  # leave the shared fixture as the tests expect


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch) -> None:
    segmenter = Sam2Segmenter(attach_lora(build_sam2("tiny_sam2")))
    gradients, calls = checkpointed_gradients(segmenter, monkeypatch)
    assert calls == 5  # every encoder block ran checkpointed, once
    assert all(float(g.abs().sum()) > 0 for g in gradients)


def test_registered_sam2_1_architectures() -> None:
    base_plus = sam2_fingerprint(SAM2_VARIANTS["sam2_hiera_base_plus"]())
    assert base_plus == {
        "image_size": 1024,
        "embed_dim_per_stage": [112, 224, 448, 896],
        "blocks_per_stage": [2, 3, 16, 3],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "global_attention_blocks": [12, 16, 20],
    }
    large = SAM2_VARIANTS["sam2_hiera_large"]().vision_config
    assert large.backbone_channel_list == [1152, 576, 288, 144]
    assert large.backbone_feature_sizes == [[256, 256], [128, 128], [64, 64]]
    with pytest.raises(ValueError, match="registered variants"):
        build_sam2("hiera_b")
