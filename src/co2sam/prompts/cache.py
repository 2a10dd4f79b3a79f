"""Box cache: the detections of one split, computed once, stored in one JSON-lines file.

Boxes do not depend on the model being trained (SPEC.md, Box prompts), so a detector
runs once per split (``co2sam boxes``) and training / evaluation read the file.

File format (UTF-8 JSON lines, no pickle, readable with any JSON parser)::

    {"format": "co2sam-boxes", "version": 1, "settings": {...}}        <- header, line 1
    {"id": "2007_000032", "xyxy": [[x0, y0, x1, y1]], "classes": [1], "scores": [0.87]}
    ...                                                                  <- one line per image

``xyxy`` are XYXY pixels in the original image frame (rounded to 0.01 px), ``classes``
are class indices 1..C of ``settings["class_names"]`` (background first), ``scores``
detector confidences in [0, 1] (rounded to 1e-5).

``settings`` records how the boxes were made: ``origin`` (``grounding-dino``,
``oracle``, ``import``), ``detector``, ``box_threshold``, ``text_threshold``, ``mode``
(``per-class`` / ``all``), ``class_names``, ``split`` and anything else the writer adds.

The file is append-only: a killed run leaves at worst a truncated last line, which
:class:`BoxCacheWriter` drops when it resumes, so no image is lost or written twice.

One writer at a time: :class:`BoxCacheWriter` holds a lock on ``<file>.lock`` while it
is open (released by the system if the process dies), so a second ``co2sam boxes`` on
the same cache is refused at once (:class:`BoxCacheBusyError`) instead of interleaving
lines. The processes of one sharded run write their own part files
(``<split>.part-<rank>.jsonl``, :func:`part_path`), merged into the cache by the main
process (:meth:`BoxCacheWriter.merge_parts`), also after a killed run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from co2sam.records import Boxes

FORMAT_NAME = "co2sam-boxes"
FORMAT_VERSION = 1


class BoxCacheError(ValueError):
    """A box cache cannot be used (unreadable, made with other settings, incomplete)."""


class BoxCacheBusyError(BoxCacheError):
    """Another process is writing the box cache now."""


class MissingBoxesError(KeyError):
    """An image has no entry in the box cache."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else "missing boxes"


class BoxCache(Mapping[str, Boxes]):
    """Boxes of one split, read from a cache file; a read-only ``id -> Boxes`` mapping."""

    def __init__(self, path: Path, settings: dict[str, Any], entries: dict[str, Boxes]) -> None:
        self.path = path
        self.settings = settings
        self._entries = entries

    @property
    def origin(self) -> str:
        """How the boxes were made: ``grounding-dino``, ``oracle`` or ``import``."""
        return str(self.settings.get("origin", "unknown"))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.settings.get("class_names", ()))

    def get(self, image_id: str, default: Any = None) -> Boxes:  # type: ignore[override]
        """Boxes of an image; a :class:`MissingBoxesError` naming the file if it is absent."""
        return self[image_id]

    def __getitem__(self, image_id: str) -> Boxes:
        try:
            return self._entries[image_id]
        except KeyError:
            raise MissingBoxesError(
                f"image {image_id!r} is not in the box cache {self.path} "
                f"({len(self._entries)} images, split {self.settings.get('split')!r}); "
                f"run `co2sam boxes` for this split to complete it"
            ) from None

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._entries

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """The given ids that have no entry."""
        return [image_id for image_id in image_ids if image_id not in self._entries]


def load_box_cache(
    path: str | Path, expected_settings: Mapping[str, Any] | None = None
) -> BoxCache:
    """Read a box cache; check that it was made with ``expected_settings``.

    Only the keys given in ``expected_settings`` are compared (floats with a 1e-6
    tolerance, lists as tuples). Raises :class:`BoxCacheError` naming the file, the
    differing settings and the fix; ``FileNotFoundError`` if there is no file.
    A truncated last line (a killed ``co2sam boxes``) is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no box cache at {path}; make it with `co2sam boxes` for its split "
            "(or set prompts.source=detector / oracle, or prompts.cache_dir)"
        )
    settings, entries, _ = _read(path)
    if expected_settings:
        check_settings(path, settings, expected_settings)
    return BoxCache(path, settings, entries)


def check_settings(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise :class:`BoxCacheError` listing every expected setting that differs."""
    differing = [
        f"{key}: cache has {found.get(key, '<missing>')!r}, expected {value!r}"
        for key, value in expected.items()
        if not _same(found.get(key), value)
    ]
    if differing:
        use_it = ""
        if "detector" in expected and not _same(found.get("detector"), expected["detector"]):
            use_it = (
                f"To use these boxes, pass --detector {found.get('detector')} (the detector "
                "they were made with). "
            )
        raise BoxCacheError(
            f"box cache {path} was made with other settings:\n  "
            + "\n  ".join(differing)
            + f"\n{use_it}Re-run `co2sam boxes` with the current config (add --overwrite to "
            "replace the file), or point prompts.cache_dir at a cache made with these settings."
        )


def part_path(path: str | Path, rank: int) -> Path:
    """The part file process ``rank`` of a sharded run writes (``val.part-1.jsonl``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part-{rank}{path.suffix}")


def _parts_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.part-*{path.suffix}"))


class cache_lock:
    """The lock of a cache file, taken at once or :class:`BoxCacheBusyError`."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock

        self.path = Path(path)
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"), timeout=0)

    def acquire(self) -> cache_lock:
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise BoxCacheBusyError(
                f"another process is writing the box cache {self.path} now (lock "
                f"{self._lock.lock_file}); wait for it to finish. To use more GPUs, run one "
                "`co2sam boxes --devices N` instead of several commands"
            ) from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> cache_lock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class BoxCacheWriter:
    """Append-only writer of a box cache; resumes an interrupted file.

    Use as a context manager. If ``path`` exists with the same ``settings`` it is
    resumed: a truncated last line is cut off and :attr:`done` holds the ids already
    written (skip them). A file with other settings raises :class:`BoxCacheError`
    unless ``overwrite`` is set (which also drops part files of a sharded run). The
    file is locked while the writer is open (:class:`BoxCacheBusyError` if another
    process holds it; ``lock=False`` when the caller holds the lock).
    """

    def __init__(
        self,
        path: str | Path,
        settings: Mapping[str, Any],
        *,
        overwrite: bool = False,
        lock: bool = True,
    ) -> None:
        self.path = Path(path)
        self.settings = _jsonable(dict(settings))
        self.done: set[str] = set()
        self._lock = cache_lock(self.path).acquire() if lock else None
        try:
            self._open(overwrite)
        except BaseException:
            self._release()
            raise

    def _open(self, overwrite: bool) -> None:
        if overwrite:
            for part in _parts_of(self.path):
                part.unlink()
        if self.path.exists() and not overwrite:
            found, entries, good_bytes = _read(self.path)
            check_settings(self.path, found, self.settings)
            self.done = set(entries)
            with self.path.open("r+b") as handle:
                handle.truncate(good_bytes)  # drop a half-written last line
            self._handle = self.path.open("a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
            header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "settings": self.settings}
            self._write_line(header)

    def write(self, image_id: str, boxes: Boxes) -> None:
        """Append the boxes of one image (flushed, so a kill loses at most this line)."""
        if image_id in self.done:
            raise BoxCacheError(f"image {image_id!r} is already in {self.path}")
        self._write_line(encode_entry(image_id, boxes))
        self.done.add(image_id)

    def merge_parts(self, order: Sequence[str] = ()) -> int:
        """Append the entries of the part files of a sharded run, then delete them.

        order: image ids in split order; merged entries follow it (others after them), so
        a sharded run writes the same file as one process. Ids already in the cache are
        skipped; a part made with other settings raises :class:`BoxCacheError`. Returns
        the number of images added. The parts' writers must be closed.
        """
        parts = _parts_of(self.path)
        found: dict[str, Boxes] = {}
        for part in parts:
            settings, entries, _ = _read(part)
            check_settings(part, settings, self.settings)
            for image_id, boxes in entries.items():
                if image_id not in self.done:
                    found.setdefault(image_id, boxes)
        position = {image_id: index for index, image_id in enumerate(order)}
        for image_id in sorted(found, key=lambda i: (position.get(i, len(position)), i)):
            self.write(image_id, found[image_id])
        for part in parts:
            part.unlink()
            part.with_name(part.name + ".lock").unlink(missing_ok=True)
        return len(found)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> BoxCacheWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_line(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


def write_box_cache(
    path: str | Path,
    settings: Mapping[str, Any],
    boxes_by_id: Mapping[str, Boxes],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a whole cache at once (atomically: temporary file, then rename).

    An existing cache is replaced only with ``overwrite`` (else :class:`BoxCacheError`).
    """
    path = Path(path)
    with cache_lock(path):
        if path.exists() and not overwrite:
            raise BoxCacheError(
                f"{path} already exists ({_summary(path)}); pass --overwrite to replace it, "
                "or --out to write another file"
            )
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        with BoxCacheWriter(tmp, settings, overwrite=True, lock=False) as writer:
            for image_id, boxes in boxes_by_id.items():
                writer.write(image_id, boxes)
        tmp.replace(path)
    return path


def _summary(path: Path) -> str:
    """``N images, origin ..., detector ...`` of a cache file, for messages."""
    try:
        settings, entries, _ = _read(path)
    except (BoxCacheError, OSError) as error:
        return f"not a readable box cache: {error}"
    detector = settings.get("detector")
    return f"{len(entries)} images, origin {settings.get('origin', '?')}" + (
        f", detector {detector}" if detector else ""
    )


def encode_entry(image_id: str, boxes: Boxes) -> dict[str, Any]:
    """One cache line: XYXY rounded to 0.01 px, scores to 1e-5."""
    return {
        "id": str(image_id),
        "xyxy": np.round(boxes.xyxy.astype(np.float64), 2).tolist(),
        "classes": boxes.classes.astype(int).tolist(),
        "scores": np.round(boxes.scores.astype(np.float64), 5).tolist(),
    }


def decode_entry(record: Mapping[str, Any]) -> Boxes:
    return Boxes(
        np.asarray(record["xyxy"], np.float32).reshape(-1, 4),
        np.asarray(record["classes"], np.int64),
        np.asarray(record["scores"], np.float32),
    )


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Boxes], int]:
    """Header settings, entries by id, and the byte length of the well-formed prefix."""
    entries: dict[str, Boxes] = {}
    good_bytes = 0
    settings: dict[str, Any] | None = None
    with path.open("rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("line not terminated")
            record = json.loads(raw)
            if settings is None:
                if record.get("format") != FORMAT_NAME:
                    raise BoxCacheError(f"{path} is not a co2sam box cache (bad header line)")
                if record.get("version") != FORMAT_VERSION:
                    raise BoxCacheError(
                        f"{path} has box-cache format version {record.get('version')}, "
                        f"this co2sam reads version {FORMAT_VERSION}; re-run `co2sam boxes`"
                    )
                settings = dict(record["settings"])
            else:
                entries[str(record["id"])] = decode_entry(record)
        except BoxCacheError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            if last:  # a run killed mid-write: ignore the partial line
                break
            raise BoxCacheError(f"{path}, line {number} is corrupt ({error})") from error
        good_bytes += len(raw)
    if settings is None:
        raise BoxCacheError(f"{path} has no header line; delete it and re-run `co2sam boxes`")
    return settings, entries, good_bytes


def _jsonable(value: Any) -> Any:
    """Settings as JSON would give them back (tuples -> lists, numpy -> python)."""
    return json.loads(json.dumps(value, default=lambda item: np.asarray(item).tolist()))


def _same(found: Any, expected: Any) -> bool:
    found, expected = _jsonable(found), _jsonable(expected)
    if isinstance(expected, float) or isinstance(found, float):
        try:
            return math.isclose(float(found), float(expected), abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return found == expected
