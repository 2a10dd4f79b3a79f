import csv
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from train_support import small_train_data

from co2sam.config import load_config
from co2sam.records import Boxes
from co2sam.train import loop
from co2sam.train.checkpoint import load_checkpoint
from co2sam.train.loop import NonFiniteLossError, RunDirError, TrainingInterrupted, fit


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return small_train_data(tmp_path_factory)


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


# ----------------------------------------------------------------------------- resume, review


REAL_TRAINING_STEP = loop.training_step


def _recording_steps(monkeypatch, seen: list[list[str]], stochastic: bool = False, kill=None):
    """training_step recording each batch's image ids; ``stochastic`` scales the loss by a
    draw from torch's global RNG (as dropout would); ``kill`` = (step, signal)."""
    real_step = REAL_TRAINING_STEP

    def step(model, batch, loss_config, template_cache):
        seen.append(list(batch.image_ids))
        if kill is not None and len(seen) == kill[0]:
            os.kill(os.getpid(), kill[1])
        total, logs = real_step(model, batch, loss_config, template_cache)
        if stochastic:
            total = total * (1 + 0.5 * torch.rand(()))
        return total, logs

    monkeypatch.setattr(loop, "training_step", step)


@pytest.fixture(scope="module")
def seven_images(tmp_path_factory):
    from co2sam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("seven")
    make_synthetic_dataset(
        root, num_images=9, num_classes=2, image_size=48, seed=1, splits={"train": 7, "val": 2}
    )
    return root


def test_resuming_with_another_batch_size_trains_on_the_rest_of_the_epoch(
    seven_images, tmp_path, monkeypatch
):
    """Review: the position was batches x the NEW batch size, so images were skipped."""
    run = tmp_path / "run"
    seen: list[list[str]] = []
    _recording_steps(monkeypatch, seen)
    config = _config(seven_images, run, "train.batch_size=1", "train.epochs=1", "train.max_steps=3")
    fit(config, progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["seen_in_epoch"], state["world_size"], state["batch_size"]) == (3, 1, 1)
    first = [image for batch in seen for image in batch]
    seen.clear()
    bigger = _config(seven_images, run, "train.batch_size=2", "train.epochs=1")
    result = fit(bigger, resume=True, progress=False)
    rest = [image for batch in seen for image in batch]
    assert [len(batch) for batch in seen] == [2, 2]  # 4 images left, 2 per step
    assert sorted(first + rest) == sorted(_ids(seven_images))  # each image once
    assert (result.step, result.epoch) == (5, 1)


def _ids(root):
    return (root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


def test_resume_applies_a_new_learning_rate_and_refuses_what_it_cannot_honour(
    data_root, tmp_path, capsys
):
    import yaml

    run = tmp_path / "run"
    fit(_config(data_root, run, "train.max_steps=2"), progress=False)
    with pytest.raises(RunDirError, match="model.lora_rank cannot change when resuming"):
        fit(_config(data_root, run, "model.lora_rank=8"), resume=True, progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["lora_rank"] == 4
    capsys.readouterr()
    changed = ("optim.lr=5e-3", "optim.weight_decay=0.5", "train.max_steps=3")
    fit(_config(data_root, run, *changed), resume=True, progress=False)
    log = " ".join(capsys.readouterr().err.split())
    assert "optim.lr 0.01 -> 0.005; optim.weight_decay 0.0001 -> 0.5" in log
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (5e-3, 0.5)  # no warm-up, no decay yet
    assert state["scheduler"]["base_lrs"] == [5e-3]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 5e-3


def test_restarting_from_an_older_epoch_sets_the_later_history_aside(
    data_root, tmp_path, monkeypatch, capsys
):
    """Review: best/ held a later, abandoned epoch's adapter and epoch-002/003 stayed."""
    import json

    from safetensors.torch import load_file

    from co2sam import evaluate
    from co2sam.models.adapter_io import _portable_name

    def improving(segmenter, dataset, boxes_fn, **kwargs):  # each epoch scores better
        improving.calls += 1
        scores = {"miou": improving.calls / 10}
        return {"label-guided": dict(scores), "open": dict(scores)}

    improving.calls = 0
    monkeypatch.setattr(evaluate, "evaluate_model", improving)
    run = tmp_path / "run"
    config = _config(data_root, run, *RESUME, "train.val_every=1")
    assert fit(config, progress=False).best["epoch"] == 3
    epoch_1 = run / "checkpoints" / "epoch-001.pt"
    capsys.readouterr()
    resumed = fit(_config(data_root, run, *RESUME, "train.val_every=1", "train.max_steps=3"),
                  resume=epoch_1, progress=False)  # fmt: skip
    log = " ".join(capsys.readouterr().err.split())
    (aside,) = run.glob("abandoned-*")
    assert f"what came after it moved to {aside}" in log
    assert sorted(str(p.relative_to(aside)) for p in aside.glob("*/*") if p.suffix != ".json") == [
        "best/adapter_model.safetensors",
        "checkpoints/epoch-002.pt",
        "checkpoints/epoch-003.pt",
        "checkpoints/last.pt",
        "last/adapter_model.safetensors",
    ]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-001.pt", "last.pt"]
    assert resumed.best["epoch"] == 1 and [r["epoch"] for r in resumed.history] == [1]
    best = json.loads((run / "best" / "co2sam_adapter.json").read_text())["extra"]
    assert (best["epoch"], best["step"], best["best"]["epoch"]) == (1, 3, 1)
    expected = {
        _portable_name(name, "default"): value
        for name, value in load_checkpoint(epoch_1)["lora"].items()
    }
    found = load_file(run / "best" / "adapter_model.safetensors")
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[name], expected[name]) for name in expected)


def test_a_signal_during_validation_stops_it_between_batches(data_root, tmp_path, monkeypatch):
    """Review: a signal waited for the whole validation (COCO: 40k images)."""
    from co2sam.prompts import oracle_boxes

    calls = []

    def val_boxes(sample):
        calls.append(sample.id)
        if len(calls) == 1 and signalling:
            os.kill(os.getpid(), signal.SIGTERM)
        return oracle_boxes(sample)

    settings = (*RESUME, "train.val_every=1", "eval.batch_size=1", "train.template_cache_gib=0")
    _recording_steps(monkeypatch, [], stochastic=True)
    signalling = False
    reference = fit(_config(data_root, tmp_path / "reference", *settings),
                    val_boxes_fn=val_boxes, progress=False)  # fmt: skip
    calls.clear()
    signalling = True
    config = _config(data_root, tmp_path / "run", *settings)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(config, val_boxes_fn=val_boxes, progress=False)
    assert stopped.value.signum == signal.SIGTERM
    assert len(calls) == 1  # the second validation batch never started
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["seen_in_epoch"], state["history"]) == (
        3, 1, 0, []
    )  # fmt: skip
    signalling = False
    resumed = fit(config, val_boxes_fn=val_boxes, resume=True, progress=False)
    assert [record["epoch"] for record in resumed.history] == [1, 2, 3]
    _assert_same_weights(resumed, reference, exact=True)


def test_a_stop_at_an_epoch_boundary_resumes_exactly_with_loader_workers(
    data_root, tmp_path, monkeypatch
):
    """Each new loader iterator draws its workers' base seed: from the global RNG that
    draw would shift every later random number (here a stochastic loss, as dropout)."""
    settings = (*RESUME, "train.template_cache_gib=0", "data.num_workers=2")
    _recording_steps(monkeypatch, [], stochastic=True)
    reference = fit(_config(data_root, tmp_path / "reference", *settings), progress=False)
    _recording_steps(monkeypatch, [], stochastic=True, kill=(3, signal.SIGTERM))  # last of epoch 1
    config = _config(data_root, tmp_path / "run", *settings)
    with pytest.raises(TrainingInterrupted):
        fit(config, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["seen_in_epoch"]) == (3, 1, 0)
    _recording_steps(monkeypatch, [], stochastic=True)
    _assert_same_weights(fit(config, resume=True, progress=False), reference, exact=True)


def test_a_second_run_in_the_same_folder_is_refused(data_root, tmp_path):
    from filelock import FileLock

    run = tmp_path / "run"
    fit(_config(data_root, run, "train.max_steps=1"), progress=False)
    first = FileLock(run / ".co2sam" / "lock")  # the first job still runs
    first.acquire()
    try:
        with pytest.raises(RunDirError, match=f"another co2sam run is training in {run} now"):
            fit(_config(data_root, run, "train.max_steps=2"), resume=True, progress=False)
    finally:
        first.release()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


def _cli_args(data_root, run, *more):
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--out", str(run), "--accelerator", "cpu", "--no-progress", *more]
    for setting in ("data.dataset=synthetic", "data.train_split=train", "data.num_workers=0",
                    "train.batch_size=1", "train.template_cache_gib=0"):  # fmt: skip
        args += ["--set", setting]
    return args


def test_cli_without_a_bar_still_logs_epochs_and_validations(data_root, tmp_path):
    """Review: --no-progress (README's SLURM script) printed nothing until the end."""
    from typer.testing import CliRunner

    from co2sam.cli import app

    result = CliRunner().invoke(app, _cli_args(data_root, tmp_path / "run", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("epoch 1/2 done: step 3, ") for line in lines), lines
    assert any(line.startswith("epoch 1 step 3: val mIoU label-guided ") for line in lines)
    assert any(line.startswith("epoch 2/2 done: step 6, ") for line in lines)


def test_cli_resume_checks_its_arguments(data_root, tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    missing = run / "checkpoints" / "epoch-009.pt"
    result = runner.invoke(app, ["train", "--resume", str(missing)])
    assert result.exit_code == 2
    assert _squeezed(f"--resume {missing}: no such run folder or checkpoint file") in _squeezed(
        result.output
    )
    photo = tmp_path / "photos" / "a.jpg"  # review: the error named "." instead
    photo.parent.mkdir()
    photo.write_bytes(b"not a checkpoint")
    for given in (photo, photo.parent):
        result = runner.invoke(app, ["train", "--resume", str(given)])
        assert result.exit_code == 2
        text = _squeezed(result.output)
        assert _squeezed(f"--resume {given}: not a run folder") in text, text
        assert _squeezed("give the folder a run wrote (its --out)") in text
    assert runner.invoke(app, _cli_args(data_root, run, "--max-steps", "1")).exit_code == 0
    saved = (run / "config.yaml").read_text()
    result = runner.invoke(app, ["train", "--resume", str(run), "--config", "voc"])
    assert result.exit_code == 2
    assert "--config voc cannot be used with --resume" in " ".join(result.output.split())
    assert (run / "config.yaml").read_text() == saved


def test_cli_resumes_from_another_working_directory(data_root, tmp_path, monkeypatch):
    """Review: config.yaml kept data.root as given (relative), so this failed."""
    import yaml
    from typer.testing import CliRunner

    from co2sam.cli import app

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copytree(data_root, tmp_path / "a" / "ds")
    monkeypatch.chdir(tmp_path / "a")
    args = _cli_args("ds", "runs/r", "--max-steps", "1")
    assert CliRunner().invoke(app, args).exit_code == 0
    saved = yaml.safe_load((tmp_path / "a" / "runs" / "r" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(tmp_path / "a" / "ds")
    monkeypatch.chdir(tmp_path / "b")
    run = tmp_path / "a" / "runs" / "r"
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


def test_cli_full_disk_names_the_checkpoint(data_root, tmp_path, monkeypatch):
    """Review: `cannot write in full/run: . unexpected pos 64 vs 0; is the disk full?`"""
    from test_atomic_files import fill_the_disk_after
    from typer.testing import CliRunner

    from co2sam.cli import app

    fill_the_disk_after(monkeypatch, 1000)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, _cli_args(data_root, run, "--max-steps", "1"))
    assert result.exit_code == 2, result.output
    expected = f"cannot write {run / 'checkpoints' / 'last.pt'}: No space left on device; "
    assert _squeezed(expected + "the disk is full") in _squeezed(result.output)
    assert "Traceback" not in result.output


def _squeezed(text: str) -> str:
    """Without whitespace: rich wraps long paths anywhere."""
    return "".join(text.split())


def test_errors_met_by_every_process_are_printed_by_the_first_only(monkeypatch, capsys):
    import torch.distributed as dist
    import typer

    from co2sam.commands.train import _fail_once

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    for rank, shown in ((1, False), (0, True)):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        with pytest.raises(typer.Exit) as stopped:
            _fail_once("the same error on every process")
        assert stopped.value.exit_code == 2
        assert ("the same error on every process" in capsys.readouterr().err) is shown


def _epoch_lines(text: str, epoch: int) -> list[str]:
    """The losses of the ``epoch N/M done: ...`` lines (without the rate)."""
    return [
        line.split("img/s, ", 1)[1]
        for line in text.splitlines()
        if line.startswith(f"epoch {epoch}/")
    ]


def test_the_epoch_line_after_a_mid_epoch_resume_covers_the_whole_epoch(
    data_root, tmp_path, monkeypatch, capsys
):
    """Review: after a resume inside epoch 2 its line gave the resumed steps' losses only."""
    settings = ["train.epochs=2", "train.batch_size=1", "train.checkpoint_every=2"]
    settings.append("train.template_cache_gib=0")
    fit(_config(data_root, tmp_path / "whole", *settings), progress=False)
    (expected,) = _epoch_lines(capsys.readouterr().err, 2)
    assert expected.startswith("total ") and "focal " in expected

    config = _config(data_root, tmp_path / "run", *settings)
    _crash_in_step(monkeypatch, 6)  # last.pt at step 4: one of epoch 2's three steps done
    with pytest.raises(Crash):
        fit(config, progress=False)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert (load_checkpoint(last)["step"], load_checkpoint(last)["seen_in_epoch"]) == (4, 1)
    shutil.copy(last, tmp_path / "last.pt")
    capsys.readouterr()
    fit(config, resume=True, progress=False)
    assert _epoch_lines(capsys.readouterr().err, 2) == [expected]

    # A checkpoint from before the sums were kept: the line says what it covers.
    from co2sam.train.checkpoint import save_checkpoint

    older = load_checkpoint(tmp_path / "last.pt")
    del older["epoch_losses"]
    shutil.rmtree(tmp_path / "run")
    shutil.copytree(tmp_path / "whole", tmp_path / "run")
    save_checkpoint(last, older)
    fit(config, resume=last, progress=False)
    (partial,) = _epoch_lines(capsys.readouterr().err, 2)
    assert partial.endswith(
        "(mean of steps 5..6 only: resumed from a checkpoint without this epoch's earlier losses)"
    )


def test_a_resumed_run_records_the_settings_it_changed(data_root, tmp_path):
    """Review: after --resume --set optim.lr=..., config.yaml and the adapters claimed the
    whole run had used the new lr."""
    import json

    import yaml
    from typer.testing import CliRunner

    from co2sam.cli import app

    run = tmp_path / "run"
    first = _cli_args(data_root, run, "--max-steps", "2", "--set", "optim.lr=0.01")
    assert CliRunner().invoke(app, first).exit_code == 0
    assert "settings_changes" not in yaml.safe_load((run / "config.yaml").read_text())
    resume = ["train", "--resume", str(run), "--no-progress", "--set", "optim.lr=0.005"]
    result = CliRunner().invoke(app, [*resume, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    expected = [
        {"from_step": 3, "key": "optim.lr", "old": 0.01, "new": 0.005},
        {"from_step": 3, "key": "train.max_steps", "old": 2, "new": 3},
        {"from_step": 4, "key": "train.max_steps", "old": 3, "new": 4},
    ]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.005 and saved["settings_changes"] == expected
    assert load_checkpoint(run / "checkpoints" / "last.pt")["settings_changes"] == expected
    adapter = json.loads((run / "last" / "co2sam_adapter.json").read_text())
    assert adapter["extra"]["settings_changes"] == expected
    assert load_config(run / "config.yaml").optim.lr == 0.005  # still a config file
