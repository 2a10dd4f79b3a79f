import csv
import shutil

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


# Exact resume: 3 images, batch 1, 3 epochs = 9 steps; checkpoints every 2 steps and at
# epoch ends. A crash inside step N leaves on disk what kill -9 would (nothing is saved
# on the way out), so a run cut this way and resumed must give the uninterrupted run's
# weights. Crashing in step 9 (epoch 2, 0-based) resumes mid-epoch from step 8.
RESUME = ["train.epochs=3", "train.batch_size=1", "train.checkpoint_every=2"]


class Crash(RuntimeError):
    pass


def _crash_in_step(monkeypatch, step: int) -> None:
    real_step, calls = loop.training_step, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise Crash(f"killed in step {step}")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "training_step", crashing)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """The reference runs: {template_cache_gib: FitResult}."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return {
        cache: fit(
            _config(data_root, out / f"cache{cache}", *RESUME, f"train.template_cache_gib={cache}"),
            progress=False,
        )
        for cache in (0, 1)
    }


def _assert_same_weights(found, expected, exact: bool) -> None:
    expected, found = _lora(expected), _lora(found)
    assert expected.keys() == found.keys() and expected
    for name in expected:
        if exact:  # bit for bit
            assert torch.equal(found[name], expected[name]), name
        else:  # the resumed run starts with an empty template cache: float rounding only
            torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-6)
    assert any(value.abs().sum() > 0 for n, value in found.items() if "lora_B" in n)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cache_gib", [0, 1])
def test_run_killed_mid_epoch_resumes_to_the_same_weights(
    data_root, tmp_path, monkeypatch, uninterrupted, cache_gib, workers
):
    settings = [*RESUME, f"train.template_cache_gib={cache_gib}", f"data.num_workers={workers}"]
    config = _config(data_root, tmp_path / "run", *settings)
    _crash_in_step(monkeypatch, 9)
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["seen_in_epoch"]) == (8, 2, 2)
    with pytest.raises(RunDirError, match="--resume"):
        fit(config, progress=False)

    resumed = fit(config, resume=True, progress=False)
    assert (resumed.step, resumed.epoch) == (9, 3)
    _assert_same_weights(resumed, uninterrupted[cache_gib], exact=cache_gib == 0)


def test_restart_from_an_older_epoch_checkpoint(data_root, tmp_path, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0].run_dir, run)
    config = _config(data_root, run, *RESUME, "train.template_cache_gib=0")
    resumed = fit(config, resume=run / "checkpoints" / "epoch-001.pt", progress=False)
    assert (resumed.step, resumed.epoch) == (9, 3)
    _assert_same_weights(resumed, uninterrupted[0], exact=True)


def test_unreadable_last_checkpoint_falls_back_and_leftovers_are_removed(
    data_root, tmp_path, uninterrupted, capsys
):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0].run_dir, run)
    checkpoints = run / "checkpoints"
    (checkpoints / "epoch-003.pt").unlink()
    last = checkpoints / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a crash
    (checkpoints / ".last.pt.x1y2.tmp").write_bytes(b"half a save")
    (run / "last").rename(run / ".last.old")  # an adapter swap cut between its renames
    config = _config(data_root, run, *RESUME, "train.template_cache_gib=0")
    resumed = fit(config, resume=True, progress=False)
    log = capsys.readouterr().err
    assert "removed 1 temporary file(s) of an interrupted save: .last.pt.x1y2.tmp" in log
    assert "restored" in log and ".last.old" in log
    assert f"cannot read checkpoint {last}" in log
    assert f"resuming from {checkpoints / 'epoch-002.pt'} instead (step 6, epoch 2)" in log
    assert not list(checkpoints.glob(".*.tmp")) and not (run / ".last.old").exists()
    assert (resumed.step, resumed.epoch) == (9, 3)
    _assert_same_weights(resumed, uninterrupted[0], exact=True)


def test_a_kill_during_validation_loses_no_training(data_root, tmp_path, monkeypatch):
    config = _config(data_root, tmp_path / "run", "train.val_every=1", "train.epochs=2")
    real_validate = loop.validate

    def killed_in_epoch_2(fabric, config, segmenter, dataset, boxes_fn, state, bar, signals):
        if state["epoch"] == 2:
            raise Crash("killed while validating")
        real_validate(fabric, config, segmenter, dataset, boxes_fn, state, bar, signals)

    monkeypatch.setattr(loop, "validate", killed_in_epoch_2)
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], len(state["history"])) == (4, 2, 1)

    steps = []
    real_step = loop.training_step
    monkeypatch.setattr(loop, "training_step", lambda *a: steps.append(1) or real_step(*a))
    resumed = fit(config, resume=True, progress=False)
    assert steps == []  # nothing retrained: the resumed run only validates epoch 2
    assert [record["epoch"] for record in resumed.history] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "epoch-002.pt").is_file()


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
    rows = list(
        csv.DictReader((run / "csv" / "from-step-0" / "metrics.csv").read_text().splitlines())
    )
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
    common += ["--set", "train.batch_size=1"]
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--out", str(run), "--accelerator", "cpu", "--max-steps", "1", *common]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step 1" in result.output
    result = runner.invoke(
        app, ["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    epoch_1 = run / "checkpoints" / "epoch-001.pt"  # 3 images, batch 1: 3 steps per epoch
    result = runner.invoke(
        app, ["train", "--resume", str(epoch_1), "--max-steps", "5", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    # epochs count from 1, as in epoch-001.pt (the state at the end of the first epoch)
    assert f"resuming from {epoch_1}: step 3, after epoch 1 of 50" in " ".join(
        result.output.split()
    )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
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
    metrics_csv = tmp_path / "cached" / "csv" / "from-step-0" / "metrics.csv"
    rows = list(csv.DictReader(metrics_csv.read_text().splitlines()))
    assert any(row.get("train/template_cache_hit_rate") for row in rows)


def test_cli_train_excludes_the_flagged_images(data_root, tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app

    ids = (data_root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    flagged = tmp_path / "flagged.txt"
    flagged.write_text(f"# from the Review tab\n{ids[1]}\n\nnot_an_image\n")
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--out", str(tmp_path / "run"), "--accelerator", "cpu", "--epochs", "1"]
    args += ["--set", "data.dataset=synthetic", "--set", "data.train_split=train"]
    args += ["--set", "data.num_workers=0", "--set", "train.val_every=0", "--no-progress"]
    args += ["--set", "train.batch_size=1", "--exclude", str(flagged)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "left out 1 image(s) of split 'train'" in output
    assert "1 listed id(s) are not in it (not_an_image)" in output
    assert "step 2, epoch 1" in output  # 3 images, one left out, batch 1
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert saved["data"]["exclude"] == str(flagged.resolve())
