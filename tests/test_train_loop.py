import csv

import numpy as np
import pytest
import torch

from co2sam.config import load_config
from co2sam.records import Boxes
from co2sam.train import loop
from co2sam.train.checkpoint import load_checkpoint
from co2sam.train.loop import NonFiniteLossError, RunDirError, fit


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, num_images=5, num_classes=2, image_size=48, seed=0, splits={"train": 3, "val": 2}
    )
    return root


def _config(data_root, out_dir, *overrides):
    return load_config(
        None,
        [
            "model.sam=tiny",
            "data.dataset=synthetic",
            f"data.root={data_root}",
            "data.train_split=train",
            "data.num_workers=0",
            "prompts.source=oracle",
            f"train.out_dir={out_dir}",
            "train.accelerator=cpu",
            "train.epochs=2",
            "train.batch_size=2",
            "train.val_every=0",
            "train.log_every=1",
            "optim.warmup_steps=0",
            "optim.lr=1e-2",
            *overrides,
        ],
    )


def _lora(result):
    return {
        name: value.detach().clone()
        for name, value in result.segmenter.named_parameters()
        if "lora_" in name
    }


@pytest.mark.parametrize("cache_gib", [0, 1])
def test_kill_and_resume_reaches_the_same_weights(data_root, tmp_path, cache_gib):
    cache = f"train.template_cache_gib={cache_gib}"
    full = fit(_config(data_root, tmp_path / "full", cache), progress=False)
    assert (full.step, full.epoch) == (4, 2)  # 3 images, batch 2: 2 batches per epoch

    stopped = fit(_config(data_root, tmp_path / "cut", "train.max_steps=1", cache), progress=False)
    assert (stopped.step, stopped.epoch) == (1, 0)
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (state["step"], state["batch_in_epoch"]) == (1, 1)
    with pytest.raises(RunDirError, match="--resume"):
        fit(_config(data_root, tmp_path / "cut", cache), progress=False)

    resumed = fit(_config(data_root, tmp_path / "cut", cache), resume=True, progress=False)
    assert (resumed.step, resumed.epoch) == (4, 2)
    expected, found = _lora(full), _lora(resumed)
    assert expected.keys() == found.keys()
    for name in expected:
        if cache_gib == 0:  # bit for bit
            assert torch.equal(expected[name], found[name]), name
        else:  # the resumed run starts with an empty template cache: float rounding only
            torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-6)
    assert any(value.abs().sum() > 0 for n, value in found.items() if "lora_B" in n)


def test_fit_validates_keeps_the_best_adapter_and_logs(data_root, tmp_path):
    from co2sam.sam import load_adapter

    run = tmp_path / "run"
    result = fit(_config(data_root, run, "train.epochs=1", "train.val_every=1"), progress=False)
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "epoch-001.pt").is_file()
    assert result.history and "label-guided" in result.history[0]["metrics"]
    assert result.best is not None and result.best["epoch"] == 1
    assert result.best_adapter == run / "best"
    model = load_adapter(None, result.best_adapter)
    assert any("lora_B" in name for name, _ in model.named_parameters())
    assert (run / "last" / "co2sam_adapter.json").is_file()
    rows = list(csv.DictReader((run / "csv" / "from-step-0" / "metrics.csv").open()))
    assert any(row.get("train/total") for row in rows)
    assert any(row.get("val/label-guided/miou") for row in rows)
    assert any(row.get("train/lr") for row in rows)
    assert list((run / "tensorboard").iterdir())


def test_images_without_boxes_are_skipped(data_root, tmp_path):
    def only_first_image(sample):
        if sample.id.endswith("0"):
            return Boxes(np.array([[5, 5, 30, 30]], np.float32), np.array([1]), np.ones(1))
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0))

    config = _config(data_root, tmp_path / "run", "train.epochs=1", "train.batch_size=1")
    result = fit(config, boxes_fn=only_first_image, progress=False)
    assert result.step == 1 and result.skipped_images == 2 and result.skipped_steps == 2


def test_non_finite_loss_stops_the_run_with_details(data_root, tmp_path, monkeypatch):
    real_step = loop.training_step

    def poisoned(segmenter, batch, config, template_cache):
        total, logs = real_step(segmenter, batch, config, template_cache)
        logs["focal"] = torch.tensor(float("nan"))
        return total * float("nan"), logs

    monkeypatch.setattr(loop, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*syn_000\d.*'focal': nan"):
        fit(_config(data_root, tmp_path / "run"), progress=False)


def test_cli_train_then_resume(data_root, tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app

    run = tmp_path / "run"
    common = ["--set", "data.dataset=synthetic", "--set", "data.train_split=train"]
    common += ["--set", "data.num_workers=0", "--set", "train.val_every=0", "--no-progress"]
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--out", str(run), "--accelerator", "cpu", "--max-steps", "1", *common]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step 1" in result.output
    result = runner.invoke(
        app, ["train", "--resume", str(run), "--max-steps", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    result = runner.invoke(app, args)  # the folder already holds a run
    assert result.exit_code == 2 and "--resume" in result.output


def test_template_cache_trains_the_same_weights(data_root, tmp_path):
    cached = fit(_config(data_root, tmp_path / "cached", "train.epochs=4"), progress=False)
    plain = fit(
        _config(data_root, tmp_path / "plain", "train.epochs=4", "train.template_cache_gib=0"),
        progress=False,
    )
    assert plain.template_cache_hit_rate is None
    # 3 images x 4 epochs, each drawn as one of 4 flipped views: some views come back
    assert 0 < cached.template_cache_hit_rate < 1
    expected, found = _lora(plain), _lora(cached)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-6)
    rows = list(
        csv.DictReader((tmp_path / "cached" / "csv" / "from-step-0" / "metrics.csv").open())
    )
    assert any(row.get("train/template_cache_hit_rate") for row in rows)
