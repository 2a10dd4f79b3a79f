"""Output folders of the per-image commands: never mixed, resumable, shared by processes.

``evaluate``, ``pseudo-labels`` and ``predict`` write one folder each. The folder
records what made it (``.co2sam/run.json``: the command, data, split, model, boxes,
...) and, per process, one JSON line per finished image (``.co2sam/done-<rank>.jsonl``,
written after the image's files). So:

- the same command again continues: images already done are skipped, whatever the
  number of processes before or now (every process reads every log);
- another run (other adapter, split, boxes, ...) is refused with the difference, unless
  ``overwrite`` clears what the command writes first (a run that failed before writing
  anything does not count);
- a folder that holds other files is refused the same way (nothing is mixed);
- a second command writing into the folder at the same time is refused (a file lock,
  held by the main process, released by the system if the process dies);
- files about one run only (``per_run``: the list of skipped images) are removed when a
  run starts, so they always describe the latest run (an image fixed since is not
  listed; one still bad is listed again);
- a resumed run trusts the files, not the log: an image counts as done only while its
  output files (``files_of``) are whole, by a cheap check (:func:`file_problem`: a PNG's
  signature and closing chunk, a JSON file parses), and while ``stale`` finds no reason to
  redo it (``predict``: its input changed). The others lose their log line and their
  remaining files, and are done again (:attr:`OutputFolder.redone` says which and why).

A killed process leaves at worst a truncated last line in its own log: it is dropped
when that log is next opened, and the image is done again.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

STATE_DIR = ".co2sam"
IDENTITY_FILE = "run.json"
LOCK_FILE = "lock"


class OutputFolderError(ValueError):
    """The output folder holds another run (or other files); the message says the fix."""


class OutputFolder:
    """One command's output folder (see the module docstring).

    identity: what makes two runs the same (JSON values); compared key by key.
    outputs: the names (files or folders, relative) this command writes, cleared by
        ``overwrite``; nothing else in the folder is ever removed.
    per_run: names among ``outputs`` that describe one run only, removed whenever a run
        starts (resumed or not).
    processes: a :class:`co2sam.parallel.Processes` (None: one process).
    files_of: ``(image id, its record) -> paths`` (relative to the folder) every finished
        image must have; checked when a run resumes (see the module docstring).
    stale: ``(image id, its record) -> reason or None``: an image to redo though its files
        are whole (None: never).
    """

    def __init__(
        self,
        path: str | Path,
        identity: Mapping[str, Any],
        *,
        outputs: Sequence[str],
        per_run: Sequence[str] = (),
        overwrite: bool = False,
        processes: Any = None,
        files_of: Callable[[str, Mapping[str, Any]], Sequence[str | Path]] | None = None,
        stale: Callable[[str, Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(dict(identity), default=str))
        self.outputs = tuple(outputs)
        self.per_run = tuple(per_run)
        self.overwrite = overwrite
        self.processes = processes
        self.files_of = files_of
        self.stale = stale
        self.resumed = False
        self.done: set[str] = set()
        """Ids finished before this run, read once by the main process when it opened the
        folder: every process gets the same set, so they agree on each one's share."""
        self._log: Any = None
        self._lock: Any = None

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    def open(self) -> OutputFolder:
        """Check (main process) and claim the folder; every process then opens its log.

        Raises :class:`OutputFolderError` on every process when the folder is refused.
        """
        rank = 0 if self.processes is None else self.processes.rank
        verdict: tuple[str | None, bool, set[str], dict[str, str]] = (None, False, set(), {})
        if rank == 0:
            try:
                resumed = self._claim()
                redone = self._recheck() if resumed else {}
                verdict = (None, resumed, set(self.records()), redone)
            except OutputFolderError as error:
                verdict = (str(error), False, set(), {})
        if self.processes is not None:
            verdict = self.processes.gather(verdict)[0]
        error, self.resumed, self.done, self.redone = verdict
        if error is not None:
            raise OutputFolderError(error)
        self._log = _open_log(self.state_dir / f"done-{rank}.jsonl")
        return self

    def record(self, image_id: str, **values: Any) -> None:
        """Mark one image done (after its files are written), with what the summary needs."""
        self._log.write(json.dumps({"id": image_id, **values}, separators=(",", ":")) + "\n")
        self._log.flush()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every finished image of every process and earlier run: id -> its record."""
        found: dict[str, dict[str, Any]] = {}
        for log in sorted(self.state_dir.glob("done-*.jsonl")):
            for line in log.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                found.setdefault(str(record["id"]), record)
        return found

    def redo_summary(self) -> str:
        """One line: how many finished images are done again, and why (empty when none)."""
        if not self.redone:
            return ""
        kinds = Counter(reason.rsplit(": ", 1)[-1] for reason in self.redone.values())
        why = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        first = next(iter(self.redone.values()))
        return f"redoing {len(self.redone)} image(s) an earlier run finished ({why}; e.g. {first})"

    def close(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _claim(self) -> bool:
        """Decide on the main process: True to resume, False for a fresh (cleared) folder."""
        from filelock import FileLock, Timeout

        identity_file = self.state_dir / IDENTITY_FILE
        holds_other_files = self.path.is_dir() and any(
            entry.name != STATE_DIR for entry in self.path.iterdir()
        )
        if not identity_file.is_file() and holds_other_files and not self.overwrite:
            raise OutputFolderError(
                f"{self.path} is not empty and holds no co2sam {self.identity.get('command')} "
                "output: choose an empty or new folder (--out), or pass --overwrite to write "
                f"into it (replacing {', '.join(self.outputs)})"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.state_dir / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise OutputFolderError(
                f"another co2sam command is writing to {self.path} now; wait for it to end, "
                "or choose another folder (--out)"
            ) from None
        self._lock = lock
        if identity_file.is_file():
            try:
                found = json.loads(identity_file.read_text())
            except ValueError:
                found = {}
            if found == self.identity and not self.overwrite:
                for name in self.per_run:
                    (self.path / name).unlink(missing_ok=True)
                return True
            if not self.overwrite and not self._holds_nothing():
                self.close()
                raise OutputFolderError(self._refusal(found))
        self._clear()
        temporary = identity_file.with_name(IDENTITY_FILE + ".tmp")
        temporary.write_text(json.dumps(self.identity, indent=2) + "\n")
        temporary.replace(identity_file)
        return False

    def _recheck(self) -> dict[str, str]:
        """Main process, on resuming: the finished images to do again (module docstring);
        their log lines and remaining files are removed."""
        redo: dict[str, str] = {}
        records = self.records()
        for image_id, record in records.items():
            reason = self.stale(image_id, record) if self.stale is not None else None
            for name in self.files_of(image_id, record) if self.files_of else ():
                if reason is not None:
                    break
                problem = file_problem(self.path / name)
                if problem is not None:
                    reason = f"{Path(name).as_posix()}: {problem}"
            if reason is not None:
                redo[image_id] = reason
        if redo:
            for image_id in redo:
                for name in self.files_of(image_id, records[image_id]) if self.files_of else ():
                    (self.path / name).unlink(missing_ok=True)
            for log in sorted(self.state_dir.glob("done-*.jsonl")):
                kept = [line for line in log.read_bytes().splitlines() if _id_of(line) not in redo]
                temporary = log.with_name(log.name + ".tmp")
                temporary.write_bytes(b"".join(line + b"\n" for line in kept))
                temporary.replace(log)
        return redo

    def _holds_nothing(self) -> bool:
        """No image finished and no output written (a run that failed before any work)."""
        return not self.records() and not any((self.path / name).exists() for name in self.outputs)

    def _refusal(self, found: Mapping[str, Any]) -> str:
        keys = sorted(set(found) | set(self.identity))
        differing = [
            f"{key}: {found.get(key, '<missing>')!r} there, {self.identity.get(key)!r} now"
            for key in keys
            if found.get(key) != self.identity.get(key)
        ]
        return (
            f"{self.path} holds the output of another run ("
            + "; ".join(differing)
            + "): choose another folder (--out), or pass --overwrite to replace it"
        )

    def _clear(self) -> None:
        state = [p.relative_to(self.path) for p in self.state_dir.iterdir() if p.name != LOCK_FILE]
        for name in (*self.outputs, *state):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()


def _id_of(line: bytes) -> str | None:
    try:
        return str(json.loads(line)["id"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut by a kill


_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk that closes every PNG


def file_problem(path: str | Path) -> str | None:
    """Why an output file is not whole, cheaply (None: it is): ``missing``, ``empty``,
    ``truncated`` (a PNG without its signature or closing IEND chunk, which a cut copy or
    a kill mid-write lacks) or ``not valid JSON``. Reads a few bytes of a PNG, never
    decodes it; other files are only checked to be non-empty."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size == 0:
        return "empty"
    try:
        if path.suffix.lower() == ".png":
            with path.open("rb") as handle:
                start = handle.read(len(_PNG_START))
                handle.seek(max(size - len(_PNG_END), 0))
                end = handle.read()
            return None if start == _PNG_START and end == _PNG_END else "truncated"
        if path.suffix.lower() == ".json":
            json.loads(path.read_bytes())
    except ValueError:
        return "not valid JSON"
    except OSError:
        return "unreadable"
    return None


def _open_log(path: Path) -> Any:
    """Open a process's log for appending, dropping a line cut short by a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with path.open("r+b") as handle:
                handle.truncate(keep)
    return path.open("a", encoding="utf-8")
