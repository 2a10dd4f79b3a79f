"""``co2sam app`` from the command line (the server itself is not started here)."""

import pytest
from app_support import need
from typer.testing import CliRunner

from co2sam.cli import app

runner = CliRunner()


def test_bad_options_fail_before_anything_loads():
    result = runner.invoke(app, ["app", "--review", "no/such/folder"])
    assert result.exit_code == 2 and "co2sam pseudo-labels" in " ".join(result.output.split())
    result = runner.invoke(app, ["app", "--port", "0"])
    assert result.exit_code == 2 and "--port" in result.output
    result = runner.invoke(app, ["app", "--segmenter", "."])
    assert result.exit_code == 2 and "not a segmenter folder" in " ".join(result.output.split())


@pytest.fixture
def launched(monkeypatch):
    need("gradio")
    need("gradio_image_annotation")
    import co2sam.app.server as server

    calls = []
    monkeypatch.setattr(server, "launch", lambda page, settings, **kw: calls.append((settings, kw)))
    return calls


def test_another_host_is_served_with_a_warning(launched, app_workspace):
    args = ["app", "--demo-dir", app_workspace.root, "--host", "0.0.0.0", "--port", "7999"]
    result = runner.invoke(app, [*args, "--max-file-size", "5"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "reachable from other machines" in output
    assert "models: SAM: …/demo_sam · adapter: …/workspace/train/best" in output
    ((settings, options),) = launched
    assert settings.host == "0.0.0.0" and settings.port == 7999 and options["block"] is True
    assert settings.max_file_bytes == 5 * 1024 * 1024


def test_this_machine_only_by_default(launched, app_workspace):
    result = runner.invoke(app, ["app", "--demo-dir", app_workspace.root])
    assert result.exit_code == 0, result.output
    assert "reachable" not in result.output
    assert launched[0][0].host == "127.0.0.1"


def test_a_segmenter_alone_is_the_third_view_beside_plain_sam(launched, app_workspace):
    result = runner.invoke(app, ["app", "--segmenter", app_workspace.segmenter])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "no adapter (--adapter)" in output
    assert "segmenter: …/workspace/distill/best (segformer)" in output


def test_a_damaged_segmenter_folder_is_one_error_line(launched, tmp_path):
    import torch

    from co2sam.models.segmentation_net import build_net, save_net

    torch.manual_seed(0)
    folder = save_net(build_net("segformer", "tiny", ("background", "dog")), tmp_path / "b", {})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    result = runner.invoke(app, ["app", "--sam", "demo", "--segmenter", str(folder)])
    assert result.exit_code == 2, result.output
    said = "".join(result.output.split())  # rich wraps long paths anywhere
    assert f"error:cannotread{weights}" in said and "copythefolderagain" in said
    assert not launched
