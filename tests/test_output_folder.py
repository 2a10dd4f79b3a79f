"""Output folders: the same run resumes, another run or other files are refused."""

import subprocess
import sys
import textwrap

import pytest

from co2sam.output_folder import OutputFolder, OutputFolderError

IDENTITY = {"command": "evaluate", "split": "val", "adapter": "runs/a/best"}
OUTPUTS = ("open", "report.json")


def _folder(path, identity=IDENTITY, **kwargs):
    return OutputFolder(path, identity, outputs=OUTPUTS, **kwargs)


def test_same_run_resumes_and_keeps_what_was_done(tmp_path):
    with _folder(tmp_path / "out") as folder:
        assert not folder.resumed
        folder.record("a", scored=True)
        folder.record("b", scored=False)
    log = tmp_path / "out/.co2sam/done-0.jsonl"
    log.write_bytes(log.read_bytes() + b'{"id": "c", "sco')  # killed mid-line
    with _folder(tmp_path / "out") as folder:
        assert folder.resumed
        assert set(folder.records()) == {"a", "b"}
        folder.record("c", scored=True)
    with _folder(tmp_path / "out") as folder:
        assert list(folder.records()) == ["a", "b", "c"]
        assert folder.records()["a"] == {"id": "a", "scored": True}


def test_another_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    with _folder(out) as folder:
        folder.record("a")
    (out / "open").mkdir()
    (out / "open" / "a.png").write_bytes(b"png")
    (out / "notes.txt").write_text("the user's own file")
    other = {**IDENTITY, "adapter": "runs/b/best"}
    with pytest.raises(OutputFolderError, match="adapter: 'runs/a/best' there, 'runs/b/best' now"):
        _folder(out, other).open()
    with _folder(out, other, overwrite=True) as folder:
        assert not folder.resumed and folder.records() == {}
    assert not (out / "open").exists()  # what the command wrote is cleared
    assert (out / "notes.txt").read_text() == "the user's own file"  # nothing else


def test_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "photos.txt").write_text("x")
    with pytest.raises(OutputFolderError, match="not empty and holds no co2sam evaluate"):
        _folder(tmp_path).open()
    with _folder(tmp_path, overwrite=True):
        pass
    assert (tmp_path / "photos.txt").is_file()


def test_a_second_command_on_the_same_folder_is_refused(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys, time
        from co2sam.output_folder import OutputFolder
        folder = OutputFolder({str(tmp_path / "out")!r}, {IDENTITY!r}, outputs=())
        folder.open()
        print("open", flush=True)
        sys.stdin.readline()
        folder.close()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "open"
        with pytest.raises(OutputFolderError, match="another co2sam command is writing"):
            _folder(tmp_path / "out").open()
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdin.close()
        process.stdout.close()
    with _folder(tmp_path / "out") as folder:  # released: the same run resumes
        assert folder.resumed


def test_a_run_that_wrote_nothing_does_not_hold_the_folder(tmp_path):
    _folder(tmp_path / "out").open().close()  # e.g. stopped by the pre-flight
    other = {**IDENTITY, "adapter": "runs/fixed/best"}
    with _folder(tmp_path / "out", other) as folder:
        assert not folder.resumed
