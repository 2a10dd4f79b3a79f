"""What ``co2sam app`` is started with, checked before any model loads.

Safe by default: the page binds 127.0.0.1 (this machine only); another host is taken only
when asked for, with a warning, since the page then answers anyone who can reach the
port and lets them run the models and read the Review and Run folders. Uploads are
limited in bytes (Gradio refuses larger requests) and in pixels (checked before decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_FILE_MB = 20.0
DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image (width x height) the Segment tab decodes: 40 megapixels."""


class AppSettingsError(ValueError):
    """A setting the user gave cannot work (the message names it and the fix)."""


@dataclass
class AppSettings:
    """The options of ``co2sam app`` (see its ``--help``)."""

    sam: str | None = None
    """SAM weights; default: the adapter's base, else the demo SAM."""
    adapter: str | None = None
    """Adapter folder (``RUN/best``): the "adapted" side of the before/after switch."""
    detector: str | None = None
    """Detector (Grounding DINO or SAM 3) hub id or folder; without it, boxes are drawn."""
    segmenter: str | None = None
    """Segmenter folder of ``co2sam distill`` (``RUN/best``): a third view, no boxes."""
    classes: tuple[str, ...] = ()
    """Default class names of the Segment tab (without background)."""
    data_root: str | None = None
    """Dataset root for the Review folders (default: the one recorded in each folder)."""
    review: list[str] = field(default_factory=list)
    """Pseudo-label or evaluation folders for the Review tab."""
    runs: list[str] = field(default_factory=list)
    """Training run folders for the Run tab (default: the adapter's run, if any)."""
    host: str = "127.0.0.1"
    port: int | None = None
    """None: the first free port from 7860 on (Gradio's rule)."""
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "auto"
    demo_dir: str | None = None
    """Where the demo workspace is kept (nothing given); default: the user cache folder."""

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.port is not None and not 1 <= self.port <= 65535:
            raise AppSettingsError(f"--port must be in 1..65535, got {self.port}")
        if self.max_file_mb <= 0:
            raise AppSettingsError(f"--max-file-size must be > 0 MB, got {self.max_file_mb}")
        if self.max_pixels < 1:
            raise AppSettingsError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if not self.host.strip():
            raise AppSettingsError("--host is empty; leave it out to bind 127.0.0.1")
        if self.adapter is not None and not (Path(self.adapter) / "co2sam_adapter.json").is_file():
            raise AppSettingsError(
                f"--adapter {self.adapter} is not an adapter folder (no co2sam_adapter.json); "
                "give a training run's best/ or last/ folder"
            )
        if (
            self.segmenter is not None
            and not (Path(self.segmenter) / "co2sam_segmenter.json").is_file()
        ):
            raise AppSettingsError(
                f"--segmenter {self.segmenter} is not a segmenter folder (no "
                "co2sam_segmenter.json); give a `co2sam distill` run's best/ or last/ folder"
            )
        for folder in self.review:
            if not Path(folder).is_dir():
                raise AppSettingsError(
                    f"--review {folder} is not a folder; give a folder written by "
                    "`co2sam pseudo-labels` or `co2sam evaluate`"
                )
        for folder in self.runs:
            if not Path(folder).is_dir():
                raise AppSettingsError(
                    f"--run {folder} is not a folder; give the folder of `co2sam train --out`"
                )
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise AppSettingsError(f"--data-root {self.data_root} is not a folder")

    @property
    def demo(self) -> bool:
        """Nothing given: the app opens the demo workspace (its data, run, labels and
        segmenter)."""
        return not (
            self.sam or self.adapter or self.segmenter or self.review or self.runs or self.data_root
        )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    def host_warning(self) -> str | None:
        """The warning printed when the page is reachable from other machines."""
        if self.host in LOCAL_HOSTS:
            return None
        return (
            f"warning: --host {self.host} makes the page reachable from other machines. "
            "Anyone who can reach the port can run the models and read the Review and Run "
            "folders, and there is no login. Use it only on a network you trust."
        )

    def run_folders(self) -> list[str]:
        """Run folders for the Run tab: the given ones, else the adapter's run."""
        if self.runs:
            return list(self.runs)
        if self.adapter is not None:
            run = Path(self.adapter).resolve().parent
            if (run / "config.yaml").is_file() and (run / "csv").is_dir():
                return [str(run)]
        return []
