"""Fill a box cache for a split: run a detector (or the oracle) once over every image.

Resumable: images already in the file are skipped, so a killed run continues where it
stopped (see :class:`co2sam.prompts.cache.BoxCacheWriter`). Shardable: with several
processes (:class:`co2sam.parallel.Processes`), each detects every N-th image still to
do and writes its own part file; the main process holds the cache's lock throughout and
merges the parts in split order, so the cache is the one a single process would write.
Placeholder samples (unreadable files, ``co2sam.data.preflight``) get no line: the
cache stays resumable once the file is fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from co2sam.config import Co2SamConfig
from co2sam.parallel import Processes
from co2sam.prompts.cache import BoxCacheError, BoxCacheWriter, part_path
from co2sam.prompts.oracle import dataset_instance_mask, oracle_boxes
from co2sam.prompts.registry import build_prompter
from co2sam.prompts.source import default_cache_path, detector_settings, oracle_settings
from co2sam.records import Boxes, Sample

# Detect boxes for a batch of samples (same order).
BatchDetector = Callable[[Sequence[Sample]], list[Boxes]]


def build_box_cache(
    config: Co2SamConfig,
    split: str,
    dataset: Any,
    *,
    origin: str = "detector",
    path: str | Path | None = None,
    detector: BatchDetector | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    processes: Processes | None = None,
) -> Path:
    """Write (or complete) the box cache of ``split``; return its path.

    origin: ``detector``: the prompter ``config.prompts.detector`` names (Grounding DINO
        or SAM 3, :mod:`co2sam.prompts.registry`; detector, thresholds, mode, synonyms,
        batch size, device); a prompter's name (``grounding-dino``, ``sam3``) says the
        same and checks that the detector is one; ``oracle``: boxes from ground-truth masks.
    detector: replaces the prompter's model (tests, other detectors); the settings
        still record ``config.prompts``.
    limit: stop after this many *new* images (the file stays resumable).
    processes: the processes of a sharded run (every one calls this); None: one.
    """
    processes = processes or Processes()
    class_names = tuple(dataset.class_names)
    path = Path(path) if path is not None else default_cache_path(config, split)
    if origin == "oracle":
        settings = oracle_settings(split, class_names)
    else:
        settings = detector_settings(config, split, class_names)
        if origin not in ("detector", settings["origin"]):
            raise ValueError(
                f"box origin {origin!r}, but prompts.detector {config.prompts.detector!r} is "
                f"a {settings['origin']} model; use detector, {settings['origin']} or oracle"
            )

    # Open (and check) the file first: a settings mismatch must not wait for a model load.
    writer, refusal = None, None
    if processes.is_main:
        try:
            writer = BoxCacheWriter(path, settings, overwrite=overwrite)
            writer.merge_parts(dataset.ids)  # left by a killed sharded run
        except BoxCacheError as error:
            refusal = error
            if writer is not None:
                writer.close()
    refusal, done = processes.gather((refusal, None if writer is None else writer.done))[0]
    if refusal is not None:
        raise refusal
    try:
        todo = [index for index, image_id in enumerate(dataset.ids) if image_id not in done]
        if limit is not None:
            todo = todo[:limit]
        mine = processes.shard(todo)
        if mine and detector is None:
            detector = (
                _oracle_detector(dataset)
                if origin == "oracle"
                else _prompter_detector(config, class_names, settings["mode"])
            )
        own = writer
        if processes.distributed:
            own = BoxCacheWriter(part_path(path, processes.rank), settings, overwrite=True)
        try:
            _detect_into(
                own,
                dataset,
                mine,
                detector,
                config,
                progress and processes.is_main,
                f"boxes {split}",
                len(dataset.ids) - len(todo) + len(mine),
            )
        finally:
            if own is not writer:
                own.close()
        processes.barrier()
        if writer is not None and processes.distributed:
            writer.merge_parts(dataset.ids)
    finally:
        if writer is not None:
            writer.close()
    processes.barrier()
    return path


def _detect_into(writer, dataset, indices, detector, config, progress, title, total) -> None:
    """Detect the boxes of ``dataset[indices]`` in batches and append them to ``writer``."""
    batch_size = max(1, config.prompts.batch_size)
    with _progress(progress, title, total, total - len(indices)) as advance:
        for start in range(0, len(indices), batch_size):
            batch = [dataset[index] for index in indices[start : start + batch_size]]
            samples = [sample for sample in batch if sample.problem is None]
            found = detector(samples) if samples else []
            for sample, boxes in zip(samples, found, strict=True):
                writer.write(sample.id, boxes)
            advance(len(batch))


def _oracle_detector(dataset: Any) -> BatchDetector:
    def detect(samples: Sequence[Sample]) -> list[Boxes]:
        return [oracle_boxes(s, dataset_instance_mask(dataset, s.id)) for s in samples]

    return detect


def _prompter_detector(
    config: Co2SamConfig, class_names: Sequence[str], mode: str
) -> BatchDetector:
    prompter = build_prompter(config, class_names)

    def detect(samples: Sequence[Sample]) -> list[Boxes]:
        labels = [s.labels if mode == "per-class" else None for s in samples]
        return prompter.detect([s.image for s in samples], labels)

    return detect


class _progress:
    """A rich progress bar with ETA (or nothing); yields ``advance(n)``."""

    def __init__(self, enabled: bool, title: str, total: int, done: int) -> None:
        self.enabled, self.title, self.total, self.done = enabled, title, total, done

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda count: None
        from co2sam.progress import progress_bar

        self.bar = progress_bar()
        self.bar.start()
        task = self.bar.add_task(self.title, total=self.total, completed=self.done)
        return lambda count: self.bar.advance(task, count)

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self.bar.stop()
