import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from co2sam.classes import voc_palette
from co2sam.cli import app
from co2sam.config import load_config
from co2sam.data import build_dataset, make_synthetic_dataset
from co2sam.evaluate import evaluate_model, modes_of
from co2sam.metrics import ConfusionMatrix
from co2sam.prompts import oracle_boxes
from co2sam.records import Boxes
from co2sam.sam import Segmenter, attach_lora, load_sam, save_adapter

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root,
        num_images=7,
        num_classes=4,
        image_size=(40, 56),
        splits={"train": 3, "val": 4},
        max_objects=2,
    )
    return root


@pytest.fixture(scope="module")
def dataset(data_root):
    config = load_config(None, ["data.dataset=synthetic", f"data.root={data_root}"])
    return build_dataset(config.data, "val")


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_sam("tiny")).eval()


def with_false_box(sample):
    """Oracle boxes plus a whole-image box of a class the image does not contain."""
    boxes = oracle_boxes(sample)
    absent = next(c for c in range(1, 5) if c not in sample.labels)
    height, width = sample.mask.shape
    return Boxes(
        np.concatenate([boxes.xyxy, [[0, 0, width, height]]]),
        np.concatenate([boxes.classes, [absent]]),
        np.concatenate([boxes.scores, [1.0]]),
    )


def test_evaluate_model_scores_every_image_in_both_modes(segmenter, dataset):
    seen = []
    results = evaluate_model(
        segmenter, dataset, with_false_box, batch_size=3, progress=False, on_prediction=seen.append
    )
    assert set(results) == {"label-guided", "open"}
    assert len(seen) == 2 * len(dataset)
    recomputed = {mode: ConfusionMatrix(5) for mode in results}
    for prediction in seen:
        sample = prediction.sample
        label_map = prediction.label_map.cpu()
        assert label_map.shape == sample.mask.shape
        if prediction.mode == "label-guided":  # the false class is filtered out
            assert set(label_map.unique().tolist()) <= {0, *sample.labels}
        recomputed[prediction.mode].update(label_map, torch.from_numpy(sample.mask))
    for mode, metrics in results.items():
        assert metrics["mode"] == mode
        assert metrics["num_images"] == len(dataset)
        assert metrics["confusion_matrix"] == recomputed[mode].matrix.tolist()
        for key in (
            "miou",
            "iou_per_class",
            "precision",
            "recall",
            "pixel_accuracy",
            "mean_accuracy",
            "fw_iou",
            "classes_present",
        ):
            assert key in metrics
    assert not segmenter.training


def test_batch_size_does_not_change_predictions(segmenter, dataset):
    maps = {}
    for batch_size in (1, 4):
        collected = []
        evaluate_model(
            segmenter,
            dataset,
            oracle_boxes,
            modes=("open",),
            batch_size=batch_size,
            progress=False,
            on_prediction=lambda p, c=collected: c.append(p.label_map.cpu()),
        )
        maps[batch_size] = torch.cat([m.flatten() for m in collected])
    agreement = (maps[1] == maps[4]).float().mean()
    assert agreement > 0.999


def test_limit_and_no_boxes(segmenter, dataset):
    results = evaluate_model(
        segmenter, dataset, lambda sample: Boxes(), modes=("open",), limit=2, progress=False
    )
    metrics = results["open"]
    assert metrics["num_images"] == 2
    assert metrics["recall"][0] == 1.0  # no boxes: everything is background
    assert metrics["precision"][1:] == [None] * 4  # no object predicted


def test_reference_compat_assembles_like_the_published_evaluation(segmenter, dataset):
    from co2sam.predict import box_mask_logits
    from co2sam.semantic import reference_semantic_map

    seen = []
    results = evaluate_model(
        segmenter, dataset, with_false_box, progress=False, compat="reference",
        on_prediction=seen.append,
    )  # fmt: skip
    assert {metrics["compat"] for metrics in results.values()} == {"reference"}
    for prediction in seen:
        sample, boxes = prediction.sample, with_false_box(prediction.sample)
        with torch.inference_mode():
            logits = box_mask_logits(segmenter, [sample.image], [boxes], frame="resized")[0]
        assert logits.shape[-2:] == (91, 128)  # 40x56 scaled so the longest side is 128
        allowed = sample.labels if prediction.mode == "label-guided" else None
        expected = reference_semantic_map(
            logits, torch.from_numpy(boxes.classes), torch.from_numpy(boxes.scores), 5,
            sample.mask.shape, allowed,
        )  # fmt: skip
        assert torch.equal(prediction.label_map.cpu(), expected)
    # The published quirk at work: the whole-image box of an absent class makes unclaimed
    # pixels a class (the first zero channel), not background, in label-guided mode.
    guided = [p for p in seen if p.mode == "label-guided"]
    assert any(set(p.label_map.unique().tolist()) - {0, *p.sample.labels} for p in guided)


def test_modes_of():
    assert modes_of("both") == ("label-guided", "open")
    assert modes_of("open") == ("open",)
    with pytest.raises(ValueError, match="mode"):
        modes_of("closed")


def _assert_palette_png(path, size):
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.size == size
        palette = np.array(image.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    assert np.array_equal(palette, voc_palette())


def test_evaluate_command_writes_report_pngs_and_figures(data_root, dataset, tmp_path):
    adapter = save_adapter(attach_lora(load_sam("tiny")), tmp_path / "adapter", base="tiny")
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--set",
            "data.dataset=synthetic",
            "--set",
            "data.num_workers=0",
            "--data-root",
            str(data_root),
            "--adapter",
            str(adapter),
            "--boxes",
            "oracle",
            "--out",
            str(out),
            "--overlays",
            "--device",
            "cpu",
            "--voc-test-format",
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "label-guided mode" in output and "open mode" in output
    report = json.loads((out / "report.json").read_text())
    assert report["modes"] == ["label-guided", "open"]
    assert report["adapter"] == str(adapter)
    assert report["sam"] == "tiny"
    assert report["box_source"]["origin"] == "oracle"
    assert report["config"]["data"]["dataset"] == "synthetic"
    assert report["results"]["open"]["mode"] == "open"
    assert report["eval_compat"] == "paper" and report["results"]["open"]["compat"] == "paper"
    assert report["checkpoint"]["adapter"] == str(adapter)
    assert report["processes"] == {"count": 1, "cpu_threads_per_process": torch.get_num_threads()}
    for mode in ("label-guided", "open"):
        assert (out / mode / "confusion_matrix.png").is_file()
        for sample in dataset:
            height, width = sample.mask.shape
            _assert_palette_png(out / mode / "predictions" / f"{sample.id}.png", (width, height))
            with Image.open(out / mode / "overlays" / f"{sample.id}.png") as overlay:
                assert overlay.mode == "RGB" and overlay.size == (width, height)
    test_folder = out / "results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.stem for p in test_folder.glob("*.png")) == sorted(dataset.ids)


def test_evaluate_command_reports_user_errors(data_root, tmp_path):
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--set",
            "data.dataset=synthetic",
            "--data-root",
            str(data_root),
            "--sam",
            "tiny",
            "--boxes",
            str(tmp_path / "missing.jsonl"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2
    assert "missing.jsonl" in "".join(result.output.split())  # rich may wrap long paths


def _evaluate_args(root, *extra):
    return ["evaluate", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
            "--data-root", str(root), "--sam", "tiny", "--boxes", "oracle", "--device", "cpu",
            *extra]  # fmt: skip


@pytest.fixture()
def mask_77(tmp_path):
    """A val split where one mask holds the value 77 (4 classes: 0..4 and 255 are valid)."""
    root = tmp_path / "data"
    make_synthetic_dataset(root, num_images=4, num_classes=4, image_size=32, splits={"val": 4})
    ids = (root / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    path = root / "VOC2012/SegmentationClass" / f"{ids[1]}.png"
    values = np.array(Image.open(path))
    values[3, 3] = 77
    Image.fromarray(values).save(path)
    return root, ids


def test_evaluate_names_a_bad_mask_before_work_and_skips_it_on_request(mask_77, tmp_path):
    root, ids = mask_77
    out = tmp_path / "eval"
    result = runner.invoke(app, _evaluate_args(root, "--out", str(out)))
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"{ids[1]}.png" in text and "[77]" in text and "--skip-bad" in text
    assert not (out / "report.json").exists()

    result = runner.invoke(app, _evaluate_args(root, "--out", str(out), "--skip-bad"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [entry["id"] for entry in report["skipped"]] == [ids[1]]
    assert report["results"]["open"]["num_images"] == 3
    assert sorted(p.stem for p in (out / "open/predictions").glob("*.png")) == sorted(
        ids[:1] + ids[2:]
    )


def test_evaluate_skips_a_bad_mask_found_mid_run(mask_77, tmp_path):
    root, ids = mask_77
    out = tmp_path / "eval"
    result = runner.invoke(app, _evaluate_args(root, "--out", str(out), "--set",
                                               "data.preflight=false"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"][0]["id"] == ids[1] and "77" in report["skipped"][0]["reason"]
    assert report["results"]["open"]["num_images"] == 3


def test_evaluate_output_folders_are_per_run_and_never_mixed(data_root, tmp_path, monkeypatch):
    adapters = [
        save_adapter(attach_lora(load_sam("tiny")), tmp_path / "runs" / name / "best", base="tiny")
        for name in ("first", "second")
    ]
    monkeypatch.chdir(tmp_path)
    for adapter in adapters:
        result = runner.invoke(app, _evaluate_args(data_root, "--adapter", str(adapter)))
        assert result.exit_code == 0, result.output
    dataset_name = data_root.name
    for name in ("first", "second"):  # default: runs/eval/<dataset>-<split>/<adapter>
        report = tmp_path / "runs/eval" / f"{dataset_name}-val" / f"{name}-best" / "report.json"
        assert json.loads(report.read_text())["adapter"].endswith(f"{name}/best")

    out = tmp_path / "shared"
    args = _evaluate_args(data_root, "--out", str(out), "--mode", "open")
    assert runner.invoke(app, [*args, "--adapter", str(adapters[0])]).exit_code == 0
    first = json.loads((out / "report.json").read_text())["results"]["open"]
    result = runner.invoke(app, [*args, "--adapter", str(adapters[1])])
    assert result.exit_code == 2
    assert "another run" in result.output and "--overwrite" in result.output
    again = runner.invoke(app, [*args, "--adapter", str(adapters[0])])  # same run: resumes
    assert again.exit_code == 0 and "resuming: 4 of 4 images done" in again.output
    assert json.loads((out / "report.json").read_text())["results"]["open"] == first
    replaced = runner.invoke(app, [*args, "--adapter", str(adapters[1]), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "report.json").read_text())["adapter"] == str(adapters[1])
    retrained = attach_lora(load_sam("tiny"))  # best/ rewritten in place by more training
    torch.nn.init.normal_(next(p for n, p in retrained.named_parameters() if "lora_B" in n))
    save_adapter(retrained, tmp_path / "retrained", base="tiny")
    (adapters[1] / "adapter_model.safetensors").write_bytes(
        (tmp_path / "retrained" / "adapter_model.safetensors").read_bytes()
    )
    stale = runner.invoke(app, [*args, "--adapter", str(adapters[1])])
    assert stale.exit_code == 2 and "adapter_sha256" in stale.output  # not resumed


def test_evaluate_write_errors_are_one_line(data_root, tmp_path, monkeypatch):
    import errno

    import co2sam.pseudo_labels

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = runner.invoke(app, _evaluate_args(data_root, "--out", str(blocker / "eval")))
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "a file is in the way" in " ".join(result.output.split())

    def full_disk(path, label):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(co2sam.pseudo_labels, "save_label_png", full_disk)
    result = runner.invoke(app, _evaluate_args(data_root, "--out", str(tmp_path / "eval")))
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "No space left on device; the disk is full" in text


def test_a_cache_from_another_detector_is_refused_with_the_fix(data_root, tmp_path):
    from co2sam.prompts.build import build_box_cache

    config = load_config(None, ["data.dataset=synthetic", f"data.root={data_root}",
                                f"prompts.cache_dir={tmp_path}",
                                "prompts.detector=other/dino"])  # fmt: skip
    dataset = build_dataset(config.data, "val")
    build_box_cache(config, "val", dataset, detector=lambda samples: [Boxes() for _ in samples],
                    progress=False)  # fmt: skip
    args = ["evaluate", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
            "--data-root", str(data_root), "--sam", "tiny", "--device", "cpu",
            "--set", f"prompts.cache_dir={tmp_path}", "--mode", "open"]  # fmt: skip
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "pass --detector other/dino" in " ".join(result.output.split())
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--detector", "other/dino"])
    assert result.exit_code == 0, result.output


def test_reports_say_whether_best_was_chosen_on_the_evaluated_split(tmp_path):
    from co2sam.commands.inference import checkpoint_record

    extra = {"selected_on": {"split": "val", "metric": "label-guided mIoU"}, "step": 7}
    model = attach_lora(load_sam("tiny"))
    best = save_adapter(
        model, tmp_path / "best", base="tiny", extra={**extra, "checkpoint": "best"}
    )
    last = save_adapter(
        model, tmp_path / "last", base="tiny", extra={**extra, "checkpoint": "last"}
    )
    on_val = checkpoint_record(str(best), "val")
    assert on_val["checkpoint"] == "best" and on_val["selected_on_this_split"]
    assert "optimistic" in on_val["note"]
    assert "note" not in checkpoint_record(str(best), "test")
    assert checkpoint_record(str(last), "val")["checkpoint"] == "last"
    assert "note" not in checkpoint_record(str(last), "val")
    assert checkpoint_record(None, "val") is None


def _segmenter_folder(dataset, folder):
    from co2sam.models.segmentation_net import build_net, save_net

    torch.manual_seed(0)
    net = build_net("segformer", "tiny", dataset.class_names)
    return save_net(net.eval(), folder, {"eval": {"scale": [112, 40]}})


def test_evaluate_command_runs_a_segmenter_alone_in_open_mode(data_root, dataset, tmp_path):
    folder = _segmenter_folder(dataset, tmp_path / "best")
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["evaluate", "--set", "data.dataset=synthetic", "--set", "data.num_workers=0",
         "--data-root", str(data_root), "--segmenter", str(folder), "--out", str(out),
         "--device", "cpu", "--tta"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "open mode" in output and "label-guided mode" not in output
    report = json.loads((out / "report.json").read_text())
    assert report["modes"] == ["open"] and report["predictor"] == "segmenter"
    assert report["segmenter"] == str(folder) and "with flips" in report["segmenter_settings"]
    assert "box_source" not in report and report["results"]["open"]["num_images"] == len(dataset)
    assert 0 <= report["results"]["open"]["miou"] <= 1
    for sample in dataset:
        height, width = sample.mask.shape
        _assert_palette_png(out / "open" / "predictions" / f"{sample.id}.png", (width, height))


def test_evaluate_command_refuses_a_segmenter_of_other_classes(data_root, tmp_path):
    from co2sam.models.segmentation_net import build_net, save_net

    folder = save_net(build_net("segformer", "tiny", ["background", "x"]), tmp_path / "s", {})
    arguments = ["evaluate", "--set", "data.dataset=synthetic", "--data-root", str(data_root)]
    result = runner.invoke(app, [*arguments, "--segmenter", str(folder), "--device", "cpu"])
    assert result.exit_code == 2 and "trained for classes" in " ".join(result.output.split())
    mixed = runner.invoke(app, [*arguments, "--segmenter", str(folder), "--sam", "tiny"])
    assert mixed.exit_code == 2 and "runs alone" in " ".join(mixed.output.split())
    tta = runner.invoke(app, [*arguments, "--sam", "tiny", "--tta"])
    assert tta.exit_code == 2 and "--segmenter only" in " ".join(tta.output.split())


def test_limit_is_part_of_the_output_folders_identity(data_root, tmp_path):
    out = tmp_path / "eval"
    args = _evaluate_args(data_root, "--out", str(out), "--mode", "open")
    assert runner.invoke(app, args).exit_code == 0
    whole = json.loads((out / "report.json").read_text())
    assert whole["results"]["open"]["num_images"] == 4
    limited = runner.invoke(app, [*args, "--limit", "2"])  # would report 2 of 4 PNGs
    assert limited.exit_code == 2
    assert "limit" in limited.output and "--overwrite" in limited.output
    assert json.loads((out / "report.json").read_text()) == whole
    first = tmp_path / "first"
    limited = [*_evaluate_args(data_root, "--out", str(first), "--mode", "open"), "--limit", "2"]
    assert runner.invoke(app, limited).exit_code == 0
    again = runner.invoke(app, limited)  # the same limit: the same run, resumed
    assert again.exit_code == 0 and "resuming: 2 of 2 images done" in again.output


def test_skipped_txt_describes_the_latest_run(mask_77, tmp_path):
    root, ids = mask_77
    out = tmp_path / "eval"
    args = _evaluate_args(root, "--out", str(out), "--skip-bad")
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "skipped.txt").read_text().startswith(f"{ids[1]}\t")
    mask = root / "VOC2012/SegmentationClass" / f"{ids[1]}.png"
    values = np.array(Image.open(mask))
    values[values == 77] = 0  # the user fixes the mask and runs the same command again
    Image.fromarray(values).save(mask)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [] and report["results"]["open"]["num_images"] == 4
    assert not (out / "skipped.txt").exists()


def test_the_default_folder_of_plain_sam_names_the_sam_given(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, _evaluate_args(data_root, "--mode", "open", "--limit", "1"))
    assert result.exit_code == 0, result.output
    runs = tmp_path / "runs/eval" / f"{data_root.name}-val"
    assert [folder.name for folder in runs.iterdir()] == ["plain-tiny"]  # not model.sam's


def test_a_resumed_evaluation_redoes_images_whose_predictions_are_missing(data_root, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--set", "data.dataset=synthetic", "--data-root", str(data_root),
            "--sam", "tiny", "--boxes", "oracle", "--mode", "open", "--overlays",
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    predictions = sorted((out / "open" / "predictions").glob("*.png"))
    made = predictions[0].read_bytes()
    predictions[0].write_bytes(made[:50])
    (out / "open" / "overlays" / predictions[1].name).unlink()
    again = runner.invoke(app, args, terminal_width=200)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "redoing 2 image(s) an earlier run finished (1 truncated, 1 missing" in text
    assert "resuming: 2 of 4 images done" in text
    assert predictions[0].read_bytes() == made
    assert (out / "open" / "overlays" / predictions[1].name).is_file()
    assert json.loads((out / "report.json").read_text())["results"]["open"]["num_images"] == 4
