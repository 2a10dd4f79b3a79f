import csv

import numpy as np
import pytest
import torch

from co2sam.data.image_io import DatasetError, write_label_png
from co2sam.distill.config import load_distill_config
from co2sam.distill.loop import distill
from co2sam.models.segmentation_net import load_net
from co2sam.train.checkpoint import load_checkpoint
from co2sam.train.run_dir import RunDirError


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """Generated data; its own SegmentationClass/ serves as the pseudo-label folder."""
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, num_images=7, num_classes=2, image_size=48, seed=0, splits={"train": 4, "val": 3}
    )


def _config(voc, out_dir, *overrides):
    return load_distill_config(
        None,
        [
            "model.architecture=segformer",
            "model.pretrained=tiny",
            "data.dataset=synthetic",
            f"data.root={voc.parent}",
            "data.train_split=train",
            "data.num_workers=0",
            f"pseudo_labels.dir={voc}",
            "augment.scale=[128,48]",
            "augment.crop_size=48",
            "train.accelerator=cpu",
            "train.batch_size=2",
            "train.iterations=2",
            "train.val_every=2",
            "train.log_every=1",
            f"train.out_dir={out_dir}",
            "optim.warmup_steps=1",
            "optim.lr=1e-3",
            "eval.scale=[128,48]",
            *overrides,
        ],
    )


def test_one_epoch_writes_best_last_logs_and_a_checkpoint(voc, tmp_path):
    result = distill(_config(voc, tmp_path / "run"), progress=False)
    assert (result.step, result.epoch) == (2, 1)  # 4 images, 2 per step: one epoch
    assert len(result.history) == 1 and result.best["step"] == 2
    assert result.best["mode"] == "open" and 0 <= result.best["miou"] <= 1
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["kind"], state["step"], state["epoch"], state["batch_in_epoch"]) == (
        "distill",
        2,
        1,
        0,
    )
    for folder in (result.best_dir, result.last_dir):
        net, metadata = load_net(folder)
        assert metadata["step"] == 2 and metadata["architecture"] == "segformer"
        assert metadata["class_names"][0] == "background" and len(net.class_names) == 3
        assert metadata["eval"]["scale"] == [128, 48]
    assert (tmp_path / "run" / "config.yaml").is_file()
    log = (tmp_path / "run" / "csv" / "from-step-0" / "metrics.csv").read_text()
    rows = list(csv.DictReader(log.splitlines()))
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(row.get("val/open/miou") for row in rows)
    # it learned: the trained network differs from its random start
    fresh = _config(voc, tmp_path / "unused")
    torch.manual_seed(fresh.train.seed)
    from co2sam.models.segmentation_net import build_net

    start = build_net("segformer", "tiny", result.net.class_names)
    changed = [
        not torch.equal(value, start.state_dict()[name])
        for name, value in result.net.state_dict().items()
        if name.endswith("classifier.weight")
    ]
    assert changed == [True]


def test_stopped_and_resumed_run_reaches_the_same_weights(voc, tmp_path):
    # 3 images, 2 per step (the last dropped): one step per epoch, so resuming crosses
    # epoch boundaries (order and crops re-derived from (seed, epoch, index)).
    common = ("train.limit_train=3", "train.iterations=3", "train.val_every=0")
    full = distill(_config(voc, tmp_path / "full", *common), progress=False)
    assert (full.step, full.epoch) == (3, 3)

    stopped = distill(_config(voc, tmp_path / "cut", *common, "train.max_steps=1"), progress=False)
    assert (stopped.step, stopped.epoch) == (1, 1)
    with pytest.raises(RunDirError, match="--resume"):
        distill(_config(voc, tmp_path / "cut", *common), progress=False)
    resumed = distill(_config(voc, tmp_path / "cut", *common), resume=True, progress=False)
    assert (resumed.step, resumed.epoch) == (3, 3)
    expected, found = full.net.state_dict(), resumed.net.state_dict()
    assert expected.keys() == found.keys()
    for name in expected:  # bit for bit (dropout RNG included)
        assert torch.equal(expected[name], found[name]), name


def test_a_bad_pseudo_label_folder_is_refused_before_training(voc, tmp_path):
    bad = tmp_path / "pseudo" / "SegmentationClass"
    bad.mkdir(parents=True)
    for image_id in ("syn_00000", "syn_00001", "syn_00002"):  # syn_00003 missing
        write_label_png(bad / f"{image_id}.png", np.zeros((48, 48), np.uint8))
    write_label_png(bad / "syn_00001.png", np.full((48, 48), 9, np.uint8))
    config = _config(voc, tmp_path / "run", f"pseudo_labels.dir={bad.parent}")
    with pytest.raises(DatasetError) as error:
        distill(config, progress=False)
    assert "syn_00003.png: missing" in str(error.value)
    assert "syn_00001.png: values [9] outside 0..2 and 255" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_train_run_folder_cannot_be_resumed_as_distill(voc, tmp_path):
    from co2sam.train.checkpoint import CheckpointError, save_checkpoint

    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="co2sam train --resume"):
        distill(_config(voc, tmp_path / "run"), resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1


def test_a_stop_signal_saves_and_the_resumed_run_matches(voc, tmp_path, monkeypatch):
    import signal

    from co2sam.distill import loop
    from co2sam.distill.loop import DistillInterrupted

    common = ("train.limit_train=3", "train.iterations=3", "train.val_every=0")
    full = distill(_config(voc, tmp_path / "full", *common), progress=False)

    class SignalAfterFirstStep(loop.TrainProgress):
        def advance(self, step, *args, **kwargs):
            super().advance(step, *args, **kwargs)
            if step == 1:
                signal.raise_signal(signal.SIGTERM)  # handled: a flag, read at the next step

    monkeypatch.setattr(loop, "TrainProgress", SignalAfterFirstStep)
    with pytest.raises(DistillInterrupted) as stopped:
        distill(_config(voc, tmp_path / "cut", *common), progress=False)
    assert stopped.value.exit_code == 143 and stopped.value.step == 1
    assert "co2sam distill --resume" in str(stopped.value)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 1
    monkeypatch.undo()
    resumed = distill(_config(voc, tmp_path / "cut", *common), resume=True, progress=False)
    assert resumed.step == 3
    for name, value in full.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name


def test_an_unreadable_last_checkpoint_falls_back_to_the_latest_validation(voc, tmp_path):
    common = ("train.limit_train=3", "train.iterations=3", "train.val_every=2")
    stopped = distill(_config(voc, tmp_path / "run", *common, "train.max_steps=2"), progress=False)
    assert stopped.step == 2
    epochs = sorted((tmp_path / "run" / "checkpoints").glob("epoch-*.pt"))
    assert [path.name for path in epochs] == ["epoch-002.pt"]  # the state at validation
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"truncated")
    resumed = distill(_config(voc, tmp_path / "run", *common), resume=True, progress=False)
    assert resumed.step == 3 and len(resumed.history) == 2  # steps 2 (kept) and 3 (last)
