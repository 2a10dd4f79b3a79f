"""Smoke tests of benchmarks/: each main runs one iteration at the tiniest size.

No timing is asserted (the numbers depend on the machine); the tests check that every
case produces a finite, positive throughput and that the printed table lists them.
"""

import importlib
import json
import math
import os
import subprocess
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
            name: importlib.import_module(name)
            for name in ("common", "train_step", "inference", "threads")
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
    assert "published loop, detector every step (reduced)" in names
    assert "published loop, boxes cached" in names and "losses only: published" in names
    assert "ours b2 fp32 sdpa" in names and "losses only: ours" in names
    assert "ours b1 fp32 sdpa tcache" in names and "ours best: b2 bf16 sdpa tcache" in names
    # 2 published cases x (default first visit, default warm cache, best)
    assert all(ratio > 0 for ratio in result["ratios"].values()) and len(result["ratios"]) == 6
    env = result["environment"]
    # the warm template cache skips the T-teacher's forward: fewer FLOPs per image
    assert 0 < env["train_tflop_per_image_tcache"] < env["train_tflop_per_image"]
    assert "ratio ours b1 fp32 sdpa" in printed and out.is_file()
    assert env["default_precision"] == "fp32" and env["loss_form"] == "reference"


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
    names = [row.name for row in result["rows"]]
    assert names == ["b1 fp32 sdpa", "b2 fp32 sdpa", "b1 fp32 eager", "b2 fp32 folded"]
    for row in result["rows"]:
        assert row.memory_kind == "cpu-peak-rss-delta" and math.isfinite(row.peak_mib)
        assert row.extra["resident_mib"] > 0


def test_threads_main_compares_outputs_per_thread_count(benchmarks, capsys):
    rows = benchmarks["threads"].main(["--images", "2", "--size", "32", "--threads", "1", "2"])
    assert [row["threads"] for row in rows] == [1, 2]
    assert rows[0]["max_logit_diff"] == 0 and rows[0]["pixels_differing"] == 0
    assert all(0 <= row["logits_differing"] <= 1 for row in rows)
    assert "| 2 vs 1 |" in capsys.readouterr().out


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


def test_published_loop_computes_co2sams_reference_loss(benchmarks):
    """Same weights, same image: the baseline and co2sam's step give the same total loss."""
    common, train_step = benchmarks["common"], benchmarks["train_step"]
    reference_loop = importlib.import_module("reference_loop")
    segmenter = common.build_segmenter("tiny", 128, torch.device("cpu"))
    with torch.no_grad():  # LoRA away from zero, so a misplaced LoRA term would show
        for name, param in segmenter.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    step = reference_loop.PublishedStructureStep(segmenter, None)
    with torch.no_grad():  # the published template model is the LoRA model at start (B = 0)
        for name, param in step.template.named_parameters():
            if ".b_q." in name or ".b_v." in name:
                param.zero_()
    work = common.make_work(2, 128)[0]
    model = step.model
    weak = model.preprocess([work.image])
    strong = model.preprocess([train_step.strong_view(work.image)])
    boxes = model.scale_boxes(torch.from_numpy(work.boxes), weak.original_sizes[0])
    with torch.no_grad():
        template = reference_loop._model_call(step.template, weak.pixel_values, boxes)
    u_teacher = reference_loop._model_call(model, weak.pixel_values, boxes)
    student = reference_loop._model_call(model, strong.pixel_values, boxes)
    published = reference_loop.published_losses(template, u_teacher, student, beta=30.0)

    ours = train_step.OursStep(segmenter, [work], 1, torch.device("cpu"), loss_form="reference")
    total, _ = train_step.training_step(
        segmenter, train_step.train_batch([work]), ours.loss_config, None
    )
    assert torch.allclose(total, published, rtol=1e-5), (float(total), float(published))
    # the baseline's fused-qkv LoRA and co2sam's split q/k/v LoRA train the same parameters
    lora = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in lora) == sum(p.numel() for p in segmenter.trainable_parameters())


def test_work_follows_the_labels_histogram(benchmarks):
    common = benchmarks["common"]
    items = common.make_work(400, 128, boxes_per_image=3)
    counts = [len(item.labels) for item in items]
    expected = sum(k * share for k, share in common.VOC_LABELS_PER_IMAGE.items())
    assert abs(sum(counts) / len(counts) - expected) < 0.1
    for item in items:
        assert set(item.classes.tolist()) == set(item.labels)  # every label has a box
        assert len(item.boxes) >= len(item.labels)


def test_round_robin_drops_cases_that_fail(benchmarks, capsys):
    common = benchmarks["common"]
    calls = []

    def out_of_memory():
        raise torch.OutOfMemoryError("simulated")

    def broken():
        raise RuntimeError("unsafe to autocast\nmore detail")

    cases = {"ok": lambda: calls.append(1), "oom": out_of_memory, "broken": broken}
    seconds = common.round_robin(cases, torch.device("cpu"), warmup=1, iterations=2)
    assert list(cases) == ["ok"] and len(seconds["ok"]) == 2 and len(calls) == 3
    assert seconds["oom"] == [] and seconds["broken"] == []
    row = common.row_from_seconds("oom", seconds["oom"], 1)
    assert math.isnan(row.images_per_s) and row.notes.startswith("out of memory")
    row = common.row_from_seconds("broken", seconds["broken"], 1)
    assert row.notes.startswith("failed: RuntimeError: unsafe to autocast;")
    assert "case 'broken': failed" in capsys.readouterr().out


def test_gpu_script_dry_run(tmp_path):
    """benchmarks/gpu.sh end to end on the CPU with a tiny model (--dry-run)."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = (tmp_path / "gpu_results.md").read_text()
    assert "DRY RUN" in results and "exit status" not in results
    titles = ("Training step, SAM ViT-B", "Inference, SAM ViT-B", "Memory, SAM ViT-H", "Backbones")
    for title in titles:
        assert f"## {title}" in results
    assert "| published loop, detector every step (reduced) |" in results
    assert "'ours best: b1 bf16 sdpa ckpt'" in results  # the command, quoted as typed (CPU)
    assert "| ours best: b1 bf16 sdpa ckpt |" in results and "| b1 fp32 sdpa |" in results
    for name in ("train_vit_b.json", "infer_vit_b.json", "memory_vit_h.json", "backbones.json"):
        assert json.loads((tmp_path / name).read_text())["rows"]
