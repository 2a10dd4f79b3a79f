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


def test_a_fresh_run_refuses_any_folder_that_is_not_empty(tmp_path):
    """A user's own files, and an old run without last.pt, are left as they are."""
    from co2sam.train.run_dir import RunFolder

    user = tmp_path / "userdir"
    user.mkdir()
    (user / "config.yaml").write_text("my own settings\n")
    folder = RunFolder(user)
    with pytest.raises(RunDirError, match=r"is not empty \(config.yaml\) .*--out"):
        folder.claim(False)
    folder.release()
    assert (user / "config.yaml").read_text() == "my own settings\n"

    old = tmp_path / "old"  # a run whose last.pt is gone: epochs, last/ and logs remain
    save_checkpoint(epoch_checkpoint_path(old, 1), {"step": 3, "epoch": 1})
    (old / "last").mkdir()
    (old / "config.yaml").write_text("the old run's config\n")
    folder = RunFolder(old)
    with pytest.raises(RunDirError, match=f"already holds a training run.*--resume {old}"):
        folder.claim(False)
    folder.release()
    assert (old / "config.yaml").read_text() == "the old run's config\n"

    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (empty, tmp_path / "new"):
        folder = RunFolder(path)
        assert folder.claim(False) == (None, [])
        folder.release()
        assert (path / ".co2sam" / "training-run").is_file()


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_its_files_set_aside(
    tmp_path,
):
    from co2sam.train.run_dir import RunFolder

    run = tmp_path / "run"
    folder = RunFolder(run)
    folder.claim(False)
    folder.release()
    (run / "config.yaml").write_text("first start\n")
    (run / "csv" / "from-step-0").mkdir(parents=True)
    (run / "csv" / "from-step-0" / "metrics.csv").write_text("step\n1\n")
    folder = RunFolder(run)
    point, notes = folder.claim(False)
    folder.release()
    assert point is None and "stopped before its first checkpoint" in notes[0]
    (aside,) = run.glob("abandoned-*")
    assert (aside / "config.yaml").read_text() == "first start\n"
    assert (aside / "csv" / "from-step-0" / "metrics.csv").is_file()
    assert sorted(p.name for p in run.iterdir()) == [".co2sam", aside.name]


def test_the_run_folder_is_locked_for_one_run_at_a_time(tmp_path):
    from filelock import FileLock

    from co2sam.train.run_dir import RunFolder

    _run(tmp_path)
    other_job = FileLock(tmp_path / ".co2sam" / "lock")
    other_job.acquire()
    folder = RunFolder(tmp_path)
    with pytest.raises(RunDirError, match=r"another co2sam run is training in .* now"):
        folder.claim(True)
    other_job.release()
    point, _ = folder.claim(True)
    assert point.state["step"] == 7
    with pytest.raises(RunDirError, match="another co2sam run"):
        RunFolder(tmp_path).claim(True)  # this process holds it now
    folder.release()
    RunFolder(tmp_path).lock()  # released
