"""SAM 3 as a box prompter: preprocessing, score rule, shared vision features, registry, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    CLIPTokenizer,
    Sam3Config,
    Sam3DETRDecoderConfig,
    Sam3DETREncoderConfig,
    Sam3GeometryEncoderConfig,
    Sam3MaskDecoderConfig,
    Sam3Model,
    Sam3VisionConfig,
    Sam3ViTConfig,
)

from co2sam.prompts.registry import build_prompter, prompter_spec
from co2sam.prompts.sam3 import Sam3Prompter, preprocess_sam3

CLASSES = ("background", "cat", "diningtable", "dog")
WORDS = ("cat", "dining", "table", "dog", "kitten")
NUM_QUERIES = 10


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over a few words (character merges), written to ``folder``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[str] = []
    for word in WORDS:
        for char in word:
            vocab.setdefault(char, len(vocab))
            vocab.setdefault(char + "</w>", len(vocab))
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_sam3() -> Sam3Model:
    """A random SAM 3: ViT 32 wide at 112 (patch 14), 1-layer CLIP text, 10 queries."""
    vit = Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=112, patch_size=14, window_size=4, global_attn_indexes=[1],
        pretrain_image_size=112,
    )  # fmt: skip
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32),
        text_config={
            "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
            "projection_dim": 32, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
        },
        geometry_encoder_config=Sam3GeometryEncoderConfig(num_layers=1, **small),
        detr_encoder_config=Sam3DETREncoderConfig(num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(num_layers=1, num_queries=NUM_QUERIES, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_attention_heads=2),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Sam3Model(config).eval()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam3")
    tokenizer = clip_tokenizer(folder)
    model = tiny_sam3()
    model.save_pretrained(folder)
    return model, tokenizer, folder


def _image(height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_preprocess_stretches_to_a_square_and_normalises():
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    image[:, :30] = 255  # left half white
    pixels = preprocess_sam3([image], 112)
    assert pixels.shape == (1, 3, 112, 112)
    assert pixels[0, :, :, :50].min() == pytest.approx(1.0)  # (1 - 0.5) / 0.5
    assert pixels[0, :, :, 62:].max() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="HWC uint8"):
        preprocess_sam3([image.astype(np.float32)], 112)


def test_boxes_follow_sam3s_score_rule_and_frame(parts):
    model, tokenizer, _ = parts
    image = _image()
    prompter = Sam3Prompter(model, tokenizer, CLASSES, box_threshold=0.0, device="cpu")
    boxes = prompter(image, [1, 3])
    with torch.no_grad():
        encoded = tokenizer(
            ["cat", "dog"], padding="max_length", max_length=32, return_tensors="pt"
        )
        pixels = preprocess_sam3([image, image], 112)
        output = model(pixel_values=pixels, **encoded)
    expected = output.pred_logits.sigmoid() * output.presence_logits.sigmoid()
    assert len(boxes) == 2 * NUM_QUERIES  # threshold 0 keeps every query of both prompts
    assert boxes.classes.tolist() == [1] * NUM_QUERIES + [3] * NUM_QUERIES
    np.testing.assert_allclose(boxes.scores, expected.flatten().numpy(), rtol=1e-4, atol=1e-6)
    scale = np.array([90, 60, 90, 60], dtype=np.float32)
    pixel_boxes = np.minimum(np.maximum(output.pred_boxes.reshape(-1, 4).numpy() * scale, 0), scale)
    np.testing.assert_allclose(boxes.xyxy, pixel_boxes, rtol=1e-4, atol=1e-3)
    median = float(np.median(boxes.scores))
    strict = Sam3Prompter(model, tokenizer, CLASSES, box_threshold=median, device="cpu")
    kept = strict(image, [1, 3])
    assert 0 < len(kept) < len(boxes) and (kept.scores > median).all()


def test_shared_vision_features_equal_separate_calls_and_chunks(parts):
    model, tokenizer, _ = parts
    images = [_image(seed=0), _image(40, 70, seed=1)]
    together = Sam3Prompter(model, tokenizer, CLASSES, box_threshold=0.2, device="cpu")
    chunked = Sam3Prompter(
        model, tokenizer, CLASSES, box_threshold=0.2, device="cpu", batch_size=2,
        texts_per_forward=1,
    )  # fmt: skip
    all_classes = together.detect(images, [None, None])
    per_image_chunked = chunked.detect(images, [None, None])
    for a, b in zip(all_classes, per_image_chunked, strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        assert a.classes.tolist() == b.classes.tolist()
    # all-class mode queries every class; per-class mode only the labels
    assert set(together(images[0], [2]).classes.tolist()) <= {2}


def test_synonyms_query_every_text_and_long_texts_are_refused(parts):
    model, tokenizer, _ = parts
    texts = [["cat", "kitten"], ["dining table"], ["dog"]]
    prompter = Sam3Prompter(model, tokenizer, CLASSES, class_texts=texts, device="cpu")
    assert prompter.queries_for([1]) == [(1, "cat"), (1, "kitten")]
    assert len(prompter.queries_for(None)) == 4
    with pytest.raises(ValueError, match="not a class index"):
        prompter.queries_for([7])
    with pytest.raises(ValueError, match="tokens"):
        Sam3Prompter(model, tokenizer, CLASSES, class_texts=[["cat " * 40], ["dog"], ["dog"]])


def test_boxes_command_writes_a_sam3_cache(parts, tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app
    from co2sam.config import load_config
    from co2sam.data.synthetic import make_synthetic_dataset
    from co2sam.prompts import box_source, load_box_cache

    _, _, folder = parts
    make_synthetic_dataset(tmp_path / "data", num_images=4, num_classes=3, image_size=32)
    out = tmp_path / "boxes.jsonl"
    result = CliRunner().invoke(
        app,
        ["boxes", "--data-root", str(tmp_path / "data"), "--set", "data.dataset=synthetic",
         "--split", "val", "--detector", str(folder), "--out", str(out),
         "--set", "prompts.box_threshold=0", "--set", "prompts.device=cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(sam3)" in result.output
    cache = load_box_cache(out, {"origin": "sam3", "detector": str(folder), "mode": "all"})
    assert "text_threshold" not in cache.settings  # SAM 3 does not use it
    assert len(cache) == 1 and all(len(boxes) > 0 for boxes in cache.values())

    config = load_config(
        None,
        [f"data.root={tmp_path / 'data'}", "data.dataset=synthetic", "prompts.source=detector",
         f"prompts.detector={folder}", "prompts.box_threshold=0.1", "prompts.device=cpu"],
    )  # fmt: skip
    from co2sam.data import build_dataset

    dataset = build_dataset(config.data, "val")
    assert prompter_spec(str(folder)).name == "sam3"  # read from the folder's config.json
    live = box_source(config, "val", dataset)
    assert live.origin == "sam3" and "SAM 3" in live.description
    assert isinstance(build_prompter(config, dataset.class_names), Sam3Prompter)
    assert (live(dataset[0]).scores > 0.1).all()
