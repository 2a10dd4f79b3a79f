import errno
import os
import stat

import pytest
import torch

from co2sam import atomic_files
from co2sam.atomic_files import write_atomically


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a full disk)."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.__exit__(*exc_info)


def fill_the_disk_after(monkeypatch, room: int) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        atomic_files.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), room)
    )


def test_a_full_disk_names_the_file_even_through_torch_save(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    fill_the_disk_after(monkeypatch, 100)
    with open(tmp_path / "x", "wb") as file, pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save({"w": torch.ones(100)}, FullDisk(file, 100))  # torch.save's own words
    with pytest.raises(OSError) as failed:
        write_atomically(target, lambda file: torch.save({"w": torch.ones(100)}, file))
    error = failed.value
    assert (error.errno, error.filename, error.strerror) == (
        errno.ENOSPC,
        str(target),
        "No space left on device",
    )
    assert target.read_bytes() == b"the previous checkpoint"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "x"]  # no temporary left


def test_other_errors_of_the_writer_pass_through(tmp_path):
    def broken(file):
        raise ValueError("not a write problem")

    with pytest.raises(ValueError, match="not a write problem"):
        write_atomically(tmp_path / "a.bin", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_atomically(tmp_path / "a.bin", lambda file: file.write(b"data"))
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
