"""Start the page: what it shows (:func:`build_context`), and how it listens (:func:`launch`).

Launch settings, all explicit: bind ``settings.host`` (127.0.0.1 by default), no share
link, an upload size limit (Gradio answers 413 above it), no extra served folders
(``allowed_paths`` empty: only Gradio's own upload folder is served), no monitoring or MCP
endpoints, no server-side rendering, one request at a time per event (the models are not
re-entrant), and the uploads removed when the app closes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from co2sam.app.settings import AppSettings


def build_context(
    settings: AppSettings, *, config: Any = None, log: Callable[[str], None] | None = None
) -> Any:
    """Load the models and list the folders (the demo workspace when nothing is given)."""
    from co2sam.app.models import AppModels
    from co2sam.app.page import AppContext

    say = log or (lambda message: None)
    adapter, reviews, runs = settings.adapter, list(settings.review), settings.run_folders()
    segmenter = settings.segmenter
    class_names = settings.classes
    examples: list[dict[str, Any]] = []
    data_root = settings.data_root
    if settings.demo:
        from co2sam.app.workspace import prepare_demo_workspace

        workspace = prepare_demo_workspace(settings.demo_dir, log=say)
        adapter, reviews, runs = workspace.adapter, [workspace.review], [workspace.run]
        segmenter = workspace.segmenter
        class_names = class_names or tuple(workspace.class_names[1:])
        examples = workspace.examples
    say("loading the models")
    models = AppModels.load(
        sam=settings.sam,
        adapter=adapter,
        device=settings.device,
        detector=settings.detector,
        prompt_config=config,
        segmenter=segmenter,
    )
    segmenter_classes = None
    if models.distilled is not None:
        segmenter_classes = tuple(models.distilled.model.class_names[1:])
    presets = class_presets(adapter, tuple(class_names), segmenter_classes)
    if not class_names and presets:
        class_names = next(iter(presets.values()))
    return AppContext(
        models=models,
        class_names=tuple(class_names),
        class_presets=presets,
        reviews=[str(Path(folder).resolve()) for folder in reviews],
        runs=[str(Path(folder).resolve()) for folder in runs],
        data_root=data_root,
        max_pixels=settings.max_pixels,
        examples=examples,
    )


def class_presets(
    adapter: str | None,
    current: tuple[str, ...],
    segmenter: tuple[str, ...] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Class lists to pick from: the adapter's training data, the segmenter's classes, the
    app's own, VOC, COCO."""
    from co2sam.classes import dataset_classes

    presets: dict[str, tuple[str, ...]] = {}
    trained = adapter_class_names(adapter) if adapter else None
    if trained:
        presets["the adapter's training data"] = trained
    if segmenter and segmenter != trained:
        presets["the segmenter's classes"] = segmenter
    if current and current != trained:
        presets["this app's default"] = current
    presets["PASCAL VOC (20 classes)"] = dataset_classes("voc")[1:]
    presets["MS COCO (80 classes)"] = dataset_classes("coco")[1:]
    return presets


def adapter_class_names(adapter: str) -> tuple[str, ...] | None:
    """The class names (without background) of the data an adapter was trained on."""
    from co2sam.classes import dataset_classes
    from co2sam.config import ConfigError, DataConfig
    from co2sam.data import DatasetError, build_dataset
    from co2sam.models.adapter_io import AdapterError, read_adapter_metadata

    try:
        data = read_adapter_metadata(adapter).get("extra", {}).get("config", {}).get("data", {})
        config = DataConfig(**data)
    except (AdapterError, ConfigError, TypeError, ValueError):
        return None
    try:
        return tuple(build_dataset(config, config.val_split, check_masks=False).class_names[1:])
    except (DatasetError, OSError, ValueError):
        pass
    try:
        return dataset_classes(config.dataset)[1:]
    except ValueError:
        return None


def launch(
    page: Any,
    settings: AppSettings,
    *,
    block: bool = True,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Serve ``page`` (a ``gr.Blocks``) with the settings above; returns it.

    block: wait until the server stops (Ctrl-C); False returns at once (tests).
    log: told the page's address once it listens.
    """
    from co2sam.app.page import CSS, KEYBOARD_JS

    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=False,
        max_file_size=settings.max_file_bytes,
        allowed_paths=None,
        show_error=True,
        prevent_thread_lock=True,
        quiet=True,
        inbrowser=False,
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        pwa=False,
        strict_cors=True,
        footer_links=["gradio", "settings"],
        js=KEYBOARD_JS,
        css=CSS,
    )
    if log is not None:
        log(f"co2sam app is at {page.local_url} (Ctrl-C stops it)")
    if block:
        page.block_thread()
    return page
