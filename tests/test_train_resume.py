"""What a resumed run takes from the config now, and what it refuses (co2sam.train.resume)."""

from pathlib import Path

import pytest
import torch

from co2sam.config import OptimConfig, load_config
from co2sam.train.resume import (
    absolute_paths,
    check_changes,
    check_epoch_size,
    epoch_position,
    reapply_optim,
    scheduled_images,
)
from co2sam.train.run_dir import RunDirError
from co2sam.train.schedule import build_optimizer

CHECKPOINT = Path("runs/a/checkpoints/last.pt")


def _saved(*overrides, seen=0, step=10, epoch=1, epoch_size=20):
    config = load_config(None, ["model.sam=tiny", *overrides]).to_dict()
    return {"config": config, "step": step, "epoch": epoch, "seen_in_epoch": seen,
            "epoch_size": epoch_size, "world_size": 1, "batch_size": 1}  # fmt: skip


def _check(saved, *overrides):
    config = load_config(None, ["model.sam=tiny", *overrides])
    return check_changes(saved, config, path=CHECKPOINT)


def test_unchanged_config_gives_no_note():
    assert _check(_saved()) == []


def test_honoured_changes_are_listed():
    notes = _check(_saved(seen=4), "optim.lr=2e-4", "train.devices=2", "loss.focal_weight=20")
    assert len(notes) == 1
    assert "since last.pt (applied from step 11)" in notes[0]
    for change in ("optim.lr 0.0001 -> 0.0002", "train.devices 1 -> 2", "focal_weight 30.0 -> 20"):
        assert change in notes[0]


@pytest.mark.parametrize("key", ["model.lora_rank=8", "model.lora_alpha=8", "model.adapter=x"])
def test_lora_settings_cannot_change(key):
    with pytest.raises(RunDirError, match=f"{key.split('=')[0]} cannot change when resuming"):
        _check(_saved(), key)


@pytest.mark.parametrize(
    "key", ["train.seed=1", "data.train_split=train", "train.limit_train=5", "data.exclude=x"]
)
def test_the_epoch_order_cannot_change_mid_epoch_but_can_at_its_end(key):
    with pytest.raises(RunDirError, match=r"in the middle of an epoch .*epoch-NNN\.pt"):
        _check(_saved(seen=4), key)
    assert key.split("=")[0] in _check(_saved(seen=0), key)[0]


def test_a_split_of_another_size_cannot_continue_an_epoch():
    with pytest.raises(RunDirError, match="has 19 image.* now, 20 when.*epoch-NNN"):
        check_epoch_size(_saved(seen=4), 19, path=CHECKPOINT)
    check_epoch_size(_saved(seen=0), 19, path=CHECKPOINT)
    check_epoch_size(_saved(seen=4), 20, path=CHECKPOINT)


def test_older_checkpoints_count_batches_per_process():
    saved = _saved("train.batch_size=2", "train.devices=3")
    del saved["seen_in_epoch"], saved["world_size"], saved["batch_size"]
    saved["batch_in_epoch"] = 4
    assert epoch_position(saved) == 4 * 2 * 3
    assert scheduled_images(saved) == 10 * 2 * 3
    saved["step_images"] = 17
    assert scheduled_images(saved) == 17


def test_reapplied_optimizer_settings_replace_the_restored_ones():
    parameter = torch.nn.Parameter(torch.zeros(2))
    before = OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=4, milestones=[6])
    optimizer, scheduler = build_optimizer([parameter], before)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    states = optimizer.state_dict(), scheduler.state_dict()

    after = OptimConfig(lr=5e-3, weight_decay=0.5, warmup_steps=4, milestones=[6])
    optimizer, scheduler = build_optimizer([parameter], after)
    optimizer.load_state_dict(states[0])
    scheduler.load_state_dict(states[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the old lr came back
    reapply_optim(optimizer, scheduler, after)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(5e-4) and group["weight_decay"] == 0.5  # x0.1 after 6
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert scheduler.get_last_lr() == pytest.approx([5e-4])


def test_a_runs_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("data", "adapter", "sam_folder", "boxes"):
        (tmp_path / name).mkdir()
    config = load_config(
        None,
        ["data.root=data", "model.adapter=adapter", "model.sam=sam_folder",
         "prompts.cache_dir=boxes", "data.exclude=flagged.txt"],
    )  # fmt: skip
    resolved = absolute_paths(config)
    assert resolved.data.root == str(tmp_path / "data")
    assert resolved.model.adapter == str(tmp_path / "adapter")
    assert resolved.model.sam == str(tmp_path / "sam_folder")
    assert resolved.prompts.cache_dir == str(tmp_path / "boxes")
    assert resolved.data.exclude == str(tmp_path / "flagged.txt")
    # hub ids and registered architectures are not paths
    plain = absolute_paths(load_config(None, ["model.sam=tiny"]))
    assert plain.model.sam == "tiny"
    assert plain.prompts.detector == "IDEA-Research/grounding-dino-base"
    assert plain.data.root == ""
