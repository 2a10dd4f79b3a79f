import numpy as np
import pytest
import torch

from co2sam.train.template_cache import TemplateCache, view_key


def _view(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 8, 9], [3, 3, 15, 11]], np.float32)
    return image, boxes


def test_view_key_follows_the_content():
    image, boxes = _view()
    key = view_key(image, boxes, "sigmoid")
    assert key == view_key(image.copy(), boxes.astype(np.float64), "sigmoid")
    assert key == view_key(np.asfortranarray(image), boxes, "sigmoid")  # layout is not content
    assert key != view_key(image[:, ::-1], boxes, "sigmoid")  # the flipped view
    moved = boxes.copy()
    moved[0, 0] += 1
    assert key != view_key(image, moved, "sigmoid")
    assert key != view_key(image, boxes, "logits")
    assert key != view_key(image.reshape(16, 12, 3), boxes, "sigmoid")  # same bytes, new shape


def test_cache_counts_and_returns_copies_on_the_device():
    cache = TemplateCache(max_bytes=2**20)
    low_res, prototypes = torch.randn(2, 8, 8).bfloat16(), torch.randn(2, 256)
    assert cache.get("k", "cpu") is None
    assert cache.put("k", low_res, prototypes)
    low_res.zero_()  # the cache holds its own copy
    found = cache.get("k", "cpu")
    assert found is not None and found[0].dtype == torch.bfloat16
    assert found[0].abs().sum() > 0 and torch.equal(found[1], prototypes)
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    assert cache.hit_rate == 0.5
    assert cache.bytes == 2 * 8 * 8 * 2 + 2 * 256 * 4


def test_cache_keeps_template_signs_in_a_fraction_of_the_memory():
    y, x = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    low_res = (1 - ((x - 100) / 60) ** 2 - ((y - 120) / 40) ** 2).mul(8).bfloat16()[None]
    cache = TemplateCache(max_bytes=2**20)
    assert cache.put("k", low_res, torch.randn(1, 256))
    assert cache.bytes * 8 < low_res.numel() * 2  # a bf16 tensor would take 128 KiB
    found, _ = cache.get("k", "cpu")
    up = torch.nn.functional.interpolate
    for size in (1024, 999):
        expected = up(low_res.float()[None], size=(size, size), mode="bilinear") > 0
        assert torch.equal(
            up(found.float()[None], size=(size, size), mode="bilinear") > 0, expected
        )


def test_cache_stays_within_its_budget():
    entry = (torch.randn(1, 8, 8), torch.randn(1, 4))  # 272 bytes
    cache = TemplateCache(max_bytes=600)
    assert cache.put("a", *entry) and cache.put("b", *entry)
    assert not cache.put("c", *entry)
    assert cache.bytes == 544 and len(cache) == 2 and cache.get("c", "cpu") is None
    assert cache.put("a", *entry)  # already kept
    assert TemplateCache.from_gib(1.0).max_bytes == 2**30
    with pytest.raises(ValueError, match="max_bytes"):
        TemplateCache(-1)
