import shutil

import pytest
from PIL import Image

from co2sam.app.runs import RunFolder, RunFolderError
from co2sam.config import load_config
from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.train.loop import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real two-epoch run validated every epoch (tiny SAM, generated data)."""
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        root, num_images=5, num_classes=2, image_size=48, seed=0, splits={"train": 3, "val": 2}
    )
    out = tmp_path_factory.mktemp("run") / "run"
    config = load_config(
        None,
        ["model.sam=tiny", "data.dataset=synthetic", f"data.root={root}",
         "data.train_split=train", "data.num_workers=0", "prompts.source=oracle",
         f"train.out_dir={out}", "train.accelerator=cpu", "train.epochs=2",
         "train.batch_size=1", "train.log_every=1", "optim.warmup_steps=0"],
    )  # fmt: skip
    fit(config, progress=False)
    return out, root


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_resumed_sessions_are_merged_latest_first(tmp_path):
    header = ["step", "train/total", "train/lr", "val/label-guided/miou"]
    write_csv(
        tmp_path / "csv/from-step-0/metrics.csv",
        header,
        [[1, 5.0, 0.1, ""], [2, 4.0, 0.1, ""], [3, 3.5, 0.1, 0.4], [4, 9.0, 0.1, ""]],
    )
    # killed after step 4, resumed from the checkpoint at step 3: step 4 is done again
    write_csv(tmp_path / "csv/from-step-3/metrics.csv", header,
              [[4, 3.0, 0.1, ""], [5, 2.5, 0.1, 0.6]])  # fmt: skip
    (tmp_path / "csv/notes").mkdir()
    folder = RunFolder(tmp_path)
    assert [row["step"] for row in folder.log_rows()] == [1, 2, 3, 4, 5]
    totals = [(p["step"], p["value"]) for p in folder.loss_points() if p["term"] == "total"]
    assert totals == [(1, 5.0), (2, 4.0), (3, 3.5), (4, 3.0), (5, 2.5)]
    assert {p["term"] for p in folder.loss_points()} == {"total"}  # lr is not a loss term
    assert folder.miou_points() == [
        {"step": 3, "mode": "label-guided", "mIoU": pytest.approx(40.0)},
        {"step": 5, "mode": "label-guided", "mIoU": pytest.approx(60.0)},
    ]
    assert folder.validations() == [] and folder.best_epoch() is None
    assert "no validation" in folder.summary()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="co2sam train --out"):
        RunFolder(tmp_path)


def test_a_real_run_gives_curves_validations_bars_and_confusion(run, tmp_path):
    from co2sam.data.voc import VocDataset

    out, root = run
    folder = RunFolder(out)
    terms = {point["term"] for point in folder.loss_points()}
    assert {"total", "focal", "dice", "iou", "template", "contrastive"} <= terms
    assert [p["mode"] for p in folder.miou_points()] == ["label-guided", "open"] * 2
    validations = folder.validations()
    assert [entry["epoch"] for entry in validations] == [1, 2]
    best = folder.best_epoch()
    guided = [e["metrics"]["label-guided"]["miou"] for e in validations]
    assert guided[best - 1] == max(guided)
    assert folder.class_names() == VocDataset(root, "val").class_names
    assert folder.class_names()[1] == "red ellipse"  # the data's names, not numbers
    bars = folder.per_class_iou(best, "open")
    expected = validations[best - 1]["metrics"]["open"]["iou_per_class"]
    assert [bar["IoU"] for bar in bars] == [100 * v for v in expected if v is not None]
    assert bars[0]["class"] == "background"
    figure = folder.confusion_figure(best, "label-guided", tmp_path / "cm.png")
    with Image.open(figure) as image:
        assert image.size[0] > 100
    summary = folder.summary()
    assert f"best epoch {best}" in summary and "oracle" in summary
    with pytest.raises(RunFolderError, match="epoch 7"):
        folder.validation(7)


def test_validations_come_from_an_epoch_file_when_last_pt_is_unreadable(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    (copy / "checkpoints" / "last.pt").write_bytes(b"cut short")
    assert [entry["epoch"] for entry in RunFolder(copy).validations()] == [1, 2]
