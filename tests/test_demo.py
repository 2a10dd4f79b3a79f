"""The embedded demo: shipped weights, simulated detector, and that adaptation helps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from co2sam.demo.data import (
    ROLES,
    make_domain,
    pretraining_spec,
    scene_seed,
    source_val_spec,
    target_spec,
)
from co2sam.demo.detector import (
    DETECTORS,
    DetectorSettings,
    box_quality,
    detector_settings,
    simulated_boxes,
    supervision_record,
)
from co2sam.demo.model import (
    build_demo_sam,
    demo_sam_available,
    demo_sam_path,
    load_demo_sam,
    save_demo_sam,
)
from co2sam.prompts.oracle import dataset_instance_mask, oracle_boxes

needs_weights = pytest.mark.skipif(
    not demo_sam_available(), reason="run scripts/make_demo_sam.py to create the demo SAM"
)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from co2sam.data.voc import VocDataset

    root = make_domain(tmp_path_factory.mktemp("target"), target_spec(num_train=6, num_val=4))
    return VocDataset(root, "train"), VocDataset(root, "val")


def test_build_demo_sam_is_deterministic_and_sam_initialised():
    first, second = build_demo_sam(seed=3), build_demo_sam(seed=3)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Fourier position features with std ~1 (transformers would draw std hidden/2 = 32).
    features = first.shared_image_embedding.positional_embedding
    assert 0.5 < float(features.detach().std()) < 2.0
    assert torch.equal(features, first.prompt_encoder.shared_embedding.positional_embedding)


def test_save_demo_sam_round_trip_is_fp16_on_disk_fp32_in_memory(tmp_path):
    model = build_demo_sam(seed=1)
    folder = save_demo_sam(model, tmp_path / "sam", {"command": "test"})
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    loaded = load_demo_sam(folder)
    assert next(loaded.parameters()).dtype == torch.float32
    original = model.state_dict()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, original[name].half().float(), msg=name)
    assert json.loads((folder / "provenance.json").read_text()) == {"command": "test"}


@needs_weights
def test_shipped_demo_sam_loads_and_records_how_it_was_made():
    folder = demo_sam_path()
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["command"].startswith("python scripts/make_demo_sam.py")
    assert "seed" in provenance
    model = load_demo_sam()
    assert not any(p.requires_grad for p in model.parameters())


def test_simulated_detector_perturbs_and_is_deterministic(target):
    train, _ = target
    settings = DetectorSettings(jitter=0.1, miss_rate=0.2, false_rate=0.5, seed=4)
    first = simulated_boxes(train, settings, all_classes=False)
    second = simulated_boxes(train, settings, all_classes=False)
    differs = False
    for index in range(len(train)):
        sample = train[index]
        boxes = first(sample)
        np.testing.assert_array_equal(boxes.xyxy, second(sample).xyxy)
        exact = oracle_boxes(sample, dataset_instance_mask(train, sample.id))
        differs |= boxes.xyxy.shape != exact.xyxy.shape or not np.allclose(boxes.xyxy, exact.xyxy)
        # Training queries only the image's labels: false boxes carry one of them.
        assert set(boxes.classes.tolist()) <= set(sample.labels)
        assert np.all(boxes.scores < 1.0)
    assert differs, "the simulated detector returned the clean oracle boxes"


def test_simulated_detector_raises_for_unknown_image(target):
    from co2sam.records import Sample

    train, _ = target
    table = simulated_boxes(train, DetectorSettings(), all_classes=True)
    with pytest.raises(KeyError, match="no boxes"):
        table(Sample(np.zeros((4, 4, 3), np.uint8), None, [], "missing"))


def _mask_digests(voc_root) -> dict[str, str]:
    """Image id -> digest of its class mask and instance mask (the scene's layout)."""
    import hashlib

    from co2sam.data.image_io import read_label_png

    digests = {}
    for path in sorted((voc_root / "SegmentationClass").glob("*.png")):
        instances = read_label_png(voc_root / "SegmentationObject" / path.name)
        data = read_label_png(path).tobytes() + instances.tobytes()
        digests[path.stem] = hashlib.sha256(data).hexdigest()
    return digests


def test_scene_seeds_of_the_roles_never_meet():
    seeds = {role: {scene_seed(role, s) for s in (0, 1, 2, 999_999)} for role in ROLES}
    assert sum(len(v) for v in seeds.values()) == len(set().union(*seeds.values()))
    with pytest.raises(ValueError, match="demo seeds"):
        scene_seed("target", 1_000_000)


def test_no_target_or_source_val_layout_equals_a_pretraining_layout(tmp_path):
    """The shipped demo SAM was pretrained on pretraining_spec(seed=0) (provenance.json)."""
    pretraining = pretraining_spec(seed=0)
    if demo_sam_available():
        provenance = json.loads((demo_sam_path() / "provenance.json").read_text())
        assert provenance["source_domain"]["scene_seed"] == pretraining.scene_seed
    seen = set(_mask_digests(make_domain(tmp_path / "pretraining", pretraining)).values())
    assert len(seen) == sum(pretraining.splits.values())  # every layout distinct
    for seed in (0, 1):
        for name, spec in (
            ("target", target_spec(seed=seed)),
            ("source-val", source_val_spec(seed=seed)),
        ):
            digests = _mask_digests(make_domain(tmp_path / f"{name}-{seed}", spec))
            shared = [i for i, d in digests.items() if d in seen]
            assert not shared, f"{name} seed {seed}: {len(shared)} pretraining layouts"
    # The check can fail: a target drawn from the pretraining scene seed (the old demo at
    # seed 0) repeats every pretraining layout under the target's look.
    same_seed = target_spec(num_train=8, num_val=0, seed=0)
    same_seed.role = "pretraining"
    copied = _mask_digests(make_domain(tmp_path / "contaminated", same_seed))
    assert set(copied.values()) <= seen


def test_harder_detector_is_worse_than_the_default(target):
    train, _ = target
    quality = {
        name: box_quality(
            train, simulated_boxes(train, detector_settings(name, 0), all_classes=False)
        )
        for name in DETECTORS
    }
    default, harder = quality["default"], quality["harder"]
    assert harder["recall"] < default["recall"] <= 1.0
    assert harder["mean_best_iou"] < default["mean_best_iou"]
    assert harder["false_per_image"] > default["false_per_image"]
    exact = simulated_boxes(train, DetectorSettings(0.0, 0.0, 0.0, (1.0, 1.0)), all_classes=False)
    assert box_quality(train, exact) == {
        "recall": 1.0, "mean_best_iou": 1.0, "false_per_image": 0.0,
        "boxes_per_image": pytest.approx(exact.count() / len(train)),
    }  # fmt: skip


def test_supervision_record_says_the_boxes_come_from_ground_truth_masks():
    record = supervision_record(detector_settings("harder", 3))
    assert "ground-truth instance masks" in record["training_boxes"]
    assert record["detector"]["miss_rate"] == DETECTORS["harder"].miss_rate
    assert record["detector"]["seed"] == 3


# Decided before measuring: the claim is "Co2SAM adaptation improves the target domain's
# mIoU in both modes"; it holds at a seed when the gain is at least 1 point.
MIN_GAIN = 0.01


@needs_weights
@pytest.mark.parametrize("seed", [0, 1])
def test_quick_demo_adaptation_improves_target_miou(tmp_path, seed):
    """Co2SAM training beats the plain model on the target domain, at two seeds."""
    from co2sam.demo.pipeline import run_demo

    out = tmp_path / "demo"
    # The second stage runs at seed 0 only (it adds about 20 s).
    report = run_demo(
        out, quick=True, seed=seed, harder_boxes=False, progress=False, second_stage=seed == 0
    )
    saved = json.loads((out / "report.json").read_text())
    for mode in ("label-guided", "open"):
        before = saved["before"]["target"][mode]["miou"]
        after = saved["after"]["target"][mode]["miou"]
        assert after - before >= MIN_GAIN, f"seed {seed}, {mode}: {before:.3f} -> {after:.3f}"
    assert set(saved["before"]["target"]["label-guided"]["iou_per_class"]) == set(
        saved["class_names"]
    )
    assert report["target_miou_gain"]["label-guided"] == pytest.approx(
        saved["after"]["target"]["label-guided"]["miou"]
        - saved["before"]["target"]["label-guided"]["miou"]
    )
    assert "ground-truth instance masks" in saved["supervision"]["training_boxes"]
    assert saved["config"]["prompts"]["source"] == "simulated"
    assert saved["domains"]["target"]["scene_seed"] == scene_seed("target", seed)
    assert list(saved["detectors"]) == ["default"]
    assert saved["machine"]["at_start"]["torch_threads"] >= 1
    assert (out / "config.yaml").is_file() and (out / "before_after.png").is_file()
    assert (out / "train" / "last" / "adapter_model.safetensors").is_file()
    assert len(report["files"]["overlays"]) > 0
    # The second stage: Co2SAM's pseudo-labels -> a SegFormer alone (no boxes, no labels).
    # Measured (quick, seeds 0-4): its target open mIoU 89.8, 88.7, 90.3, 89.0, 88.5 against
    # Co2SAM's 77.2, 75.3, 78.5, 79.8, 76.9 (margin 9.2 to 13.4 points).
    second = saved["second_stage"]
    if seed != 0:
        assert second is None
        return
    segmenter_open = second["results"]["target"]["open"]["miou"]
    assert segmenter_open >= saved["after"]["target"]["open"]["miou"]
    assert 0 < second["pseudo_labels"]["miou_label_guided"] <= 1
    assert second["distill_iterations"] == 150
    assert all(value > 0 for value in second["speed"]["seconds_per_image"].values())
    assert (out / "second_stage" / "distill" / "best" / "model.safetensors").is_file()


def test_demo_refuses_a_folder_that_is_not_a_demo_run(tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app

    (tmp_path / "thesis.tex").write_text("my own file")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 2
    assert "not empty and is not a demo run" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_report_tables_fit_80_columns_without_cutting_names():
    from rich.console import Console

    from co2sam.demo import report as reporting

    names = ["background", "red ellipse", "lime rectangle", "cyan triangle", "violet pentagon"]

    def results(miou):
        metrics = {"miou": miou, "iou_per_class": [miou] * 5, "pixel_accuracy": 0.9}
        by_mode = {mode: {**metrics, "num_images": 4} for mode in ("label-guided", "open")}
        return {"target": by_mode, "source": by_mode}

    run = {"supervision": {}, "box_quality": {}, "before": results(0.7), "after": results(0.8)}
    report = reporting.build_report(
        settings={}, config={}, class_names=names, domains={},
        runs={"default": {**run, "adapter": "a"}, "harder": {**run, "adapter": "b"}},
        ablations={"without contrastive loss": results(0.75)}, timings={}, machine={},
        second_stage={"row": "distilled SegFormer (no boxes)", "results": results(0.9)},
    )  # fmt: skip
    assert report["target_miou_gain"]["label-guided"] == pytest.approx(0.1)
    console = Console(width=80, record=True)
    console.print(reporting.results_table(report))
    console.print(reporting.class_table(report))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "+10.0" in text and "+5.0" in text  # gains over plain SAM with the same boxes
    assert all(word in text for word in ("background", "contrastive", "pentagon", "harder"))
    assert "distilled" in text and "+20.0" in text  # the segmenter's row, with the main boxes
