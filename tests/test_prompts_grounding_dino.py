import numpy as np
import pytest
import torch
from PIL import Image
from test_prompts_text_queries import word_tokenizer
from transformers import (
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from co2sam.classes import VOC_CLASSES, prompt_name
from co2sam.prompts.grounding_dino import GroundingDinoPrompter, preprocess_images, resized_size
from co2sam.records import Boxes

NUM_QUERIES = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (many threads spin on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_grounding_dino(vocab_size: int) -> GroundingDinoForObjectDetection:
    """A random Grounding DINO small enough to run in a fraction of a second on CPU."""
    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
            window_size=4, out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=256,
        ),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=NUM_QUERIES,
    )  # fmt: skip
    return GroundingDinoForObjectDetection(config).eval()


@pytest.fixture(scope="module")
def prompter_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gdino")
    tokenizer = word_tokenizer(folder, [prompt_name(name) for name in VOC_CLASSES[1:]])
    model = tiny_grounding_dino(len(tokenizer))
    return model, tokenizer, folder


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _check(boxes, height, width, allowed):
    assert boxes.xyxy.dtype == np.float32 and boxes.classes.dtype == np.int64
    assert (boxes.xyxy[:, [0, 1]] >= 0).all() and (boxes.xyxy[:, 2] <= width).all()
    assert (boxes.xyxy[:, 3] <= height).all()
    assert (boxes.xyxy[:, 2] >= boxes.xyxy[:, 0]).all()
    assert set(boxes.classes.tolist()) <= set(allowed)
    assert ((boxes.scores >= 0) & (boxes.scores <= 1)).all()


def test_tiny_model_through_the_real_code_path(prompter_parts):
    model, tokenizer, _ = prompter_parts
    prompter = GroundingDinoPrompter(
        model, tokenizer, VOC_CLASSES, box_threshold=0.0, text_threshold=0.0,
        device="cpu", shortest_edge=96, longest_edge=128,
    )  # fmt: skip
    image = _image(48, 80)
    every = prompter(image)  # all 20 classes in one prompt
    assert len(every) == NUM_QUERIES
    _check(every, 48, 80, range(1, 21))

    per_class = prompter(image, labels=[3, 11])  # bird, dining table: one prompt each
    assert len(per_class) == 2 * NUM_QUERIES
    assert sorted(set(per_class.classes.tolist())) == [3, 11]
    _check(per_class, 48, 80, [3, 11])
    assert len(prompter(image, labels=[])) == 0

    strict = GroundingDinoPrompter(
        model, tokenizer, VOC_CLASSES, box_threshold=0.999, text_threshold=0.999,
        device="cpu", shortest_edge=96, longest_edge=128,
    )  # fmt: skip
    assert len(strict(image)) <= len(every)


def test_batched_queries_of_one_image_match_single_ones(prompter_parts):
    model, tokenizer, _ = prompter_parts
    kwargs = dict(box_threshold=0.0, text_threshold=0.0, shortest_edge=96, longest_edge=128)
    single = GroundingDinoPrompter(model, tokenizer, VOC_CLASSES, batch_size=1, **kwargs)
    batched = GroundingDinoPrompter(model, tokenizer, VOC_CLASSES, batch_size=4, **kwargs)
    image = _image(48, 80, 1)
    one, many = single(image, [1, 5, 16]), batched(image, [1, 5, 16])
    np.testing.assert_array_equal(one.classes, many.classes)
    np.testing.assert_allclose(one.xyxy, many.xyxy, atol=1e-3)
    np.testing.assert_allclose(one.scores, many.scores, atol=1e-5)
    # images of different sizes share a padded batch (results may differ slightly)
    images, labels = [image, _image(64, 64, 2)], [[1, 5], [7]]
    for boxes, image_i, allowed in zip(batched.detect(images, labels), images, labels, strict=True):
        assert len(boxes) == len(allowed) * NUM_QUERIES
        _check(boxes, image_i.shape[0], image_i.shape[1], allowed)


def test_loads_from_a_local_folder(prompter_parts, tmp_path):
    model, tokenizer, _ = prompter_parts
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompter = GroundingDinoPrompter.from_pretrained(
        tmp_path, VOC_CLASSES, box_threshold=0.0, text_threshold=0.0,
        shortest_edge=96, longest_edge=128,
    )  # fmt: skip
    assert len(prompter(_image(40, 40), labels=[15])) == NUM_QUERIES
    with pytest.raises(OSError, match="prompts.detector"):
        GroundingDinoPrompter.from_pretrained(tmp_path / "missing", VOC_CLASSES)


def test_preprocessing_matches_the_official_sizes():
    assert resized_size(375, 500) == (800, 1066)
    assert resized_size(480, 1920) == (333, 1333)
    pixel_values, pixel_mask = preprocess_images([_image(30, 60), _image(60, 30)], 40, 80)
    assert pixel_values.shape == (2, 3, 80, 80)
    assert pixel_mask[0].sum() == 40 * 80 and pixel_mask[0, 40:].sum() == 0
    assert pixel_mask[1, :, 40:].sum() == 0
    white = preprocess_images([np.full((10, 10, 3), 255, np.uint8)], 10, 10)[0]
    assert white[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


def test_boxes_command_with_a_local_detector(prompter_parts, tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app
    from co2sam.data import make_synthetic_dataset
    from co2sam.prompts import load_box_cache

    model, tokenizer, _ = prompter_parts
    detector = tmp_path / "detector"
    model.save_pretrained(detector)
    tokenizer.save_pretrained(detector)
    make_synthetic_dataset(tmp_path / "data", num_images=4, num_classes=3, image_size=32)
    out = tmp_path / "boxes.jsonl"
    result = CliRunner().invoke(
        app,
        ["boxes", "--data-root", str(tmp_path / "data"), "--set", "data.dataset=synthetic",
         "--split", "val", "--detector", str(detector), "--out", str(out),
         "--set", "prompts.box_threshold=0", "--set", "prompts.text_threshold=0",
         "--set", "prompts.image_min_size=96", "--set", "prompts.image_max_size=128"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cache = load_box_cache(out, {"detector": str(detector), "mode": "all", "box_threshold": 0.0})
    assert len(cache) == 1 and all(len(boxes) == NUM_QUERIES for boxes in cache.values())

    from co2sam.config import load_config
    from co2sam.data import build_dataset
    from co2sam.prompts import box_source

    config = load_config(
        None,
        [f"data.root={tmp_path / 'data'}", "data.dataset=synthetic", "data.train_split=train",
         "prompts.source=detector",
         f"prompts.detector={detector}", "prompts.box_threshold=0", "prompts.text_threshold=0",
         "prompts.image_min_size=96", "prompts.image_max_size=128", "prompts.max_boxes=5"],
    )  # fmt: skip
    dataset = build_dataset(config.data, "train")
    live = box_source(config, "train", dataset)  # train split: per-class queries
    sample = dataset[0]
    boxes = live(sample)
    assert live.origin == "grounding-dino" and live.settings["mode"] == "per-class"
    assert len(boxes) == 5 and set(boxes.classes.tolist()) <= set(sample.labels)


# --- prompts.compat: reference ------------------------------------------------------


@pytest.fixture(scope="module")
def reference_parts(tmp_path_factory):
    """A tiny model whose vocabulary has the VOC names as the published code writes them."""
    folder = tmp_path_factory.mktemp("gdino-reference")
    tokenizer = word_tokenizer(folder, list(VOC_CLASSES[1:]))
    return tiny_grounding_dino(len(tokenizer)), tokenizer


def _by_hand(model, tokenizer, image, query, shortest, longest):
    """Token probabilities and unclipped XYXY boxes of one caption on ``image``."""
    pixel_values, pixel_mask = preprocess_images([image], shortest, longest)
    ids = torch.tensor([query.input_ids])
    with torch.inference_mode():
        outputs = model(
            pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=ids,
            attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
        )  # fmt: skip
    cx, cy, w, h = outputs.pred_boxes[0].unbind(-1)
    height, width = image.shape[:2]
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return outputs.logits[0].sigmoid(), xyxy * torch.tensor([width, height] * 2)


@pytest.mark.parametrize("labels", [None, [11, 16]], ids=["evaluation", "training"])
def test_reference_boxes_equal_detecting_on_a_swapped_resized_copy(reference_parts, labels):
    from co2sam.prompts.reference import phrase_class

    model, tokenizer = reference_parts
    kwargs = dict(box_threshold=0.0, text_threshold=0.3, shortest_edge=96, longest_edge=160)
    prompter = GroundingDinoPrompter(
        model, tokenizer, VOC_CLASSES, compat="reference", reference_size=64, **kwargs
    )
    image = _image(30, 50, 3)
    found = prompter(image, labels)

    # By hand: red and blue swapped, longest side 64 (38 x 64), padded to 64 x 64 for an
    # evaluation (all-classes) query; boxes in that frame, mapped back by 50/64 and 30/38.
    copy = np.asarray(Image.fromarray(image[..., ::-1].copy()).resize((64, 38), Image.BILINEAR))
    if labels is None:
        copy = np.pad(copy, ((0, 26), (0, 0), (0, 0)))
    expected_xyxy, expected_classes = [], []
    queries = [(None, q) for q in prompter.all_queries] if labels is None else [
        (label, prompter.queries_for([label])[0]) for label in labels
    ]  # fmt: skip
    for label, query in queries:
        assert (
            tokenizer.decode(query.input_ids[1:-1]).replace(" .", ".")
            == ". ".join(VOC_CLASSES[1:] if label is None else [VOC_CLASSES[label]]) + "."
        )  # the published caption, raw names
        probs, xyxy = _by_hand(model, tokenizer, copy, query, 96, 160)
        expected_xyxy.append(xyxy.numpy() * np.array([50 / 64, 30 / 38] * 2, np.float32))
        for row in probs:
            positions = [p for p in range(1, len(query.input_ids)) if row[p] > 0.3]
            phrase = tokenizer.decode([query.input_ids[p] for p in positions])
            expected_classes.append(label or phrase_class(phrase, VOC_CLASSES))
    np.testing.assert_allclose(found.xyxy, np.concatenate(expected_xyxy), rtol=1e-5, atol=1e-4)
    assert found.classes.tolist() == expected_classes
    if labels is None:  # some boxes may match no class: those carry class 0
        assert set(found.classes.tolist()) <= set(range(0, 21))

    # The swap matters: the same copy without it gives other boxes.
    plain = np.asarray(Image.fromarray(image).resize((64, 38), Image.BILINEAR))
    if labels is None:
        plain = np.pad(plain, ((0, 26), (0, 0), (0, 0)))
    unswapped = _by_hand(model, tokenizer, plain, queries[0][1], 96, 160)[1]
    swapped = _by_hand(model, tokenizer, copy, queries[0][1], 96, 160)[1]
    assert not np.allclose(unswapped.numpy(), swapped.numpy(), atol=1e-3)


def test_reference_and_paper_caches_refuse_each_other(tmp_path):
    from co2sam.config import load_config
    from co2sam.prompts import BoxCacheError, box_source, default_cache_path, write_box_cache
    from co2sam.prompts.source import detector_settings

    class Split:
        class_names = VOC_CLASSES
        ids = ["a"]

    def config(compat):
        return load_config(
            None, [f"data.root={tmp_path}", "data.dataset=synthetic", f"prompts.compat={compat}"]
        )

    path = default_cache_path(config("paper"), "val")
    path.parent.mkdir(parents=True)
    for made, other in (("paper", "reference"), ("reference", "paper")):
        settings = detector_settings(config(made), "val", VOC_CLASSES)
        assert settings["compat"] == made
        write_box_cache(path, settings, {"a": Boxes()}, overwrite=True)
        assert box_source(config(made), "val", Split()).settings["compat"] == made
        with pytest.raises(BoxCacheError, match=f"made with prompts.compat={made}") as error:
            box_source(config(other), "val", Split())
        assert f"--set prompts.compat={other} --overwrite" in str(error.value)
    # Reference caches record the raw names they queried; paper ones the readable texts.
    reference = detector_settings(config("reference"), "val", VOC_CLASSES)["prompts"]
    assert reference[10] == ["diningtable"]
    assert detector_settings(config("paper"), "val", VOC_CLASSES)["prompts"][10] == ["dining table"]
    # A cache made before prompts.compat existed is a paper cache.
    legacy = detector_settings(config("paper"), "val", VOC_CLASSES)
    del legacy["compat"]
    write_box_cache(path, legacy, {"a": Boxes()}, overwrite=True)
    assert box_source(config("paper"), "val", Split()).origin == "grounding-dino"
    with pytest.raises(BoxCacheError, match="prompts.compat=paper"):
        box_source(config("reference"), "val", Split())
