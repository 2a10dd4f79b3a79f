"""Smoke test of benchmarks/backbones.py at the tiniest scale (no timing is asserted)."""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def backbones():
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module("backbones")
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCHMARKS))


def test_every_backbone_gets_a_train_and_an_infer_row(backbones, capsys, tmp_path):
    out = tmp_path / "backbones.json"
    result = backbones.main(
        ["--scale", "tiny", "--iterations", "1", "--warmup", "0", "--threads", "1",
         "--images", "2", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    names = [row.name for row in result["rows"]]
    assert names == [f"{b} {k}" for b in ("sam", "sam-hq", "sam2") for k in ("train", "infer")]
    for row in result["rows"]:
        assert math.isfinite(row.ms_per_image) and row.ms_per_image > 0
        assert row.memory_kind == "cpu-peak-rss-delta" and math.isfinite(row.peak_mib)
        assert f"| {row.name} |" in printed
    lora = {line["backbone"]: line["lora_parameters"] for line in result["summary"]}
    assert lora == {"SAM": 1024, "SAM-HQ": 1024, "SAM 2.1": 1984}  # q/v, rank 4, tiny models
    parameters = {line["backbone"]: line["parameters"] for line in result["summary"]}
    assert parameters["SAM-HQ"] > parameters["SAM"]  # SAM's parts plus the HQ decoder parts
    assert "### which backbone" in printed and "(1.00x)" in printed and out.is_file()
    gflop = {line["backbone"]: line["encoder_gflop"] for line in result["summary"]}
    assert gflop["SAM"] == pytest.approx(gflop["SAM-HQ"]) and gflop["SAM 2.1"] > 0  # same ViT


def test_counts_only_needs_no_weights(backbones, capsys):
    result = backbones.main(["--scale", "full", "--counts-only", "--backbones", "sam,sam2"])
    capsys.readouterr()
    assert result["rows"] == []
    lines = {line["backbone"]: line for line in result["summary"]}
    assert lines["SAM"]["lora_parameters"] == 147_456
    assert lines["SAM 2.1"]["lora_parameters"] == 165_760
    assert 900 < lines["SAM"]["encoder_gflop"] < 1000  # ViT-B at 1024: ~972 GFLOP
    assert lines["SAM 2.1"]["encoder_gflop"] < lines["SAM"]["encoder_gflop"]


def test_reduced_sam2_tiles_its_windows(backbones):
    config = backbones.reduced_sam2()
    backbone = config.vision_config.backbone_config
    sides = [256 // 4 >> stage for stage in range(4)]  # tokens a side per stage
    windows = backbone.window_size_per_stage
    assert all(side % window == 0 for side, window in zip(sides, windows, strict=True))
    with pytest.raises(SystemExit):
        backbones.main(["--backbones", "sam,sam4", "--scale", "tiny"])
