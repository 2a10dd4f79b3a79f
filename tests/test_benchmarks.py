"""Smoke tests of benchmarks/: each main runs one iteration at the tiniest size.

No timing is asserted (the numbers depend on the machine); the tests check that every
case produces a finite, positive throughput and that the printed table lists them.
"""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--variant", "tiny", "--iterations", "1", "--warmup", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        yield {
            name: importlib.import_module(name) for name in ("common", "train_step", "inference")
        }
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCHMARKS))


def _check_rows(result, printed):
    assert result["rows"]
    for row in result["rows"]:
        assert math.isfinite(row.images_per_s) and row.images_per_s > 0
        assert math.isfinite(row.ms_per_image) and row.ms_per_image > 0
        assert f"| {row.name} |" in printed
    assert result["environment"]["device"].startswith("cpu")


def test_train_step_main(benchmarks, capsys, tmp_path):
    out = tmp_path / "train.json"
    result = benchmarks["train_step"].main(
        [*TINY, "--batch-sizes", "1,2", "--no-memory", "--flops", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    _check_rows(result, printed)
    names = [row.name for row in result["rows"]]
    assert any(name.startswith("reference-style, detector") for name in names)
    assert "ours b2 fp32 sdpa" in names and "losses only: ours" in names
    assert "ours b1 fp32 sdpa tcache" in names and "ours best: b2 bf16 sdpa tcache" in names
    assert all(ratio > 0 for ratio in result["ratios"].values()) and len(result["ratios"]) == 4
    env = result["environment"]
    # the warm template cache skips the T-teacher's forward: fewer FLOPs per image
    assert 0 < env["train_tflop_per_image_tcache"] < env["train_tflop_per_image"]
    assert "ratio ours b1 fp32 sdpa" in printed and out.is_file()


def test_train_step_only_selects_cases(benchmarks, capsys):
    result = benchmarks["train_step"].main([*TINY, "--only", "ours b1 fp32 sdpa", "--no-memory"])
    capsys.readouterr()
    assert [row.name for row in result["rows"]] == ["ours b1 fp32 sdpa"]
    assert result["ratios"] == {}


def test_inference_main_with_memory(benchmarks, capsys):
    result = benchmarks["inference"].main(
        [*TINY, "--images", "2", "--batch-sizes", "1,2", "--precisions", "fp32"]
    )
    printed = capsys.readouterr().out
    _check_rows(result, printed)
    assert [row.name for row in result["rows"]] == ["b1 fp32 sdpa", "b2 fp32 sdpa", "b1 fp32 eager"]
    for row in result["rows"]:
        assert row.memory_kind == "cpu-peak-rss-delta" and math.isfinite(row.peak_mib)
        assert row.extra["resident_mib"] > 0


def test_peak_memory_sees_a_large_tensor(benchmarks):
    common = benchmarks["common"]

    def allocate():
        block = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
        return float(block.sum())

    memory = common.measure_memory(allocate, torch.device("cpu"))
    assert memory.kind == "cpu-peak-rss-delta"
    assert memory.peak_mib > 24 and memory.resident_mib > 0


def test_same_weights_for_both_attention_implementations(benchmarks):
    common = benchmarks["common"]
    sdpa = common.build_model("tiny", 128, attention="sdpa")
    eager = common.build_model("tiny", 128, attention="eager")
    for (name, a), (_, b) in zip(
        sdpa.state_dict().items(), eager.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out_sdpa = sdpa.base_model.model.vision_encoder(pixels).last_hidden_state
        out_eager = eager.base_model.model.vision_encoder(pixels).last_hidden_state
    assert torch.allclose(out_sdpa, out_eager, atol=1e-4)
