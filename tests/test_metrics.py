import json
import math

import pytest
import torch
from rich.console import Console
from torchmetrics.classification import MulticlassJaccardIndex

from co2sam.metrics import ConfusionMatrix, metrics_table, write_report

# 3 classes: 0 background, 1, 2; class 2 never occurs in the ground truth.
TARGET = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 255]])
PREDICTION = torch.tensor([[0, 1, 1, 2], [2, 2, 1, 0]])


def test_matrix_and_metrics_match_hand_computation():
    confusion = ConfusionMatrix(3)
    confusion.update(PREDICTION, TARGET)
    # valid pixels (gt, pred): (0,0) (0,1) (1,1) (1,2) (0,2) (1,1)
    expected = torch.tensor([[1, 1, 1], [0, 2, 1], [0, 0, 0]])
    assert torch.equal(confusion.matrix, expected)

    metrics = confusion.compute()
    assert metrics["classes_present"] == [0, 1]
    iou = metrics["iou_per_class"]
    assert iou[0] == pytest.approx(1 / 3)  # tp 1, gt 3, pred 1
    assert iou[1] == pytest.approx(2 / 4)  # tp 2, gt 3, pred 3
    assert iou[2] == 0.0  # predicted twice, never in gt
    assert metrics["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)  # GT classes only
    assert metrics["miou_macro"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert metrics["precision"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert metrics["recall"][:2] == pytest.approx([1 / 3, 2 / 3])
    assert metrics["recall"][2] is None
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 6)
    assert metrics["mean_accuracy"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert metrics["fw_iou"] == pytest.approx(0.5 * 1 / 3 + 0.5 * 1 / 2)
    assert metrics["num_pixels"] == 6


def test_class_absent_everywhere_is_undefined_not_zero():
    confusion = ConfusionMatrix(4)
    confusion.update(PREDICTION, TARGET)
    metrics = confusion.compute()
    assert metrics["iou_per_class"][3] is None
    assert metrics["precision"][3] is None
    assert metrics["miou_macro"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_agrees_with_torchmetrics_over_several_updates():
    generator = torch.Generator().manual_seed(0)
    num_classes = 5
    confusion = ConfusionMatrix(num_classes)
    macro = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="macro")
    per_class = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="none")
    for _ in range(3):
        target = torch.randint(0, num_classes, (1, 16, 16), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        prediction = torch.where(
            torch.rand(target.shape, generator=generator) < 0.6,
            target.clamp(max=num_classes - 1),
            torch.randint(0, num_classes, target.shape, generator=generator),
        )
        confusion.update(prediction, target)
        macro.update(prediction, target)
        per_class.update(prediction, target)
    metrics = confusion.compute()
    assert metrics["classes_present"] == list(range(num_classes))
    assert metrics["miou"] == pytest.approx(float(macro.compute()), abs=1e-6)
    assert metrics["iou_per_class"] == pytest.approx(per_class.compute().tolist(), abs=1e-6)


def test_torchmetrics_macro_counts_false_positive_classes():
    macro = MulticlassJaccardIndex(num_classes=3, ignore_index=255, average="macro")
    macro.update(PREDICTION[None], TARGET[None])
    confusion = ConfusionMatrix(3)
    confusion.update(PREDICTION, TARGET)
    assert confusion.compute()["miou_macro"] == pytest.approx(float(macro.compute()))


def test_merge_sums_counts_like_one_matrix():
    whole, first, second = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    whole.update(PREDICTION, TARGET)
    whole.update(TARGET.clamp(max=2), TARGET)
    first.update(PREDICTION, TARGET)
    second.update(TARGET.clamp(max=2), TARGET)
    assert torch.equal(first.merge(second).matrix, whole.matrix)
    assert torch.equal(first.all_reduce().matrix, whole.matrix)  # no process group: no-op


def test_rejects_out_of_range_labels_and_shape_mismatch():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels must be in 0..2"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="prediction labels"):
        confusion.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        confusion.update(torch.zeros(3), torch.zeros(4))


def test_all_ignore_gives_undefined_metrics(tmp_path):
    confusion = ConfusionMatrix(3)
    confusion.update(torch.zeros((2, 2)), torch.full((2, 2), 255))
    metrics = confusion.compute()
    assert metrics["miou"] is None and metrics["pixel_accuracy"] is None
    path = write_report(tmp_path / "r.json", {"metrics": metrics})
    assert json.loads(path.read_text())["metrics"]["miou"] is None


def test_report_and_table(tmp_path):
    confusion = ConfusionMatrix(3)
    confusion.update(PREDICTION, TARGET)
    metrics = confusion.compute()
    path = write_report(tmp_path / "sub" / "report.json", {"mode": "open", "metrics": metrics})
    loaded = json.loads(path.read_text())
    assert loaded["mode"] == "open"
    assert math.isclose(loaded["metrics"]["miou"], metrics["miou"])
    console = Console(record=True, width=120)
    console.print(metrics_table(metrics, ["background", "cat", "dog"], "val — open mode"))
    text = console.export_text()
    assert "open mode" in text
    assert "dog (not in GT)" in text
    assert "41.67" in text  # mIoU over GT classes
