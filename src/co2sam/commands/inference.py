"""What the inference commands share: device, model, split and box-source resolution
(``evaluate``, ``pseudo-labels``, ``predict``), and the sharded, resumable pass over a
split of ``evaluate`` and ``pseudo-labels``:

1. Fabric starts the processes (``--devices``, ``--num-nodes``; one by default).
2. The output folder is claimed (:class:`co2sam.output_folder.OutputFolder`): a folder
   of another run is refused, the same run resumes.
3. The split is checked before any model is loaded (pre-flight, ``--skip-bad``).
4. Each process segments its share of the images not done yet, writes their PNGs and
   logs each image's confusion-matrix cells once its files are written.
5. The main process sums the logged cells over the split: the same matrix for any
   number of processes, and after any number of restarts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from co2sam.commands.common import console, fail
from co2sam.commands.guards import checked_dataset, launch

BOX_SOURCES = ("cache", "oracle", "detector")


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; any other torch device string as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        fail(f"unknown device {name!r} ({error}); use auto, cpu, cuda or cuda:N")
        raise
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return device


def run_device(processes: Any, cfg: Any) -> Any:
    """This process's device: its own GPU in a distributed run, else ``eval.device``."""
    return processes.device if processes.distributed else resolve_device(cfg.eval.device)


def base_sam(cfg: Any, sam: str | None) -> str | None:
    """The SAM asked for: ``--sam``, else none with an adapter (its recorded base is used),
    else ``model.sam``."""
    return sam or (None if cfg.model.adapter else cfg.model.sam)


def model_identity(cfg: Any, sam: str | None) -> dict[str, Any]:
    """The adapter (named and fingerprinted) and SAM of a run's identity."""
    from co2sam.models.adapter_io import WEIGHTS_FILE

    adapter = cfg.model.adapter
    return {
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        "adapter_sha256": fingerprint(Path(adapter) / WEIGHTS_FILE) if adapter else None,
        "sam": base_sam(cfg, sam),
    }


def segmenter_identity(segmenter: Path, tta: bool | None) -> dict[str, Any]:
    """A ``co2sam distill`` segmenter folder (named and fingerprinted) and its TTA setting."""
    return {
        "segmenter": str(Path(segmenter).resolve()),
        "segmenter_sha256": fingerprint(Path(segmenter) / "model.safetensors"),
        "tta": tta,
    }


def open_output_folder(
    out_dir: Path,
    identity: dict,
    outputs: Sequence[str],
    *,
    overwrite: bool,
    processes: Any,
    files_of: Callable[[str, Mapping[str, Any]], Sequence[str]] | None = None,
    stale: Callable[[str, Mapping[str, Any]], str | None] | None = None,
) -> Any:
    """The command's :class:`co2sam.output_folder.OutputFolder`, opened (new, or resumed
    when ``identity`` matches); a refusal exits with its message.

    files_of, stale: what a resumed run checks of each finished image (see OutputFolder).
    """
    from co2sam.data.preflight import SKIPPED_FILE
    from co2sam.output_folder import OutputFolder, OutputFolderError

    folder = OutputFolder(
        out_dir,
        identity,
        outputs=outputs,
        per_run=(SKIPPED_FILE,),
        overwrite=overwrite,
        processes=processes,
        files_of=files_of,
        stale=stale,
    )
    try:
        folder.open()
    except OutputFolderError as error:
        fail(str(error))
    return folder


def load_segmenter(sam: str | None, adapter: str | None, device: Any) -> tuple[Any, str]:
    """A Segmenter (of the model's family) on ``device`` and the source it was built from.

    With an adapter and no explicit ``sam``, the base recorded in the adapter is used.
    """
    from co2sam.sam import load_adapter, load_sam, segmenter_for

    try:
        if adapter:
            model = load_adapter(sam, adapter)
            base = sam or str(getattr(model, "co2sam_base", None) or _adapter_base(adapter))
        else:
            if not sam:
                fail("no SAM given: pass --sam (a hub id, folder, .pth, demo or tiny)")
            model = load_sam(sam)
            base = str(sam)
    except (OSError, ValueError) as error:
        fail(str(error))
        raise
    return segmenter_for(model).to(device).eval(), base


def load_segmenter_folder(folder: Path, device: Any, *, tta: bool | None = None) -> Any:
    """The predictor of a ``co2sam distill`` segmenter folder and its metadata (exits on
    a bad folder); ``tta`` None keeps the test-time augmentation the run recorded."""
    from transformers.utils import logging as transformers_logging

    from co2sam.inference.segmenter import load_segmenter_predictor
    from co2sam.models.segmentation_net import SegmentationNetError

    transformers_logging.disable_progress_bar()
    try:
        return load_segmenter_predictor(folder, device, tta=tta)
    except SegmentationNetError as error:
        fail(str(error))
        raise


def _adapter_base(adapter: str) -> str:
    from co2sam.models.adapter_io import read_adapter_metadata

    return str(read_adapter_metadata(adapter).get("base", "?"))


def resolve_boxes(config: Any, split: str, dataset: Any, boxes: str | None) -> Any:
    """A ``prompts.BoxSource`` for the split.

    boxes: None (``prompts.source`` of the config), ``cache`` / ``oracle`` / ``detector``,
    or the path of a co2sam box cache file (``.jsonl``) to read instead of the default one.
    """
    from co2sam.prompts import BoxCacheError, box_source
    from co2sam.prompts.source import cache_source

    try:
        if boxes is None or boxes in BOX_SOURCES:
            if boxes is not None:
                config.prompts.source = boxes
            return box_source(config, split, dataset)
        return cache_source(config, split, dataset, boxes)
    except (OSError, BoxCacheError, ValueError) as error:
        fail(str(error))
        raise


def load_split(config: Any, split: str, *, check_masks: bool = True) -> Any:
    from co2sam.data import DatasetError, build_dataset

    try:
        return build_dataset(config.data, split, check_masks=check_masks)
    except (DatasetError, OSError) as error:
        fail(str(error))
        raise


def checkpoint_record(adapter: str | None, split: str) -> dict[str, Any] | None:
    """Which training checkpoint an adapter is, and whether ``split`` chose it.

    ``best/`` is the adapter with the highest label-guided mIoU on the training run's
    ``data.val_split``: a number measured on that same split is optimistic (the choice
    saw it), so reports say which checkpoint a number comes from.
    """
    if not adapter:
        return None
    from co2sam.models.adapter_io import AdapterError, read_adapter_metadata

    try:
        extra = read_adapter_metadata(adapter).get("extra", {})
    except AdapterError:
        return {"adapter": adapter, "checkpoint": "unknown"}
    kind = extra.get("checkpoint") or Path(adapter).name
    selected_on = (extra.get("selected_on") or {}).get("split")
    record: dict[str, Any] = {
        "adapter": adapter,
        "checkpoint": kind,
        "step": extra.get("step"),
        "epoch": extra.get("epoch"),
        "best_during_training": extra.get("best"),
    }
    if kind == "best":
        record["selected_on"] = extra.get("selected_on")
        record["selected_on_this_split"] = selected_on == split
        if selected_on == split:
            record["note"] = (
                f"best/ was chosen by label-guided mIoU on {split!r}, the split evaluated "
                "here: this number is optimistic; report last/ beside it"
            )
    return record


def processes_record(processes: Any) -> dict[str, Any]:
    """How many processes segmented the split, and the CPU threads each one used (on CPU,
    a different thread count can change mask logits in the last bit: README, Long runs)."""
    import torch

    return {"count": processes.world_size, "cpu_threads_per_process": torch.get_num_threads()}


def box_source_record(source: Any) -> dict[str, Any]:
    """What a report says about where its boxes came from."""
    return {
        "origin": getattr(source, "origin", "custom"),
        "description": getattr(source, "description", repr(source)),
        "settings": getattr(source, "settings", {}),
    }


@dataclass
class SplitRun:
    """What a sharded pass over a split works with (see the module docstring)."""

    processes: Any
    dataset: Any
    """The images of the run (``eval.limit`` applied, bad files left out or guarded)."""
    source: Any
    """``Sample -> Boxes`` (a ``prompts.BoxSource``; placeholders get no box); None for a
    segmenter, which needs no box."""
    predictor: Any
    """The :class:`co2sam.inference.base.Predictor` (SAM over ``source``, or a segmenter)."""
    base: str
    """What segments: the SAM source, or the segmenter folder and its settings."""
    folder: Any
    """The claimed :class:`co2sam.output_folder.OutputFolder`."""
    out_dir: Path
    skipped_file: Path


def default_out_dir(
    kind: str, cfg: Any, split: str, *, sam: str | None = None, segmenter: Path | None = None
) -> Path:
    """``runs/<kind>/<dataset>-<split>/<model>``: one folder per data, split and model.

    ``<model>`` is the adapter folder's last two parts (``voc-best``), ``plain-<SAM
    name>`` (``sam``, the ``--sam`` given, else ``model.sam``), or ``segmenter-`` and a
    segmenter folder's last two parts; ``<dataset>`` the dataset kind (voc, coco) or, for
    folder and generated data, the root folder's name.
    """
    data = cfg.data.dataset
    if data in ("folder", "synthetic"):
        data = Path(cfg.data.root).resolve().name or data
    if segmenter is not None:
        folder = Path(segmenter).resolve()
        model = "segmenter-" + "-".join(p for p in (folder.parent.name, folder.name) if p)
    elif cfg.model.adapter:
        adapter = Path(cfg.model.adapter).resolve()
        model = "-".join(part for part in (adapter.parent.name, adapter.name) if part)
    else:
        model = "plain-" + Path(str(sam or cfg.model.sam)).name
    return Path("runs") / kind / _safe(f"{data}-{split}") / _safe(model)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def identity_of(command: str, cfg: Any, split: str, sam: str | None, boxes: str | None) -> dict:
    """What makes two runs of ``command`` the same (their outputs may share a folder).

    Files are named and fingerprinted: an adapter folder retrained in place (``best/``)
    or a box cache made again is another run, not one to resume. ``--limit`` is part of
    it: a report covers the images its folder holds, never the first N of them.
    """
    from co2sam.prompts.source import default_cache_path

    source = boxes or cfg.prompts.source
    cache = None
    if source == "cache":
        cache = default_cache_path(cfg, split)
    elif source not in BOX_SOURCES:
        cache = Path(source)
    return {
        "command": command,
        "dataset": cfg.data.dataset,
        "data_root": str(Path(cfg.data.root).resolve()) if cfg.data.root else "",
        "split": split,
        **model_identity(cfg, sam),
        "boxes": source,
        "box_cache": str(cache.resolve()) if cache else None,
        "box_cache_sha256": fingerprint(cache) if cache else None,
        "detector": cfg.prompts.detector,
        "max_boxes": cfg.prompts.max_boxes,
        "limit": cfg.eval.limit,
    }


def fingerprint(path: Path) -> str | None:
    """The first 16 hex digits of a file's SHA-256 (None when there is no such file)."""
    import hashlib

    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def start_split_run(
    cfg: Any,
    *,
    identity: Mapping[str, Any],
    outputs: Sequence[str],
    out_dir: Path,
    split: str,
    sam: str | None,
    boxes: str | None,
    overwrite: bool,
    devices: int | None,
    num_nodes: int | None,
    segmenter: Path | None = None,
    tta: bool | None = None,
    masks: bool = True,
    files_of: Callable[[str, Mapping[str, Any]], Sequence[str]] | None = None,
) -> SplitRun:
    """Steps 1-3 of the module docstring, then the box source and the model.

    segmenter: a ``co2sam distill`` segmenter folder to run instead of SAM + boxes.
    masks: whether the command needs the ground-truth masks (``evaluate``: yes;
        ``pseudo-labels``: only for oracle boxes): the pre-flight checks only what is read.
    files_of: ``(image id, record) -> the files (relative to out_dir) it writes``: on a
        resumed run, an image whose files are missing or damaged is done again.
    """
    from co2sam.data.preflight import SKIPPED_FILE, SkipPlaceholders, SplitSubset

    processes = launch(devices, num_nodes, cfg.eval.device)
    device = run_device(processes, cfg)
    dataset = load_split(cfg, split, check_masks=not cfg.data.preflight)
    if cfg.eval.limit is not None:
        dataset = SplitSubset(dataset, range(min(cfg.eval.limit, len(dataset))))
    folder = open_output_folder(
        out_dir, identity, outputs, overwrite=overwrite, processes=processes, files_of=files_of
    )
    skipped_file = out_dir / SKIPPED_FILE
    try:
        dataset = checked_dataset(
            cfg, dataset, skipped=skipped_file, processes=processes, masks=masks
        )
        if segmenter is not None:
            predictor, metadata = load_segmenter_folder(segmenter, device, tta=tta)
            if list(metadata["class_names"]) != list(dataset.class_names):
                fail(
                    f"{segmenter} was trained for classes {metadata['class_names']} but split "
                    f"{split} has {list(dataset.class_names)}; use it on its own dataset"
                )
            source, base = None, f"segmenter {segmenter} ({predictor.describe()})"
        else:
            from co2sam.inference.sam import SamPredictor

            source = SkipPlaceholders(resolve_boxes(cfg, split, dataset, boxes))
            model, base = load_segmenter(base_sam(cfg, sam), cfg.model.adapter, device)
            predictor = SamPredictor(
                model, source, len(dataset.class_names), compat=cfg.eval.compat
            )
    except BaseException:
        folder.close()  # release the folder's lock (a refused run ends here)
        raise
    return SplitRun(processes, dataset, source, predictor, base, folder, out_dir, skipped_file)


def segment_split(
    run: SplitRun,
    cfg: Any,
    *,
    modes: Sequence[str],
    on_prediction: Callable[[Any], None],
    confidence: bool = False,
) -> int:
    """Step 4: this process segments its share of what is not done; returns how many.

    confidence: the predictions carry per-pixel confidences (pseudo-labels).

    Closes the output folder (its lock and log) when done or failed.
    """
    from co2sam.data.preflight import SplitSubset
    from co2sam.evaluate import evaluate_predictor

    done = run.folder.done
    todo = [index for index, image_id in enumerate(run.dataset.ids) if image_id not in done]
    # Shard whole batches: a fresh sharded run encodes the same batches as one process,
    # so it writes the same label maps bit for bit (other batchings: to float rounding).
    size = cfg.eval.batch_size
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    mine = [index for batch in run.processes.shard(batches) for index in batch]
    if run.processes.is_main and run.folder.redone:
        console.print(f"[yellow]{escape(run.folder.redo_summary())}[/]")
    if run.processes.is_main and done:
        console.print(f"resuming: {len(run.dataset) - len(todo)} of {len(run.dataset)} images done")
    recorder = _Recorder(run.folder, modes, len(run.dataset.class_names), on_prediction)
    try:
        evaluate_predictor(
            run.predictor,
            SplitSubset(run.dataset, mine),
            modes=modes,
            batch_size=cfg.eval.batch_size,
            progress=run.processes.is_main,
            on_prediction=recorder,
            num_workers=cfg.data.num_workers,
            confidence=confidence,
        )
    finally:
        run.folder.close()
    run.processes.barrier()
    return len(mine)


class _Recorder:
    """``on_prediction`` that writes, then logs the image once all its modes are written."""

    def __init__(self, folder: Any, modes: Sequence[str], num_classes: int, write: Callable):
        self.folder, self.modes, self.num_classes, self.write = folder, modes, num_classes, write
        self.pending: dict[str, dict[str, list]] = {}

    def __call__(self, prediction: Any) -> None:
        from co2sam.metrics import ConfusionMatrix

        self.write(prediction)
        sample = prediction.sample
        cells = self.pending.setdefault(sample.id, {})
        if sample.mask is not None:
            confusion = ConfusionMatrix(self.num_classes)
            confusion.update(prediction.label_map.cpu(), sample.mask)
            cells[prediction.mode] = confusion.entries()
        else:
            cells[prediction.mode] = []
        if len(cells) == len(self.modes):
            del self.pending[sample.id]
            self.folder.record(sample.id, scored=sample.mask is not None, confusion=cells)


def split_results(
    run: SplitRun, modes: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], list[str], list[dict[str, str]]]:
    """Step 5 (any process): metrics per mode over the split, ids done, images skipped."""
    from co2sam.data.preflight import SkipLog
    from co2sam.metrics import ConfusionMatrix

    records = run.folder.records()
    num_classes = len(run.dataset.class_names)
    confusions = {mode: ConfusionMatrix(num_classes) for mode in modes}
    done, scored = [], 0
    for image_id in run.dataset.ids:
        record = records.get(image_id)
        if record is None:
            continue
        done.append(image_id)
        scored += bool(record["scored"])
        for mode in modes:
            confusions[mode].add_entries(record["confusion"].get(mode, []))
    results = {
        mode: {**confusion.compute(), "mode": mode, "num_images": scored}
        for mode, confusion in confusions.items()
    }
    listed = SkipLog(run.skipped_file).listed()
    all_ids = _all_ids(run.dataset)
    skipped = [
        {"id": image_id, "reason": reason}
        for image_id, reason in listed.items()
        if image_id in all_ids and image_id not in records
    ]
    return results, done, skipped


def _all_ids(dataset: Any) -> set[str]:
    """Ids of the split, including images the pre-flight left out."""
    from co2sam.data.preflight import split_items

    split, _ = split_items(dataset)
    return set(getattr(split, "ids", ())) | set(dataset.ids)
