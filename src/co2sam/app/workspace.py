"""What ``co2sam app`` opens when it is given nothing: a workspace made from the demo.

Made once with the demo's own functions (:mod:`co2sam.demo.pipeline`: the generated
target domain, the shipped demo SAM, the simulated detector, Co2SAM training; and
:mod:`co2sam.demo.second_stage` for the distilled segmenter), offline, in under a
minute on 2 CPU cores, then kept (default: ``~/.cache/co2sam/app-demo-<version>``)
so later starts are instant (it is made again when the demo's code or data generator
changes, see :func:`demo_fingerprint`):

    data/                  the demo's generated domains (VOC layout)
    train/                 a quick Co2SAM run on the target domain, validated every epoch
                           (simulated-detector boxes): csv/, checkpoints/, best/ -> Run tab
    pseudo_labels/         label-guided pseudo-labels of the target training split made
                           with train/best and the simulated detector's boxes -> Review tab
    distill/               the demo's second stage on those pseudo-labels: a small
                           SegFormer (best/ -> the Segment tab's segmenter view)
    app_workspace.json     written last: what the app reads (an unfinished workspace
                           has none and is made again)

The Segment tab starts on plain SAM vs. ``train/best`` (and the distilled segmenter),
with a few target images and their simulated-detector boxes as examples.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from co2sam import __version__

READY_FILE = "app_workspace.json"
MARKER_FILE = ".co2sam-app-workspace"
WORKSPACE_FORMAT = 2
EXAMPLES = 4


class WorkspaceError(RuntimeError):
    """The workspace folder cannot be used (the message names the fix)."""


@dataclass
class DemoWorkspace:
    """The paths and examples of a finished workspace."""

    root: str
    adapter: str
    run: str
    review: str
    data_root: str
    class_names: list[str]
    segmenter: str = ""
    """The distilled segmenter's folder (``distill/best``)."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """``{"image": path, "boxes": [{label, xmin, ymin, xmax, ymax}]}`` per example image."""
    format: int = WORKSPACE_FORMAT
    version: str = __version__
    fingerprint: str = ""
    """:func:`demo_fingerprint` of the code that made it."""

    def usable(self) -> bool:
        paths = [self.adapter, self.run, self.review, self.data_root, self.segmenter]
        paths += [example["image"] for example in self.examples]
        return (
            self.format == WORKSPACE_FORMAT
            and self.fingerprint == demo_fingerprint()
            and all(path and Path(path).exists() for path in paths)
        )


def demo_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the files that decide what the workspace holds: the demo
    package, the data generator, the demo preset and this module."""
    import hashlib
    from importlib import resources

    package = Path(str(resources.files("co2sam")))
    files = sorted((package / "demo").glob("*.py")) + [
        package / "data" / "synthetic.py",
        package / "configs" / "demo.yaml",
        Path(__file__),
    ]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def default_workspace_dir() -> Path:
    """``$XDG_CACHE_HOME/co2sam/app-demo-<version>`` (``~/.cache`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "co2sam" / f"app-demo-{__version__}"


def prepare_demo_workspace(
    folder: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    limit: int | None = None,
    distill_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoWorkspace:
    """The workspace in ``folder`` (default :func:`default_workspace_dir`), made if needed.

    overrides: extra ``section.field=value`` settings of the demo's training.
    limit: train, validate, make pseudo-labels and distill on the first N images of each
        split only (a smaller workspace, made in seconds).
    distill_steps: optimizer steps of the distilled segmenter (default: the demo's 150).
    Two apps starting at once wait for each other (a file lock).
    """
    from filelock import FileLock

    folder = Path(folder).resolve() if folder is not None else default_workspace_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    with FileLock(str(folder) + ".lock"):
        ready = _read_ready(folder)
        if ready is not None:
            return ready
        _clear_unfinished(folder)
        say(f"making the demo workspace in {folder} (once; under a minute on 2 CPU cores)")
        if limit is not None:
            overrides = [*overrides, f"train.limit_train={limit}", f"train.limit_val={limit}"]
        workspace = _make(folder, list(overrides), limit, distill_steps, say)
        (folder / READY_FILE).write_text(json.dumps(asdict(workspace), indent=2) + "\n")
        return workspace


def _make(
    folder: Path,
    overrides: list[str],
    limit: int | None,
    distill_steps: int | None,
    say: Callable[[str], None],
) -> DemoWorkspace:
    from co2sam.demo.pipeline import adapt, demo_config, demo_settings, prepare_data
    from co2sam.metrics import write_report
    from co2sam.pseudo_labels import export_pseudo_labels
    from co2sam.sam import Segmenter, load_adapter

    settings = demo_settings(quick=True)
    config = demo_config(settings, folder, ["train.val_every=1", *overrides])
    say("generating the demo's target domain")
    data = prepare_data(folder, settings)
    images = min(len(data.target_train), limit or len(data.target_train))
    say(f"Co2SAM training on {images} target images (validated every epoch)")
    result = adapt(config, data, progress=False, validation=True)
    best = result.best_adapter
    adapter = best if best and (best / "co2sam_adapter.json").is_file() else result.last_adapter
    say("pseudo-labels of the target training split (label-guided)")
    segmenter = Segmenter(load_adapter(None, adapter)).eval()
    review = folder / "pseudo_labels"
    metrics = export_pseudo_labels(
        segmenter,
        data.target_train,
        data.target_train_boxes,
        review,
        mode="label-guided",
        split=data.target_train.split,
        batch_size=config.eval.batch_size,
        limit=limit,
        progress=False,
    )
    say("a distilled segmenter on those pseudo-labels (the demo's second stage)")
    segmenter = _distill(folder, data, review, limit, distill_steps)
    class_names = list(data.target_train.class_names)
    write_report(
        review / "report.json",
        {
            "split": data.target_train.split,
            "mode": "label-guided",
            "adapter": str(adapter),
            "box_source": {
                "origin": "simulated detector",
                "description": "the demo's simulated detector (perturbed ground-truth boxes)",
            },
            "class_names": class_names,
            "metrics": metrics,
            "config": config.to_dict(),
        },
    )
    examples = []
    for image_id in data.target_val.ids[:EXAMPLES]:
        boxes = data.target_val_boxes.boxes[image_id]
        examples.append(
            {
                "image": str(data.target_val.image_path(image_id)),
                "boxes": [
                    {
                        "label": class_names[int(cls)],
                        "xmin": int(round(float(x0))),
                        "ymin": int(round(float(y0))),
                        "xmax": int(round(float(x1))),
                        "ymax": int(round(float(y1))),
                    }
                    for (x0, y0, x1, y1), cls in zip(boxes.xyxy, boxes.classes, strict=True)
                ],
            }
        )
    return DemoWorkspace(
        root=str(folder),
        adapter=str(adapter),
        run=str(result.run_dir),
        review=str(review),
        data_root=str(config.data.root),
        class_names=class_names,
        segmenter=str(segmenter),
        examples=examples,
        fingerprint=demo_fingerprint(),
    )


def _distill(
    folder: Path, data: Any, pseudo_labels: Path, limit: int | None, steps: int | None
) -> Path:
    """The demo's second stage (a small SegFormer from scratch on the pseudo-labels,
    validated on the target's val masks at the end); returns its best/ folder."""
    from co2sam.demo.second_stage import distill_config, second_stage_settings
    from co2sam.distill.loop import distill

    settings = second_stage_settings(quick=True)
    if steps is not None:
        settings = replace(settings, iterations=steps)
    if limit is not None:  # a batch must fit in the images kept
        settings = replace(settings, batch_size=min(settings.batch_size, limit))
    limits = [] if limit is None else [f"train.limit_train={limit}", f"train.limit_val={limit}"]
    config = distill_config(settings, pseudo_labels, folder / "distill", limits)
    result = distill(
        config, train_dataset=data.target_train, val_dataset=data.target_val, progress=False
    )
    return result.best_dir or result.last_dir


def _read_ready(folder: Path) -> DemoWorkspace | None:
    try:
        data = json.loads((folder / READY_FILE).read_text())
        workspace = DemoWorkspace(**data)
    except (OSError, ValueError, TypeError):
        return None
    return workspace if workspace.usable() else None


def _clear_unfinished(folder: Path) -> None:
    """Remove a workspace that was not finished; refuse a folder that is not a workspace."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER_FILE).is_file():
            raise WorkspaceError(
                f"{folder} is not empty and is not a co2sam app workspace; "
                "choose another --demo-dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_FILE).write_text("made by co2sam app; safe to delete\n")
