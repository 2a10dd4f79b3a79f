import pytest
import torch

from co2sam.train.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    epoch_checkpoint_path,
    last_checkpoint_path,
    save_checkpoint,
)
from co2sam.train.run_dir import RunDirError, open_run_dir, tidy_run_dir


def _run(tmp_path, epochs=(1, 2)):
    """A run folder with last.pt at step 7 and epoch-XXX.pt at step 3 x epoch."""
    for epoch in epochs:
        save_checkpoint(epoch_checkpoint_path(tmp_path, epoch), {"step": 3 * epoch, "epoch": epoch})
    save_checkpoint(last_checkpoint_path(tmp_path), {"step": 7, "epoch": 2, "w": torch.ones(2)})
    return tmp_path


def test_fresh_run_refuses_a_run_folder_and_resume_reads_last(tmp_path):
    assert open_run_dir(tmp_path, False) is None
    _run(tmp_path)
    with pytest.raises(RunDirError, match="--resume"):
        open_run_dir(tmp_path, False)
    point = open_run_dir(tmp_path, True)
    assert point.path == last_checkpoint_path(tmp_path) and point.state["step"] == 7
    assert point.notes == []
    older = open_run_dir(tmp_path, epoch_checkpoint_path(tmp_path, 1))
    assert older.state["step"] == 3


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete"])
def test_damaged_last_falls_back_to_the_newest_readable_epoch(tmp_path, damage):
    _run(tmp_path, epochs=(1, 2, 3))
    last = last_checkpoint_path(tmp_path)
    epoch_3 = epoch_checkpoint_path(tmp_path, 3)
    epoch_3.write_bytes(epoch_3.read_bytes()[:200])
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:300])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        last.unlink()
    point = open_run_dir(tmp_path, True)
    assert point.path == epoch_checkpoint_path(tmp_path, 2) and point.state["step"] == 6
    notes = "\n".join(point.notes)
    assert f"cannot read checkpoint {epoch_3}" in notes
    reason = "missing" if damage == "delete" else "unreadable"
    assert f"{last} is {reason}: resuming from {point.path} instead (step 6, epoch 2)" in notes


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        open_run_dir(tmp_path, True)
    _run(tmp_path, epochs=(1,))
    for path in (last_checkpoint_path(tmp_path), epoch_checkpoint_path(tmp_path, 1)):
        path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint .*--out"):
        open_run_dir(tmp_path, True)


def test_tidy_removes_interrupted_saves_and_restores_a_half_swapped_adapter(tmp_path):
    last = last_checkpoint_path(_run(tmp_path))
    copy_checkpoint(last, epoch_checkpoint_path(tmp_path, 9))
    (last.parent / ".last.pt.abc123.tmp").write_bytes(b"half")
    (last.parent / ".epoch-003.pt.def456.tmp").write_bytes(b"half")
    old_last = tmp_path / ".last.old"  # killed between "last -> .last.old" and ".last.tmp -> last"
    old_last.mkdir()
    (old_last / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / ".last.tmp").mkdir()
    (tmp_path / "best").mkdir()
    (tmp_path / ".best.old").mkdir()  # killed after the swap, before the clean-up

    notes = tidy_run_dir(tmp_path)
    assert sorted(p.name for p in last.parent.iterdir()) == [
        "epoch-001.pt",
        "epoch-002.pt",
        "epoch-009.pt",
        "last.pt",
    ]
    assert (tmp_path / "last" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoints", "last"]
    assert "removed 2 temporary file(s)" in notes[0]
    assert any("restored" in note for note in notes)
    assert tidy_run_dir(tmp_path) == []  # nothing left to do
