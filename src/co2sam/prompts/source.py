"""Where the boxes of a split come from: a cache file, a live detector, or oracle masks.

``box_source(config, split, dataset)`` is what training, evaluation and the demo call;
it returns a :class:`BoxSource`, a callable ``Sample -> Boxes`` that also says in
words where its boxes come from (reports must say when boxes are oracle ones).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from co2sam.config import Co2SamConfig, PromptConfig
from co2sam.prompts.cache import BoxCacheError, load_box_cache
from co2sam.prompts.class_texts import detector_texts
from co2sam.prompts.oracle import dataset_instance_mask, oracle_boxes
from co2sam.prompts.registry import PROMPTERS, build_prompter, prompter_spec
from co2sam.records import Boxes, Sample


class BoxSource:
    """A callable ``Sample -> Boxes`` (original image frame, at most ``max_boxes``)."""

    def __init__(
        self,
        fetch: Callable[[Sample], Boxes],
        *,
        origin: str,
        description: str,
        max_boxes: int,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self._fetch = fetch
        self.origin = origin
        """``grounding-dino``, ``sam3``, ``oracle``, ``import`` (or what a cache records)."""
        self.description = description
        self.max_boxes = max_boxes
        self.settings = dict(settings or {})

    def __call__(self, sample: Sample) -> Boxes:
        return self._fetch(sample).top_k(self.max_boxes)

    def __repr__(self) -> str:
        return f"BoxSource({self.description})"


MASK_SOURCES = ("oracle", "simulated")
"""Box sources made from the ground-truth masks: a command using one needs the masks."""


def reads_masks(source: str | None) -> bool:
    """Whether boxes from ``source`` (``prompts.source``, or a box cache file) are made
    from the split's ground-truth masks, so the command needs them."""
    return source in MASK_SOURCES


def boxes_command(config: Co2SamConfig, split: str, path: str | Path | None = None) -> str:
    """The ``co2sam boxes`` command line that makes (or completes) a split's cache."""
    words = ["co2sam", "boxes", "--split", split, "--data-root", config.data.root or "DIR"]
    if config.data.dataset != "voc":
        words += ["--set", f"data.dataset={config.data.dataset}"]
    if config.prompts.detector != PromptConfig.detector:
        words += ["--detector", config.prompts.detector]
    if path is not None and Path(path) != default_cache_path(config, split):
        words += ["--out", str(path)]
    return " ".join(shlex.quote(str(word)) for word in words)


def default_cache_path(config: Co2SamConfig, split: str) -> Path:
    """``<prompts.cache_dir>/<split>.jsonl``; default dir ``<data.root>/co2sam_boxes``."""
    folder = config.prompts.cache_dir or str(Path(config.data.root or ".") / "co2sam_boxes")
    return Path(folder) / f"{split}.jsonl"


def query_mode(config: Co2SamConfig, split: str) -> str:
    """``per-class`` or ``all``; ``auto`` means per-class on the training split only."""
    if config.prompts.mode != "auto":
        return config.prompts.mode
    return "per-class" if split == config.data.train_split else "all"


def detector_settings(
    config: Co2SamConfig, split: str, class_names: Sequence[str], mode: str | None = None
) -> dict[str, Any]:
    """The settings a detector's cache of this split is made with (and checked against).

    ``origin`` is the prompter ``prompts.detector`` names (:mod:`co2sam.prompts.registry`);
    ``text_threshold`` is recorded only for the prompters that use it.
    """
    spec = prompter_spec(config.prompts.detector)
    if config.prompts.compat == "reference" and spec.name != "grounding-dino":
        raise ValueError(
            f"prompts.compat=reference reproduces the published Grounding DINO stage; the "
            f"detector {config.prompts.detector!r} is {spec.title}: use prompts.compat=paper "
            "with it, or a Grounding DINO detector"
        )
    settings = {
        "origin": spec.name,
        "detector": config.prompts.detector,
        "box_threshold": config.prompts.box_threshold,
        "text_threshold": config.prompts.text_threshold,
        "mode": mode or query_mode(config, split),
        "compat": config.prompts.compat,
        "prompts": detector_texts(class_names, config.prompts),
        "class_names": list(class_names),
        "split": split,
    }
    if not spec.uses_text_threshold:
        del settings["text_threshold"]
    return settings


def oracle_settings(split: str, class_names: Sequence[str]) -> dict[str, Any]:
    return {"origin": "oracle", "class_names": list(class_names), "split": split}


def box_source(config: Co2SamConfig, split: str, dataset: Any) -> BoxSource:
    """Boxes for the samples of ``dataset`` (a split), chosen by ``config.prompts.source``.

    dataset: needs ``class_names`` (background first); ``ids`` is used to check that a
    cache is complete; instance masks (``dataset.instance_mask(image_id)`` or VOC's
    ``SegmentationObject/<id>.png``) give oracle boxes per instance, else each connected
    component of the class mask is a box.
    cache: read :func:`default_cache_path`; raises :class:`BoxCacheError` if it was made
    with other settings or lacks images of the split, ``FileNotFoundError`` if absent.
    detector: run the prompter of ``prompts.detector`` (Grounding DINO, SAM 3) on each
    sample (slow; prefer ``co2sam boxes``).
    oracle: boxes from the ground-truth masks, score 1.
    """
    prompts = config.prompts
    class_names = tuple(dataset.class_names)
    if prompts.source == "simulated":
        raise ValueError(
            "prompts.source=simulated is the demo's simulated detector (boxes built from "
            "ground-truth instance masks), which only `co2sam demo` provides; use a box cache "
            "(`co2sam boxes`), prompts.source=detector, or prompts.source=oracle"
        )
    if prompts.source == "oracle":
        if not getattr(dataset, "has_masks", True):
            from co2sam.data.image_io import DatasetError

            root = getattr(dataset, "root", None)
            raise DatasetError(
                f"oracle boxes are read off ground-truth masks, and split {split!r}"
                f"{f' of {root}' if root else ''} has none: give its masks, or use a box "
                "cache (`co2sam boxes`) or prompts.source=detector"
            )

        def fetch_oracle(sample: Sample) -> Boxes:
            return oracle_boxes(sample, dataset_instance_mask(dataset, sample.id))

        return BoxSource(
            fetch_oracle,
            origin="oracle",
            description="oracle boxes from ground-truth masks",
            max_boxes=prompts.max_boxes,
            settings=oracle_settings(split, class_names),
        )
    if prompts.source == "detector":
        return _detector_source(config, split, class_names)
    return cache_source(config, split, dataset)


def cache_source(
    config: Co2SamConfig, split: str, dataset: Any, path: str | Path | None = None
) -> BoxSource:
    """Boxes read from a box cache, checked against the split before any is used.

    path: None reads :func:`default_cache_path` and checks the class names, the split
    and (for detector caches) the detector settings against ``config``. A file the
    user names is taken with the settings it records: only its class names are checked.
    Both refuse a cache that lacks images of ``dataset``.
    """
    class_names = tuple(dataset.class_names)
    explicit = path is not None
    path = Path(path) if explicit else default_cache_path(config, split)
    expected: dict[str, Any] = {"class_names": list(class_names)}
    if not explicit:
        expected["split"] = split
    if not path.is_file() and explicit:
        raise FileNotFoundError(
            f"no box cache at {path}: give an existing cache file, or --boxes cache, "
            "detector or oracle"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"no box cache at {path}; make it with `{boxes_command(config, split)}` (with "
            "this command's --config and --set options), or set prompts.source=detector / "
            "oracle"
        )
    cache = load_box_cache(path, expected)
    if not explicit and cache.origin in PROMPTERS:
        # imported / oracle caches have no detector settings
        expected = detector_settings(config, split, class_names)
        made_with = cache.settings.get("compat", "paper")  # caches made before the switch
        if made_with != expected["compat"]:
            raise BoxCacheError(
                f"box cache {path} was made with prompts.compat={made_with}, and this config "
                f"has prompts.compat={expected['compat']}: the published detection stage "
                "(reference) and co2sam's (paper) give other boxes. Set "
                f"prompts.compat={made_with}, or re-make the cache with `co2sam boxes "
                f"--split {split} --set prompts.compat={expected['compat']} --overwrite`."
            )
        del expected["compat"]  # checked above, with a legacy cache's default
        cache = load_box_cache(path, expected)
    missing = cache.missing(getattr(dataset, "ids", ()))
    if missing:
        raise BoxCacheError(
            f"box cache {path} lacks {len(missing)} image(s) of split {split!r} "
            f"(e.g. {missing[0]!r}); complete it with `{boxes_command(config, split, path)}` "
            "(and this command's --config and --set options)"
        )
    detector = cache.settings.get("detector", "")
    return BoxSource(
        lambda sample: cache[sample.id],
        origin=cache.origin,
        description=f"{cache.origin} boxes{f' ({detector})' if detector else ''} from {path}",
        max_boxes=config.prompts.max_boxes,
        settings=cache.settings,
    )


def _detector_source(config: Co2SamConfig, split: str, class_names: tuple[str, ...]) -> BoxSource:
    settings = detector_settings(config, split, class_names)
    prompter = build_prompter(config, class_names)
    per_class = settings["mode"] == "per-class"

    def detect(sample: Sample) -> Boxes:
        return prompter(sample.image, sample.labels if per_class else None)

    return BoxSource(
        detect,
        origin=settings["origin"],
        description=f"{PROMPTERS[settings['origin']].title} {config.prompts.detector} "
        f"({settings['mode']}), live",
        max_boxes=config.prompts.max_boxes,
        settings=settings,
    )
