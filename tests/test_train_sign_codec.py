import pytest
import torch
import torch.nn.functional as F

from co2sam.train.sign_codec import decode_signs, encode_signs, mixed_sign_pixels


def _upsample(logits, size):
    return F.interpolate(logits.float()[:, None], size=size, mode="bilinear")[:, 0]


def _blobs(count=3, size=64, seed=0):
    """Smooth mask logits: scaled distance to an ellipse plus a smooth perturbation."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for k in range(count):
        cx, cy, rx, ry = size * (0.3 + 0.15 * k), size * 0.5, size * 0.2, size * (0.15 + 0.05 * k)
        inside = 1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2
        noise = torch.randn(1, 1, 8, 8, generator=generator)
        masks.append(
            8 * inside + 0.5 * F.interpolate(noise, size=(size, size), mode="bilinear")[0, 0]
        )
    return torch.stack(masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_size", [(256, 256), (250, 190), (64, 64)])
def test_decoded_logits_upsample_to_the_same_signs(dtype, out_size):
    logits = _blobs().to(dtype)
    logits[0, 5, 5:9] = 0.0  # exact zeros are kept exactly
    logits[1, 40, 40] = float("nan")
    coded = encode_signs(logits)
    assert coded.dense is None  # coded, not stored dense
    decoded = decode_signs(coded)
    assert decoded.dtype == dtype and decoded.shape == logits.shape
    assert torch.equal(_upsample(decoded, out_size) > 0, _upsample(logits, out_size) > 0)
    assert not torch.equal(decoded, logits)  # magnitudes are not kept
    assert torch.equal(decoded > 0, logits > 0)


def test_smooth_masks_code_small_and_noise_stays_dense():
    logits = _blobs(size=256).bfloat16()
    dense_bytes = logits.numel() * logits.element_size()
    coded = encode_signs(logits)
    assert coded.nbytes * 5 < dense_bytes
    noise = torch.randn(2, 32, 32).bfloat16()
    kept = encode_signs(noise)
    assert kept.dense is not None and kept.nbytes == noise.numel() * 2
    assert torch.equal(decode_signs(kept), noise)


def test_mixed_sign_pixels():
    positive = torch.ones(1, 3, 3)
    assert not mixed_sign_pixels(positive).any()
    with_zero = positive.clone()
    with_zero[0, 0, 0] = 0.0
    marked = mixed_sign_pixels(with_zero)
    assert marked[0, :2, :2].all() and marked.sum() == 4  # only the block holding the 0
    edge = positive.clone()
    edge[0, 2, 2] = -1.0
    assert mixed_sign_pixels(edge)[0].tolist() == [
        [False, False, False],
        [False, True, True],
        [False, True, True],
    ]
    assert mixed_sign_pixels(torch.ones(2, 1, 5)).all()  # no 2x2 block: all kept


def test_odd_sizes_round_trip():
    logits = _blobs(count=1, size=13)[:, :, :11]  # 143 pixels, not a multiple of 8
    coded = encode_signs(logits)
    assert coded.dense is None and coded.positive.numel() == 18
    decoded = decode_signs(coded)
    assert torch.equal(decoded > 0, logits > 0)
    assert torch.equal(_upsample(decoded, (52, 44)) > 0, _upsample(logits, (52, 44)) > 0)
