"""Gradio imported the safe way: no telemetry, uploads in a private temporary folder.

Set before ``import gradio`` (Gradio reads them then):

- ``GRADIO_ANALYTICS_ENABLED=False``: no version check against Gradio's servers and no
  usage report (otherwise two DNS lookups at launch), so the page is fully offline;
- ``GRADIO_TEMP_DIR``: a fresh ``co2sam-app-*`` folder for uploads and outputs (files mode
  0600), removed with the app's other files when it closes (``delete_cache``).

Values already in the environment are kept. Pillow's EPS reader is also turned off: it
hands the file to Ghostscript, an interpreter, and an upload must never be run (the
drawing panel decodes uploads with Pillow before co2sam sees them).
"""

from __future__ import annotations

import os
import tempfile
from types import ModuleType


def prepare_gradio_environment() -> None:
    from PIL import EpsImagePlugin

    EpsImagePlugin.gs_binary = False  # "no Ghostscript": EPS files are refused, not run
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="co2sam-app-")


def import_gradio() -> ModuleType:
    """``gradio``, imported after :func:`prepare_gradio_environment`.

    Raises ImportError with the install command when the ``app`` extra is missing.
    """
    prepare_gradio_environment()
    try:
        import gradio
        import gradio_image_annotation  # noqa: F401 - the drawing panel; fail here, not later
    except ImportError as error:
        raise ImportError(
            'co2sam app needs the app extra: pip install -e ".[app]" (gradio and '
            "gradio_image_annotation)"
        ) from error
    return gradio
