"""Failed writes end a command with one line (no traceback), naming the path and the fix."""

import errno

import pytest
import typer
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.commands.guards import describe_write_error, output_errors
from co2sam.data.synthetic import make_synthetic_dataset


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOTDIR, "a file is in the way"),
    ],
)
def test_write_errors_say_what_to_do(code, words):
    message = describe_write_error(OSError(code, "reason", "/out/x.png"))
    assert message.startswith("cannot write /out/x.png: reason; ") and words in message
    missing = FileNotFoundError(errno.ENOENT, "gone", "in.jpg")  # not a write: as it is
    assert describe_write_error(missing) == "[Errno 2] gone: 'in.jpg'"


def test_failed_checkpoint_writes_become_one_line(capsys):
    with pytest.raises(typer.Exit) as stopped, output_errors("runs/x"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
    assert stopped.value.exit_code == 2
    assert "cannot write in runs/x" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(RuntimeError, match="something else"), output_errors():
        raise RuntimeError("something else")


def test_train_into_an_unwritable_folder_is_one_line(tmp_path):
    make_synthetic_dataset(tmp_path / "data", num_images=2, num_classes=2, image_size=32,
                           splits={"train": 2})  # fmt: skip
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(
        app,
        ["train", "--data-root", str(tmp_path / "data"), "--sam", "tiny", "--boxes", "oracle",
         "--set", "data.train_split=train", "--set", "train.val_every=0",
         "--set", "data.num_workers=0", "--max-steps", "1", "--no-progress",
         "--out", str(tmp_path / "file" / "run")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "a file is in the way" in " ".join(result.output.split())
