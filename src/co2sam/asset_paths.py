"""Where the files shipped inside the package live (below models/ and demo/, which both ask)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_SAM_ASSET = "demo_sam"
"""Folder name of the demo SAM's shipped weights inside ``co2sam/assets``."""


def demo_sam_path() -> Path:
    """The folder of the shipped demo SAM weights (``co2sam/assets/demo_sam``)."""
    return Path(str(resources.files("co2sam") / "assets" / DEMO_SAM_ASSET))
