"""Evaluation throughput: encoder + decoder + semantic assembly + confusion matrix.

Times ``co2sam.evaluate.evaluate_model`` (the code path of ``co2sam evaluate`` and of
training's validation) over an in-memory set of random images with cached boxes (a
dict lookup: no detector, no image decoding), by batch size and precision, with eager
vs SDPA vs folded attention and optionally torch.compile of the image encoder. Examples::

    python benchmarks/inference.py                        # CPU, reduced SAM at 256
    python benchmarks/inference.py --device cuda --variant vit_b --size 1024 \\
        --images 64 --batch-sizes 1,4,8,16 --iterations 5 --compile --flops

The second stage (``--segmenter``): a distilled SegFormer alone (open mode, no boxes, the
image fitted into 2048 x 512 as at evaluation) timed in the same turns as Co2SAM in open
mode with a live detector (``--detector``: a random Grounding DINO asked for all classes,
then SAM on its boxes; the box-cache cases above leave the detector out)::

    python benchmarks/inference.py --variant vit_b --size 1024 --batch-sizes 1 \\
        --precisions fp32 --images 4 --iterations 3 --detector swin_t --segmenter b0,b2
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: spinning threads make a busy 2-core machine 30x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    H100_BF16_DENSE_TFLOPS,
    Work,
    add_memory,
    auto_attention,
    autocast,
    build_segmenter,
    common_arguments,
    compile_encoder,
    environment,
    make_work,
    print_table,
    round_robin,
    row_from_seconds,
    save_json,
    setup,
)
from torch.utils.data import Dataset  # noqa: E402

from co2sam.classes import VOC_CLASSES  # noqa: E402
from co2sam.evaluate import evaluate_model, evaluate_predictor  # noqa: E402
from co2sam.records import Boxes, Sample  # noqa: E402


class MemoryDataset(Dataset):
    """Samples held in memory, with random ground-truth masks (VOC classes)."""

    class_names = VOC_CLASSES

    def __init__(self, work: Sequence[Work], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = [
            Sample(
                image=item.image,
                mask=rng.integers(0, 21, item.image.shape[:2], dtype=np.uint8),
                labels=item.labels,
                id=str(index),
            )
            for index, item in enumerate(work)
        ]
        self.boxes = {
            str(index): Boxes(item.boxes, item.classes, item.scores)
            for index, item in enumerate(work)
        }
        self.ids = [sample.id for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def cached_boxes(self, sample: Sample) -> Boxes:
        return self.boxes[sample.id]


def evaluation_case(
    segmenter: Any,
    dataset: MemoryDataset,
    batch_size: int,
    precision: str,
    modes: Sequence[str],
) -> Callable[[], Any]:
    """One evaluate_model pass over ``dataset`` (autocast chosen here, not inside)."""

    def run() -> Any:
        with autocast(segmenter.device, precision):
            return evaluate_model(
                segmenter,
                dataset,
                dataset.cached_boxes,
                modes=modes,
                batch_size=batch_size,
                progress=False,
                autocast=False,
            )

    return run


SEGFORMER_SIZES = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}
"""SegFormer MiT-B0 / B2 (heads 1, 2, 5, 8): 3.7M / 27.4M parameters with 21 classes."""


def second_stage_cases(
    args: argparse.Namespace, dataset: MemoryDataset, sam: Any, device: Any
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """Open-mode cases: detector + SAM (live boxes) and the distilled segmenter alone."""
    import tempfile

    from co2sam.inference.sam import SamPredictor
    from co2sam.inference.segmenter import SegmenterPredictor

    cases: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}

    def open_case(predictor: Any) -> Callable[[], Any]:
        return lambda: evaluate_predictor(
            predictor, dataset, modes=("open",), batch_size=1, progress=False
        )

    if args.detector != "none":
        from common import build_prompter

        folder = Path(tempfile.mkdtemp(prefix="co2sam-bench-"))
        prompter = build_prompter(args.detector, args.size, device, folder)
        # Random weights pass hundreds of boxes; a trained detector returns a few above its
        # thresholds: keep the --boxes most confident (co2sam caps at prompts.max_boxes).
        live = SamPredictor(
            sam,
            lambda sample: prompter(sample.image).top_k(args.boxes),
            len(VOC_CLASSES),
            autocast=False,
        )
        name = f"open: detector {args.detector} + SAM"
        notes[name] = f"live boxes (all classes, top {args.boxes}), fp32"
        cases[name] = open_case(live)
    for kind in [kind for kind in args.segmenter.split(",") if kind not in ("", "none")]:
        net = segformer(kind, len(VOC_CLASSES)).to(device).eval()
        side = args.segmenter_size
        predictor = SegmenterPredictor(net, scale=(4 * side, side), autocast=False)
        name = f"open: segmenter {kind} @{side}"
        parameters = sum(p.numel() for p in net.parameters()) / 1e6
        cases[name], notes[name] = open_case(predictor), f"no boxes, {parameters:.1f}M, fp32"
    return cases, notes


def segformer(kind: str, num_labels: int) -> Any:
    """A randomly initialised SegFormer of a real size (``b0``, ``b2``) or ``tiny``."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from co2sam.models.segmentation_net import SegmentationNet, build_net

    names = [f"class{index}" for index in range(num_labels)]
    if kind == "tiny":
        return build_net("segformer", "tiny", names)
    if kind not in SEGFORMER_SIZES:
        raise ValueError(f"--segmenter takes tiny, b0, b2; got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = SegformerConfig(num_labels=num_labels, **SEGFORMER_SIZES[kind])
        return SegmentationNet(SegformerForSemanticSegmentation(config), "segformer", names)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=8, help="images per evaluation pass")
    parser.add_argument("--batch-sizes", default="1,2,4", help="comma list")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--boxes", type=int, default=3, help="mean boxes per image")
    parser.add_argument("--modes", default="label-guided", help="comma list of eval modes")
    parser.add_argument("--flops", action="store_true", help="count FLOPs and report MFU")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument(
        "--detector", default="none", choices=("none", "reduced", "swin_t", "swin_b"),
        help="add an open-mode case: this random Grounding DINO, then SAM on its boxes",
    )  # fmt: skip
    parser.add_argument(
        "--segmenter", default="none",
        help="add open-mode cases: distilled SegFormers of these sizes alone (comma list of "
        "tiny, b0, b2)",
    )  # fmt: skip
    parser.add_argument("--segmenter-size", type=int, default=512, help="its short side")
    args = parser.parse_args(argv)
    device = setup(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    precisions = [p for p in args.precisions.split(",") if p]
    modes = tuple(m for m in args.modes.split(",") if m)
    dataset = MemoryDataset(make_work(args.images, args.size, boxes_per_image=args.boxes))

    segmenter = build_segmenter(args.variant, args.size, device, seed=args.seed)
    # what co2sam's default attention computes here, by precision; the other at the end
    att = {precision: auto_attention(device, precision) for precision in precisions}
    other = "sdpa" if att[precisions[-1]] == "folded" else "folded"
    cases: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}
    for precision in precisions:
        for batch in batch_sizes:
            name = f"b{batch} {precision} {att[precision]}"
            cases[name] = evaluation_case(segmenter, dataset, batch, precision, modes)
            notes[name] = "box cache"
    first, last = batch_sizes[0], batch_sizes[-1]
    models = {}
    for kind, precision, batch in (("eager", "fp32", first), (other, precisions[-1], last)):
        models[kind] = build_segmenter(
            args.variant, args.size, device, attention=kind, seed=args.seed
        )
        name = f"b{batch} {precision} {kind}"
        cases[name] = evaluation_case(models[kind], dataset, batch, precision, modes)
        notes[name] = f"{kind} attention alone"
    if args.compile:
        compiled = compile_encoder(build_segmenter(args.variant, args.size, device, seed=args.seed))
        name = f"b{first} {precisions[0]} {att[precisions[0]]} compile"
        cases[name] = evaluation_case(compiled, dataset, first, "fp32", modes)
        notes[name] = "torch.compile encoder alone"
    stage_cases, stage_notes = second_stage_cases(args, dataset, segmenter, device)
    cases.update(stage_cases)
    notes.update(stage_notes)

    names = list(cases)
    seconds = round_robin(
        cases, device, warmup=args.warmup, iterations=args.iterations, clock=args.clock
    )
    rows = [row_from_seconds(name, seconds[name], len(dataset), notes[name]) for name in names]
    if not args.no_memory:
        add_memory(rows, cases, device)

    env = environment(device)
    env.update(variant=args.variant, size=args.size, images=len(dataset), modes=list(modes))
    best = max((row for row in rows if row.images_per_s > 0), key=lambda row: row.images_per_s)
    env["best"] = best.name
    by_name = {row.name: row for row in rows}
    pipeline = next((name for name in stage_cases if name.startswith("open: detector")), None)
    for alone in (name for name in stage_cases if name.startswith("open: segmenter")):
        if pipeline and by_name[alone].ms_per_image > 0:
            ratio = by_name[pipeline].ms_per_image / by_name[alone].ms_per_image
            kind = alone.split()[2]
            env[f"segmenter_{kind}_speedup_vs_detector_sam"] = round(ratio, 1)
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            evaluation_case(models["eager"], dataset, first, "fp32", modes)()
        flops = counter.get_total_flops() / len(dataset)
        env["inference_tflop_per_image"] = round(flops / 1e12, 4)
        achieved = flops * best.images_per_s / 1e12
        env["tflops_achieved"] = round(achieved, 3)
        if device.type == "cuda":
            env["mfu_vs_peak"] = round(achieved / args.peak_tflops, 4)
    print_table("inference (evaluate_model, cached boxes)", rows, env)
    result = {"benchmark": "inference", "environment": env, "rows": rows}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
