"""Segmenter: preprocessing, box scaling, batched decoding, postprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from co2sam.sam import PIXEL_MEAN, PIXEL_STD, Segmenter, attach_lora, build_sam, resized_size


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(attach_lora(build_sam("tiny")))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_resized_size_rounds_like_sam() -> None:
    assert resized_size((480, 640), 1024) == (768, 1024)
    assert resized_size((375, 500), 1024) == (768, 1024)  # 767.999... rounds up
    assert resized_size((333, 500), 1024) == (682, 1024)
    assert resized_size((100, 60), 128) == (128, 77)


def test_preprocess_sizes_normalisation_and_zero_padding(segmenter: Segmenter) -> None:
    batch = segmenter.preprocess([_image(100, 60), _image(50, 200)])
    assert batch.pixel_values.shape == (2, 3, 128, 128)
    assert batch.pixel_values.dtype == torch.float32
    assert batch.original_sizes == [(100, 60), (50, 200)]
    assert batch.resized_sizes == [(128, 77), (32, 128)]
    assert torch.count_nonzero(batch.pixel_values[0, :, :, 77:]) == 0
    assert torch.count_nonzero(batch.pixel_values[1, :, 32:, :]) == 0
    uniform = np.full((64, 64, 3), (10, 200, 90), dtype=np.uint8)
    values = segmenter.preprocess([uniform]).pixel_values[0, :, 5, 5]
    expected = (torch.tensor([10.0, 200.0, 90.0]) - torch.tensor(PIXEL_MEAN)) / torch.tensor(
        PIXEL_STD
    )
    torch.testing.assert_close(values, expected)


def test_preprocess_accepts_a_uint8_tensor_batch(segmenter: Segmenter) -> None:
    images = [_image(90, 120, seed) for seed in (0, 1)]
    from_arrays = segmenter.preprocess(images)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    from_tensor = segmenter.preprocess(tensor)
    torch.testing.assert_close(from_tensor.pixel_values, from_arrays.pixel_values)
    assert from_tensor.resized_sizes == [(96, 128)] * 2


def test_a_box_around_an_object_lands_on_it_in_the_s_frame(segmenter: Segmenter) -> None:
    image = np.zeros((300, 180, 3), dtype=np.uint8)
    image[60:150, 30:90] = 255  # object: rows 60..149, columns 30..89
    box = torch.tensor([[30.0, 60.0, 90.0, 150.0]])  # XYXY, original pixels
    scaled = segmenter.scale_boxes(box, (300, 180))[0]
    h, w = resized_size((300, 180), 128)
    expected = torch.tensor([30 * w / 180, 60 * h / 300, 90 * w / 180, 150 * h / 300])
    torch.testing.assert_close(scaled, expected)
    pixels = segmenter.preprocess([image]).pixel_values[0, 0]
    x0, y0, x1, y1 = (int(round(v)) for v in scaled.tolist())
    bright, dark = pixels.max(), (0 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    inside = pixels[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    assert torch.allclose(inside, bright)
    assert torch.allclose(pixels[y0 - 2, x0:x1], torch.tensor(dark))
    assert torch.allclose(pixels[y0:y1, x1 + 1], torch.tensor(dark))


def test_batched_decoding_equals_decoding_each_image_alone(segmenter: Segmenter) -> None:
    batch = segmenter.preprocess([_image(128, 128, 0), _image(96, 128, 1), _image(64, 64, 2)])
    boxes = [
        torch.tensor([[10.0, 10.0, 60.0, 70.0]]),
        torch.tensor([[0.0, 0.0, 128.0, 96.0], [20.0, 30.0, 40.0, 90.0], [5.0, 5.0, 6.0, 6.0]]),
        torch.zeros(0, 4),
    ]
    with torch.no_grad():
        embeddings = segmenter.encode(batch.pixel_values)
        together = segmenter.decode(embeddings, boxes)
        alone = [segmenter.decode(embeddings[i : i + 1], [boxes[i]])[0] for i in range(3)]
    assert [o.low_res_logits.shape for o in together] == [(1, 32, 32), (3, 32, 32), (0, 32, 32)]
    assert [o.iou_scores.shape for o in together] == [(1,), (3,), (0,)]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched.low_res_logits, single.low_res_logits)
        torch.testing.assert_close(batched.iou_scores, single.iou_scores)
    for index in range(3):  # and each box alone
        one = segmenter.decode(embeddings[1:2], [boxes[1][index : index + 1]])[0]
        torch.testing.assert_close(one.low_res_logits[0], together[1].low_res_logits[index])
    first, second = together[1].low_res_logits[:2]
    assert not torch.allclose(first, second)


def test_decoding_only_empty_box_lists(segmenter: Segmenter) -> None:
    embeddings = torch.zeros(2, 256, 8, 8)
    outputs = segmenter.decode(embeddings, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert [o.low_res_logits.shape for o in outputs] == [(0, 32, 32)] * 2


def test_upscale_and_postprocess_sizes(segmenter: Segmenter) -> None:
    low_res = torch.randn(3, 32, 32)
    assert segmenter.upscale(low_res).shape == (3, 128, 128)
    assert segmenter.postprocess(low_res, (128, 77), (100, 60)).shape == (3, 100, 60)
    assert segmenter.postprocess(low_res[:0], (128, 77), (100, 60)).shape == (0, 100, 60)


def test_postprocess_crops_the_padding(segmenter: Segmenter) -> None:
    low_res = torch.full((1, 32, 32), -5.0)
    low_res[:, :16, :8] = 5.0  # object in the resized region; padding region stays negative
    # resized (64, 32) inside 128x128: the object covers the top quarter x left quarter of S
    masks = segmenter.postprocess(low_res, (64, 32), (64, 32))
    assert (masks[0, :60, :28] > 0).all() and (masks[0, :, 36:] < 0).all()


def test_decode_under_autocast(segmenter: Segmenter) -> None:
    batch = segmenter.preprocess([_image(64, 80)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = segmenter.encode(batch.pixel_values)
        (output,) = segmenter.decode(embeddings, [torch.tensor([[1.0, 2.0, 60.0, 50.0]])])
    assert output.low_res_logits.shape == (1, 32, 32)
    assert torch.isfinite(output.low_res_logits.float()).all()


def test_image_size_and_trainable_parameters(segmenter: Segmenter) -> None:
    assert segmenter.image_size == 128
    names = {id(p) for p in segmenter.trainable_parameters()}
    assert len(names) == 8 and all(p.requires_grad for p in segmenter.trainable_parameters())
