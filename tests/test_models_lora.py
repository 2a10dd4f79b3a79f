"""LoRA on SAM's q and v projections: parameter count, init, enable/disable, exact math."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from transformers import SamModel

from co2sam.sam import Segmenter, SplitQkv, attach_lora, build_sam, lora_parameters, sam_config


def _pixels(seed: int = 0, size: int = 128) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomize_lora(model: PeftModel, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _boxes() -> list[torch.Tensor]:
    return [torch.tensor([[10.0, 20.0, 90.0, 100.0]]), torch.tensor([[0.0, 0.0, 60.0, 60.0]])]


def test_vit_b_rank4_has_exactly_147456_trainable_parameters() -> None:
    with torch.device("meta"):
        model = attach_lora(SamModel(sam_config("vit_b")), rank=4, alpha=4.0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == 147_456
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(".qkv.q." in n or ".qkv.v." in n for n in trainable)
    assert len(trainable) == 12 * 2 * 2  # 12 blocks x (q, v) x (A, B)


def test_split_qkv_equals_the_fused_linear() -> None:
    fused = torch.nn.Linear(32, 96)
    split = SplitQkv(fused)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(split(x), fused(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(split.fused()(x), fused(x), rtol=0, atol=0)


def test_at_init_lora_model_equals_plain_sam() -> None:
    plain = Segmenter(build_sam("tiny").eval())
    adapted = Segmenter(attach_lora(build_sam("tiny")))
    pixels = _pixels()
    with torch.no_grad():
        expected = plain.decode(plain.encode(pixels), _boxes())
        found = adapted.decode(adapted.encode(pixels), _boxes())
    for e, f in zip(expected, found, strict=True):
        torch.testing.assert_close(f.low_res_logits, e.low_res_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(f.iou_scores, e.iou_scores, rtol=0, atol=1e-5)


def test_disabled_adapters_give_plain_sam_and_enabled_differ() -> None:
    plain = Segmenter(build_sam("tiny").eval())
    adapted = Segmenter(attach_lora(build_sam("tiny")))
    _randomize_lora(adapted.model)
    pixels = _pixels()
    with torch.no_grad():
        expected = plain.encode(pixels)
        with adapted.adapters_disabled():
            disabled = adapted.encode(pixels)
        enabled = adapted.encode(pixels)
    torch.testing.assert_close(disabled, expected, rtol=0, atol=1e-5)
    assert (enabled - expected).abs().max() > 1e-2


def test_adapters_disabled_is_a_no_op_without_lora() -> None:
    segmenter = Segmenter(build_sam("tiny").eval())
    with segmenter.adapters_disabled():
        assert segmenter.trainable_parameters() == []


def test_q_and_v_get_scaled_low_rank_update_and_k_is_untouched() -> None:
    base = build_sam("tiny").eval()
    fused = copy.deepcopy(base.vision_encoder.layers[0].attn.qkv)
    model = attach_lora(base, rank=2, alpha=6.0)  # scaling 3
    _randomize_lora(model)
    qkv = model.get_base_model().vision_encoder.layers[0].attn.qkv
    x = torch.randn(2, 4, 4, fused.in_features)
    width = fused.out_features // 3
    with torch.no_grad():
        found = qkv(x)
        expected = fused(x)
        for index, part in ((0, qkv.q), (2, qkv.v)):
            a, b = part.lora_A["default"].weight, part.lora_B["default"].weight
            expected[..., index * width : (index + 1) * width] += 3.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(found[..., width : 2 * width], fused(x)[..., width : 2 * width])
    assert not hasattr(qkv.k, "lora_A")


def test_lora_init_is_kaiming_a_and_zero_b() -> None:
    model = attach_lora(build_sam("tiny"))
    q = model.get_base_model().vision_encoder.layers[0].attn.qkv.q
    assert torch.count_nonzero(q.lora_B["default"].weight) == 0
    assert q.lora_A["default"].weight.abs().max() > 0
    bound = 1 / q.in_features**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in
    assert q.lora_A["default"].weight.abs().max() <= bound


def test_only_lora_receives_gradients() -> None:
    segmenter = Segmenter(attach_lora(build_sam("tiny")))
    _randomize_lora(segmenter.model)
    embeddings, outputs = segmenter(_pixels(), _boxes())
    loss = embeddings.square().mean() + sum(o.low_res_logits.mean() for o in outputs)
    loss.backward()
    for name, param in segmenter.named_parameters():
        if ".lora_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        segmenter = Segmenter(attach_lora(build_sam("tiny")), gradient_checkpointing=checkpointing)
        _randomize_lora(segmenter.model)
        segmenter.encode(_pixels()).square().mean().backward()
        grads.append([p.grad.clone() for p in segmenter.trainable_parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)
