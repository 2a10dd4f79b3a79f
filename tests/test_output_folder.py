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


def _png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("P", (8, 6)).save(path)
    return path


def test_file_problem_checks_a_png_cheaply_and_a_json_by_parsing(tmp_path):
    from co2sam.output_folder import file_problem

    whole = _png(tmp_path / "whole.png")
    assert file_problem(whole) is None
    assert file_problem(tmp_path / "gone.png") == "missing"
    (tmp_path / "empty.png").write_bytes(b"")
    assert file_problem(tmp_path / "empty.png") == "empty"
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[:-5])
    assert file_problem(tmp_path / "cut.png") == "truncated"
    (tmp_path / "text.png").write_text("not a png at all, but long enough")
    assert file_problem(tmp_path / "text.png") == "truncated"
    (tmp_path / "a.json").write_text('{"areas": ')
    assert file_problem(tmp_path / "a.json") == "not valid JSON"


def test_a_resumed_run_redoes_images_whose_files_are_missing_damaged_or_stale(tmp_path):
    out = tmp_path / "out"

    def files_of(image_id, record):
        return [f"labels/{image_id}.png", f"conf/{image_id}.png"]

    with _folder(out, files_of=files_of) as folder:
        for image_id in "abcd":
            for name in files_of(image_id, {}):
                _png(out / name)
            folder.record(image_id, input=1)
    (out / "labels/a.png").unlink()
    (out / "conf/b.png").write_bytes((out / "conf/b.png").read_bytes()[:20])  # a cut copy

    def stale(image_id, record):
        return "d.jpg: changed since" if image_id == "d" else None

    with _folder(out, files_of=files_of, stale=stale) as folder:
        assert folder.resumed and folder.done == {"c"}
        assert folder.redone == {
            "a": "labels/a.png: missing",
            "b": "conf/b.png: truncated",
            "d": "d.jpg: changed since",
        }
        summary = folder.redo_summary()
        assert summary.startswith("redoing 3 image(s) an earlier run finished (")
        assert "1 missing" in summary and "1 truncated" in summary and "\n" not in summary
        # their log lines and remaining files are gone: they are done again from scratch
        assert set(folder.records()) == {"c"}
        assert not (out / "conf/a.png").exists() and not (out / "labels/b.png").exists()
        assert not (out / "labels/d.png").exists() and (out / "labels/c.png").is_file()
    with _folder(out, files_of=files_of) as folder:  # nothing left to redo
        assert folder.redone == {} and folder.redo_summary() == ""
