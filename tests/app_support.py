"""Shared by the app's tests: a small demo workspace, the optional packages they need.

The app's tests need the ``app`` extra (and the browser tests Playwright and Debian's
``chromium``). Without them they are skipped, unless ``CO2SAM_REQUIRE_APP_TESTS=1``
(``.ci/run`` sets it), which turns a missing piece into a failure.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket

import pytest

REQUIRED = os.environ.get("CO2SAM_REQUIRE_APP_TESTS") == "1"


def need(module: str):
    """Import ``module`` or skip (fail when the app tests are required)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if REQUIRED:
            raise
        pytest.skip(f"{module} is not installed ({error}); pip install -e '.[app,e2e]'")


def chromium_path() -> str:
    """The system Chromium (``CO2SAM_CHROMIUM`` or ``chromium`` on PATH), else skip."""
    path = os.environ.get("CO2SAM_CHROMIUM") or shutil.which("chromium")
    if path is None:
        if REQUIRED:
            raise FileNotFoundError("chromium not found: apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install --no-install-recommends chromium)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def small_workspace(folder):
    """The app's demo workspace on the first 4 images of each split, its segmenter
    distilled for 10 steps (seconds, not a minute)."""
    from co2sam.app.workspace import prepare_demo_workspace

    return prepare_demo_workspace(
        folder, limit=4, distill_steps=10, overrides=["train.log_every=1"]
    )
