import json

import numpy as np
import pytest
import torch

from co2sam.inference.onnx_export import ExportError, default_export_size, export_onnx
from co2sam.models.segmentation_net import build_net

NAMES = ("background", "a", "b")
SIZES = {"segformer": (64, 96), "upernet": (192, 192), "mask2former": (64, 64)}


@pytest.mark.parametrize("architecture", sorted(SIZES))
def test_onnx_runtime_matches_pytorch(tmp_path, architecture):
    import onnxruntime

    torch.manual_seed(0)
    net = build_net(architecture, "tiny", NAMES)
    report = export_onnx(net, tmp_path / "model.onnx", size=SIZES[architecture])
    assert report.dynamic_size == (architecture == "segformer")
    shapes = [check.shape for check in report.checks]
    height, width = SIZES[architecture]
    assert [1, 3, height, width] in shapes and [2, 3, height, width] in shapes
    if report.dynamic_size:
        assert len(shapes) == 3  # also at another size
    for check in report.checks:
        assert check.max_abs_diff < 1e-4 and check.argmax_agreement > 0.999
    metadata = json.loads((tmp_path / "model.onnx.json").read_text())
    assert metadata["class_names"] == list(NAMES) and metadata["input"]["name"] == "pixel_values"
    # an independent run: the file alone gives the network's probabilities
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    pixels = torch.randn(1, 3, height, width)
    (scores,) = session.run(None, {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        expected = net(pixels).scores.numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_upernet_sizes_its_pooling_cannot_export_are_refused_early(tmp_path):
    net = build_net("upernet", "tiny", NAMES)
    assert default_export_size(net) == (576, 576)
    with pytest.raises(ExportError, match="multiples of 192"):
        export_onnx(net, tmp_path / "model.onnx", size=(512, 512))
    assert not (tmp_path / "model.onnx").exists()


def test_a_disagreeing_runtime_fails_the_export(tmp_path):
    net = build_net("segformer", "tiny", NAMES)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(net, tmp_path / "model.onnx", size=(32, 32), tolerance=0.0, min_agreement=1.01)


def test_export_command_refuses_an_existing_file_unless_overwrite(tmp_path):
    from typer.testing import CliRunner

    from co2sam.cli import app
    from co2sam.models.segmentation_net import save_net

    torch.manual_seed(0)
    folder = save_net(build_net("segformer", "tiny", NAMES), tmp_path / "best", {})
    runner = CliRunner()
    notes, sidecar = tmp_path / "notes.txt", tmp_path / "model.onnx.json"
    notes.write_text("my notes")
    sidecar.write_text("{}")
    for target, existing in ((notes, notes), (tmp_path / "model.onnx", sidecar)):
        args = ["export", "--segmenter", str(folder), "--onnx", str(target), "--size", "64"]
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2, refused.output
        said = "".join(refused.output.split())
        assert f"{existing}alreadyexists" in said and "--overwrite" in said
    assert notes.read_text() == "my notes" and sidecar.read_text() == "{}"
    assert not (tmp_path / "notes.txt.json").exists() and not (tmp_path / "model.onnx").exists()
    done = runner.invoke(app, [*args, "--overwrite"])
    assert done.exit_code == 0, done.output
    assert json.loads(sidecar.read_text())["class_names"] == list(NAMES)
