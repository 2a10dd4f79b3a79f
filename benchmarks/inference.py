"""Evaluation throughput: encoder + decoder + semantic assembly + confusion matrix.

Times ``co2sam.evaluate.evaluate_model`` (the code path of ``co2sam evaluate`` and of
training's validation) over an in-memory set of random images with cached boxes (a
dict lookup: no detector, no image decoding), by batch size and precision, with eager
vs SDPA vs folded attention and optionally torch.compile of the image encoder. Examples::

    python benchmarks/inference.py                        # CPU, reduced SAM at 256
    python benchmarks/inference.py --device cuda --variant vit_b --size 1024 \\
        --images 64 --batch-sizes 1,4,8,16 --iterations 5 --compile --flops
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
from co2sam.evaluate import evaluate_model  # noqa: E402
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=8, help="images per evaluation pass")
    parser.add_argument("--batch-sizes", default="1,2,4", help="comma list")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--boxes", type=int, default=3, help="mean boxes per image")
    parser.add_argument("--modes", default="label-guided", help="comma list of eval modes")
    parser.add_argument("--flops", action="store_true", help="count FLOPs and report MFU")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
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
