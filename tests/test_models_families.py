"""Every model family through the same Segmenter interface: loading, LoRA placement and
counts, adapters off = base, a training step, fit + evaluate, adapter folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import Sam2Model, SamHQModel, SamModel

from co2sam.config import LossConfig, load_config
from co2sam.models import sam2 as sam2_module
from co2sam.models.families import FAMILIES, family_of, family_of_model_type, variant_family
from co2sam.sam import (
    AdapterError,
    Sam2Segmenter,
    SamHQSegmenter,
    Segmenter,
    attach_lora,
    load_adapter,
    load_sam,
    lora_parameters,
    read_adapter_metadata,
    save_adapter,
    segmenter_for,
)
from co2sam.train.data import TrainBatch
from co2sam.train.step import training_step

NEW_FAMILIES = {"tiny_hq": (SamHQModel, SamHQSegmenter), "tiny_sam2": (Sam2Model, Sam2Segmenter)}
FAMILY_NAMES = {"tiny_hq": "sam-hq", "tiny_sam2": "sam2"}
VARIANTS = ["tiny", *NEW_FAMILIES]


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(2)]


def _boxes() -> list[np.ndarray]:
    return [
        np.array([[5, 5, 60, 50], [30, 10, 88, 58]], dtype=np.float32),
        np.array([[10, 20, 70, 55]], dtype=np.float32),
    ]


def _masks(segmenter: Segmenter) -> list[torch.Tensor]:
    prepared = segmenter.preprocess(_images())
    boxes = [
        segmenter.scale_boxes(torch.from_numpy(b), size)
        for b, size in zip(_boxes(), prepared.original_sizes, strict=True)
    ]
    _, decoded = segmenter(prepared.pixel_values, boxes)
    return [output.low_res_logits for output in decoded]


def _randomize_lora(model: PeftModel, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("variant", list(NEW_FAMILIES))
def test_load_sam_builds_registered_and_saved_models(variant: str, tmp_path: Path) -> None:
    model_class, segmenter_class = NEW_FAMILIES[variant]
    model = load_sam(variant)
    assert type(model) is model_class and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert isinstance(segmenter_for(model), segmenter_class)
    model.save_pretrained(tmp_path)
    reloaded = load_sam(str(tmp_path))  # the family is read from config.json's model_type
    assert type(reloaded) is model_class
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other_seed = load_sam(f"{variant}:1")
    assert not all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other_seed.state_dict().values(), strict=True)
    )


def test_families_are_found_by_model_type_variant_and_model() -> None:
    assert family_of_model_type("sam2_video").name == "sam2"  # the hub's sam2.1 folders
    assert family_of_model_type("sam_hq").name == "sam-hq"
    with pytest.raises(ValueError, match="box prompter"):
        family_of_model_type("sam3")
    assert variant_family("sam2_hiera_base_plus").name == "sam2"
    assert variant_family("sam_hq_vit_b").name == "sam-hq"
    assert variant_family("vit_b").name == "sam" and variant_family("nope") is None
    assert family_of(attach_lora(load_sam("tiny_sam2"))).name == "sam2"
    assert set(FAMILIES) == {"sam", "sam-hq", "sam2"}


@pytest.mark.parametrize(
    ("model_class", "variant", "blocks", "expected"),
    [
        (SamModel, "vit_b", 12, 147_456),
        (SamHQModel, "sam_hq_vit_b", 12, 147_456),
        (Sam2Model, "sam2_hiera_base_plus", 24, 165_760),
    ],
)
def test_lora_rank4_sits_on_q_and_v_of_every_encoder_block(
    model_class, variant: str, blocks: int, expected: int
) -> None:
    config = variant_family(variant).variants[variant]()
    with torch.device("meta"):
        model = attach_lora(model_class(config), rank=4, alpha=4.0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert all(".attn.qkv.q.lora_" in n or ".attn.qkv.v.lora_" in n for n in trainable)
    assert all("vision_encoder." in n for n in trainable)
    assert len(trainable) == blocks * 2 * 2  # blocks x (q, v) x (A, B)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_starts_at_the_base_and_adapters_off_is_the_base(variant: str) -> None:
    plain = segmenter_for(load_sam(variant))
    adapted = segmenter_for(attach_lora(load_sam(variant)))
    with torch.no_grad():
        expected = _masks(plain)
        for found, base in zip(_masks(adapted), expected, strict=True):
            torch.testing.assert_close(found, base, rtol=0, atol=1e-5)  # B = 0 at init
        _randomize_lora(adapted.model)
        changed = _masks(adapted)
        with adapted.adapters_disabled():
            teacher = _masks(adapted)
        again = _masks(adapted)
    for found, base in zip(teacher, expected, strict=True):
        torch.testing.assert_close(found, base, rtol=0, atol=1e-5)
    assert any(not torch.allclose(c, e, atol=1e-3) for c, e in zip(changed, expected, strict=True))
    for a, b in zip(again, changed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", list(NEW_FAMILIES))
def test_one_training_step_updates_only_lora(variant: str) -> None:
    torch.manual_seed(0)
    segmenter = segmenter_for(attach_lora(load_sam(variant)))
    images = _images()
    batch = TrainBatch(
        image_ids=["a", "b"],
        weak=images,
        strong=[255 - image for image in images],
        boxes=_boxes(),
        box_classes=[np.array([1, 2]), np.array([1])],
    )
    before = {n: p.detach().clone() for n, p in segmenter.model.named_parameters()}
    parameters = segmenter.trainable_parameters()
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    total, logs = training_step(segmenter, batch, LossConfig())
    assert total is not None and torch.isfinite(total)
    assert logs["images"] == 2 and logs["boxes"] == 3
    total.backward()
    assert all(p.grad is not None for p in parameters)
    assert any(float(p.grad.abs().sum()) > 0 for p in parameters)
    frozen = [p for p in segmenter.model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    optimizer.step()
    for name, param in segmenter.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, before[name]), name
        elif "lora_" not in name:
            assert torch.equal(param, before[name]), name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, num_images=4, num_classes=2, image_size=48, seed=0, splits={"train": 2, "val": 2}
    )
    return root


@pytest.mark.parametrize("variant", list(NEW_FAMILIES))
def test_fit_evaluate_and_the_saved_adapter(variant: str, data_root, tmp_path: Path) -> None:
    from co2sam.data import build_dataset
    from co2sam.evaluate import evaluate_model
    from co2sam.prompts import box_source
    from co2sam.train.loop import fit

    config = load_config(
        None,
        [f"model.sam={variant}", "data.dataset=synthetic", f"data.root={data_root}",
         "data.train_split=train", "data.num_workers=0", "prompts.source=oracle",
         f"train.out_dir={tmp_path / 'run'}", "train.accelerator=cpu", "train.epochs=1",
         "train.batch_size=2", "train.val_every=1", "optim.warmup_steps=0", "optim.lr=1e-2"],
    )  # fmt: skip
    result = fit(config, progress=False)
    assert result.step == 1 and result.best_adapter is not None
    metadata = read_adapter_metadata(result.best_adapter)
    assert metadata["family"] == FAMILY_NAMES[variant] and metadata["base"] == variant

    loaded = segmenter_for(load_adapter(None, result.best_adapter))  # base from the folder
    assert type(loaded) is NEW_FAMILIES[variant][1]
    trained = {n: p for n, p in result.segmenter.model.named_parameters() if "lora_" in n}
    for name, param in loaded.model.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, trained[name]), name
    dataset = build_dataset(config.data, "val")
    boxes = box_source(config, "val", dataset)
    metrics = evaluate_model(loaded, dataset, boxes, modes=("label-guided",), progress=False)
    expected = evaluate_model(
        result.segmenter, dataset, boxes, modes=("label-guided",), progress=False
    )
    assert metrics["label-guided"]["num_images"] == 2
    assert metrics["label-guided"]["miou"] == pytest.approx(expected["label-guided"]["miou"])
    assert metrics["label-guided"]["miou"] == pytest.approx(result.best["miou"])


def _adapter(variant: str, folder: Path) -> Path:
    model = attach_lora(load_sam(variant))
    _randomize_lora(model)
    return save_adapter(model, folder, base=variant)


def test_adapters_are_refused_on_another_family(tmp_path: Path) -> None:
    hq = _adapter("tiny_hq", tmp_path / "hq")
    sam2 = _adapter("tiny_sam2", tmp_path / "sam2")
    # SAM-HQ's ViT is SAM's: same fingerprint, so only the family tells them apart.
    assert (
        read_adapter_metadata(hq)["fingerprint"]
        == (
            json.loads((_adapter("tiny", tmp_path / "sam") / "co2sam_adapter.json").read_text())[
                "fingerprint"
            ]
        )
    )
    with pytest.raises(AdapterError, match=r"trained on SAM-HQ \('tiny_hq'\).*given is SAM "):
        load_adapter("tiny", hq)
    with pytest.raises(AdapterError, match=r"trained on SAM 2\.1 .*given is SAM-HQ"):
        load_adapter(load_sam("tiny_hq"), sam2)
    with pytest.raises(AdapterError, match="SAM 2.1"):
        load_adapter(attach_lora(load_sam("tiny")), sam2)


def test_adapter_onto_another_sam2_architecture_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _adapter("tiny_sam2", tmp_path)

    def deeper():
        config = sam2_module.tiny_sam2()
        config.vision_config.backbone_config.blocks_per_stage = [1, 1, 3, 1]
        config.vision_config.backbone_config.global_attention_blocks = [4]
        return config

    monkeypatch.setitem(sam2_module.SAM2_VARIANTS, "tiny_sam2_deeper", deeper)
    with pytest.raises(AdapterError, match=r"blocks_per_stage.*\[1, 1, 2, 1\].*\[1, 1, 3, 1\]"):
        load_adapter("tiny_sam2_deeper", folder)


def test_adapter_folders_without_a_family_are_sam_ones(tmp_path: Path) -> None:
    folder = _adapter("tiny", tmp_path)
    path = folder / "co2sam_adapter.json"
    metadata = json.loads(path.read_text())
    assert metadata.pop("family") == "sam"
    path.write_text(json.dumps(metadata))  # as written before families existed
    assert isinstance(load_adapter("tiny", folder), PeftModel)
    with pytest.raises(AdapterError, match="trained on SAM "):
        load_adapter("tiny_hq", folder)
