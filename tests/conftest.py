"""Shared test setup.

Tests use tiny models whose operations are far too small to gain from intra-op
threads; under load (pytest -n 2 on 2 cores) torch's spinning threads make them
up to ~100x slower, so each test process uses one thread.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``item.rep_call``), so a fixture can
    tell in its teardown whether the test failed (the browser tests save screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory):
    """The app's demo workspace, small (4 images per split), made once per test process."""
    from app_support import small_workspace

    return small_workspace(tmp_path_factory.mktemp("app") / "workspace")


@pytest.fixture(scope="session")
def app_page(app_workspace):
    """``co2sam app``'s page with nothing given (the small workspace), not launched."""
    from app_support import need

    need("gradio")
    need("gradio_image_annotation")
    from co2sam.app.page import Page
    from co2sam.app.server import build_context
    from co2sam.app.settings import AppSettings

    return Page(build_context(AppSettings(demo_dir=app_workspace.root)))
