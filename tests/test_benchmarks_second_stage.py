"""Smoke test of the second-stage case of benchmarks/inference.py (no timing asserted)."""

import math
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_detector_sam_and_segmenter_are_timed_in_the_same_turns(capsys):
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        import inference

        result = inference.main(
            ["--variant", "tiny", "--iterations", "1", "--warmup", "0", "--threads", "1",
             "--images", "1", "--batch-sizes", "1", "--precisions", "fp32", "--no-memory",
             "--detector", "reduced", "--segmenter", "tiny", "--segmenter-size", "64"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCHMARKS))
    printed = capsys.readouterr().out
    rows = {row.name: row for row in result["rows"]}
    for name in ("open: detector reduced + SAM", "open: segmenter tiny @64"):
        assert math.isfinite(rows[name].ms_per_image) and rows[name].ms_per_image > 0
        assert f"| {name} |" in printed
    ratio = result["environment"]["segmenter_tiny_speedup_vs_detector_sam"]
    expected = (
        rows["open: detector reduced + SAM"].ms_per_image
        / rows["open: segmenter tiny @64"].ms_per_image
    )
    assert ratio == round(expected, 1)
