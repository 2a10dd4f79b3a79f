import os
import random

import numpy as np
import pytest
import torch

from co2sam.config import OptimConfig
from co2sam.train.checkpoint import (
    CheckpointError,
    UnreadableCheckpointError,
    copy_checkpoint,
    epoch_checkpoint_path,
    epoch_checkpoints,
    load_checkpoint,
    load_lora_state_dict,
    lora_state_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from co2sam.train.schedule import build_optimizer


class TinyLora(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(3, 3)
        self.q = torch.nn.Module()
        self.q.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(3, 2, bias=False)})


def _state():
    model = TinyLora()
    parameters = [p for n, p in model.named_parameters() if "lora" in n]
    optimizer, scheduler = build_optimizer(parameters, OptimConfig(warmup_steps=2))
    model.q.lora_A["default"](torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "lora": lora_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": {"train": {"seed": 1, "max_steps": None, "milestones": [1, 2]}},
        "step": 1,
    }
    return model, state


def test_lora_selected_by_name_and_weights_only_round_trip(tmp_path):
    model, state = _state()
    assert list(state["lora"]) == ["q.lora_A.default.weight"]
    path = save_checkpoint(tmp_path / "checkpoints" / "last.pt", state)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes
    loaded = load_checkpoint(path)  # torch.load(weights_only=True)
    assert loaded["step"] == 1 and loaded["format_version"] == 1
    assert loaded["scheduler"]["last_epoch"] == 1
    other = TinyLora()
    load_lora_state_dict(other, loaded["lora"])
    assert torch.equal(other.q.lora_A["default"].weight, model.q.lora_A["default"].weight)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_lora_state_dict(other, {"x.lora_A.weight": torch.zeros(1)})


def test_rng_states_restore():
    state = rng_state()
    first = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(state)
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, state = _state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    good = path.read_bytes()

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**state, "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_unreadable_or_missing_checkpoint(tmp_path):
    _, state = _state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(UnreadableCheckpointError, match="cannot read checkpoint .*truncated"):
        load_checkpoint(path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_epoch_checkpoints_are_copied_atomically_and_listed_newest_first(tmp_path, monkeypatch):
    _, state = _state()
    last = save_checkpoint(tmp_path / "checkpoints" / "last.pt", state)
    for epoch in (2, 10, 1):
        copy_checkpoint(last, epoch_checkpoint_path(tmp_path, epoch))
    (tmp_path / "checkpoints" / "epoch-best.pt").write_bytes(b"")  # not an epoch number
    names = [path.name for path in epoch_checkpoints(tmp_path)]
    assert names == ["epoch-010.pt", "epoch-002.pt", "epoch-001.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch-010.pt")["step"] == 1

    def crash(source, target, *args, **kwargs):
        target.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("shutil.copyfileobj", crash)
    with pytest.raises(OSError, match="disk full"):
        copy_checkpoint(last, epoch_checkpoint_path(tmp_path, 11))
    assert not (tmp_path / "checkpoints" / "epoch-011.pt").exists()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
