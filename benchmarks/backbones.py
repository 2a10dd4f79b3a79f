"""Which backbone: SAM, SAM-HQ and SAM 2.1 side by side (training step and inference).

For each backbone, on the same synthetic images and boxes (benchmarks/common.py):

- ``train``: one co2sam training step (``co2sam.train.step.training_step``: T-teacher,
  U-teacher and student, all losses) + backward + Adam on the q/v LoRA parameters;
- ``infer``: box prompts -> mask logits at the original size
  (``co2sam.predict.box_mask_logits``: encoder, decoder, post-processing), no gradient;

each with its speed (median of turns, cases interleaved so that a change of machine
load hits all of them; ``--clock process`` counts this process's CPU time, steadier on a
shared machine), peak memory, total and LoRA parameter counts, and the image
encoder's GFLOP per image (counted with ``torch.utils.flop_counter`` on the meta device:
no weights are allocated, so ``--counts-only --scale full`` runs anywhere in seconds).
Weights are random (speed and memory do not depend on their values); nothing is
downloaded.

Sizes (``--scale``):

- ``reduced`` (default, CPU): each family's base model shrunk alike, input 256: SAM and
  SAM-HQ with ViT 256 wide, 6 blocks (ViT-B: 768, 12), SAM 2.1 with Hiera 40-320 wide,
  blocks [1, 2, 8, 2] (Hiera-B+: 112-896, [2, 3, 16, 3]); decoders at full width;
- ``full`` (GPU): SAM ViT-B, SAM-HQ ViT-B, SAM 2.1 Hiera-B+ at 1024;
- ``tiny``: the test models (``tiny``, ``tiny_hq``, ``tiny_sam2``) at 128 (smoke tests).

Examples::

    python benchmarks/backbones.py                              # CPU, reduced, fp32
    python benchmarks/backbones.py --scale full --counts-only   # parameters and GFLOP
    python benchmarks/backbones.py --device cuda --scale full --precision bf16 \\
        --batch-size 4 --iterations 10 --warmup 2
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
    CLOCKS,
    Row,
    Work,
    add_memory,
    autocast,
    build_cases,
    cpu_config,
    environment,
    make_work,
    print_table,
    round_robin,
    row_from_seconds,
    save_json,
)
from transformers import PretrainedConfig, Sam2Model, SamHQModel, SamModel  # noqa: E402

from co2sam.config import LossConfig  # noqa: E402
from co2sam.models.sam2 import SAM2_VARIANTS, _sam2_config  # noqa: E402
from co2sam.models.sam_hq import SAM_HQ_VARIANTS, hq_config  # noqa: E402
from co2sam.models.variants import SAM_VARIANTS  # noqa: E402
from co2sam.predict import box_mask_logits  # noqa: E402
from co2sam.records import Boxes  # noqa: E402
from co2sam.sam import attach_lora, segmenter_for  # noqa: E402
from co2sam.train.data import TrainBatch  # noqa: E402
from co2sam.train.step import training_step  # noqa: E402

BACKBONES = ("sam", "sam-hq", "sam2")
TITLES = {"sam": "SAM", "sam-hq": "SAM-HQ", "sam2": "SAM 2.1"}
MODEL_CLASSES = {"sam": SamModel, "sam-hq": SamHQModel, "sam2": Sam2Model}


def reduced_sam2(image_size: int = 256) -> PretrainedConfig:
    """SAM 2.1 Hiera-B+ shrunk as ``cpu_config`` shrinks ViT-B: 1/3 width, half depth.

    Windows (8, 4, 8, 4) tile the stages at 256 (64, 32, 16, 8 tokens a side).
    """
    return _sam2_config(
        embed_dims=(40, 80, 160, 320),
        heads=(1, 2, 4, 8),
        blocks=(1, 2, 8, 2),
        global_blocks=(6, 8, 10),
        windows=(8, 4, 8, 4),
        image_size=image_size,
    )


CONFIGS: dict[str, dict[str, Callable[[], PretrainedConfig]]] = {
    "reduced": {
        "sam": cpu_config,
        "sam-hq": lambda: hq_config(cpu_config()),
        "sam2": reduced_sam2,
    },
    "full": {
        "sam": SAM_VARIANTS["vit_b"],
        "sam-hq": SAM_HQ_VARIANTS["sam_hq_vit_b"],
        "sam2": SAM2_VARIANTS["sam2_hiera_base_plus"],
    },
    "tiny": {
        "sam": SAM_VARIANTS["tiny"],
        "sam-hq": SAM_HQ_VARIANTS["tiny_hq"],
        "sam2": SAM2_VARIANTS["tiny_sam2"],
    },
}
"""Scale -> backbone -> transformers config builder."""
FULL_NAMES = {"sam": "ViT-B", "sam-hq": "ViT-B", "sam2": "Hiera-B+"}


def build_segmenter(backbone: str, scale: str, device: torch.device, seed: int = 0) -> Any:
    """The backbone's Segmenter with q/v LoRA of rank 4 (random weights), on ``device``."""
    config = CONFIGS[scale][backbone]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = attach_lora(MODEL_CLASSES[backbone](config))
    return segmenter_for(model).to(device)


def encoder_gflop(backbone: str, scale: str) -> float:
    """GFLOP of one image-encoder forward (one image), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        segmenter = segmenter_for(MODEL_CLASSES[backbone](CONFIGS[scale][backbone]()))
        pixels = torch.zeros(1, 3, segmenter.image_size, segmenter.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        segmenter.encode(pixels)
    return counter.get_total_flops() / 1e9


def train_batch(items: Sequence[Work]) -> TrainBatch:
    return TrainBatch(
        image_ids=[str(index) for index in range(len(items))],
        weak=[item.image for item in items],
        strong=[(255 - item.image).astype(np.uint8) for item in items],
        boxes=[item.boxes for item in items],
        box_classes=[item.classes for item in items],
    )


def train_case(
    segmenter: Any, work: Sequence[Work], batch_size: int, device: torch.device, precision: str
) -> Callable[[], float]:
    """A training step + Adam on batches taken in turn from ``work``."""
    batches = [
        train_batch([work[(start + k) % len(work)] for k in range(batch_size)])
        for start in range(0, len(work), batch_size)
    ]
    optimizer = torch.optim.Adam(segmenter.trainable_parameters(), lr=1e-4, weight_decay=1e-4)
    loss_config = LossConfig()
    calls = [0]

    def run() -> float:
        batch = batches[calls[0] % len(batches)]
        calls[0] += 1
        with autocast(device, precision):
            total, _ = training_step(segmenter, batch, loss_config)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    return run


def infer_case(
    segmenter: Any, work: Sequence[Work], batch_size: int, device: torch.device, precision: str
) -> Callable[[], int]:
    """Mask logits of every box of a batch, at the original image size, no gradient."""
    batches = [
        [work[(start + k) % len(work)] for k in range(batch_size)]
        for start in range(0, len(work), batch_size)
    ]
    calls = [0]

    def run() -> int:
        items = batches[calls[0] % len(batches)]
        calls[0] += 1
        boxes = [Boxes(item.boxes, item.classes, item.scores) for item in items]
        with torch.inference_mode(), autocast(device, precision):
            logits = box_mask_logits(segmenter, [item.image for item in items], boxes)
        return sum(int(mask.shape[0]) for mask in logits)

    return run


def case_factories(
    backbone: str, args: argparse.Namespace, work: Sequence[Work], device: torch.device
) -> dict[str, Callable[[], Callable[[], Any]]]:
    """The ``train`` and ``infer`` cases of one backbone, for ``common.build_cases``: the
    model is built on first use (a failure drops the case, not the run) and shared."""
    built: dict[str, Any] = {}

    def segmenter() -> Any:
        if "segmenter" not in built:
            built["segmenter"] = build_segmenter(backbone, args.scale, device, seed=args.seed)
        return built["segmenter"]

    options = (args.batch_size, device, args.precision)
    return {
        f"{backbone} train": lambda: train_case(segmenter(), work, *options),
        f"{backbone} infer": lambda: infer_case(segmenter(), work, *options),
    }


def parameter_counts(segmenter: Any) -> tuple[int, int]:
    """(parameters of the base model, trainable LoRA parameters)."""
    lora = sum(p.numel() for p in segmenter.trainable_parameters())
    total = sum(p.numel() for p in segmenter.model.parameters())
    return total - lora, lora


def summary(rows: Sequence[Row], info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per backbone: counts, and (when timed) train and infer ms/image, peak MiB."""
    by_name = {row.name: row for row in rows}
    lines = []
    for backbone, facts in info.items():
        line = {"backbone": TITLES[backbone], **facts}
        for kind in ("train", "infer"):
            row = by_name.get(f"{backbone} {kind}")
            line[f"{kind}_ms_per_image"] = None if row is None else row.ms_per_image
            line[f"{kind}_peak_mib"] = None if row is None else row.peak_mib
        lines.append(line)
    return lines


def print_summary(lines: Sequence[dict[str, Any]], baseline: str = "SAM") -> None:
    """The "which backbone" table (Markdown), speeds also relative to SAM."""
    reference = next((line for line in lines if line["backbone"] == baseline), None)
    print("\n### which backbone")
    print(
        "| backbone | model | parameters | LoRA | encoder GFLOP/img | train ms/img "
        "| infer ms/img | train peak MiB | infer peak MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for line in lines:
        cells = []
        for key in ("train_ms_per_image", "infer_ms_per_image"):
            value = line[key]
            if value is None:
                cells.append("")
                continue
            relative = f" ({value / reference[key]:.2f}x)" if reference is not None else ""
            cells.append(f"{value:.0f}{relative}")
        memory = [
            "" if line[key] is None else f"{line[key]:.0f}"
            for key in ("train_peak_mib", "infer_peak_mib")
        ]
        print(
            f"| {line['backbone']} | {line['model']} | {line['parameters'] / 1e6:.2f} M "
            f"| {line['lora_parameters']:,} | {line['encoder_gflop']:.1f} | {cells[0]} "
            f"| {cells[1]} | {memory[0]} | {memory[1]} |"
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:1, ...)")
    parser.add_argument("--scale", default="reduced", choices=sorted(CONFIGS))
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma list")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--images", type=int, default=4, help="distinct images in the work")
    parser.add_argument("--boxes", type=int, default=3, help="mean boxes per image")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per case")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="what is timed")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case first")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument(
        "--counts-only", action="store_true", help="parameters and GFLOP only, no timing"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    backbones = [name for name in args.backbones.split(",") if name]
    unknown = sorted(set(backbones) - set(BACKBONES))
    if unknown:
        parser.error(f"unknown backbones {unknown}; choose from {', '.join(BACKBONES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    factories: dict[str, Callable[[], Callable[[], Any]]] = {}
    notes: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    size = None
    for backbone in backbones:
        # Counted on the meta device; the timed model is built (and may fail) in build_cases.
        counted = build_segmenter(backbone, args.scale, torch.device("meta"), seed=args.seed)
        size = counted.image_size
        total, lora = parameter_counts(counted)
        model = FULL_NAMES[backbone] if args.scale == "full" else args.scale
        info[backbone] = {
            "model": model,
            "parameters": total,
            "lora_parameters": lora,
            "encoder_gflop": encoder_gflop(backbone, args.scale),
        }
        if args.counts_only:
            continue
        work = make_work(args.images, size, boxes_per_image=args.boxes, seed=args.seed)
        label = f"{TITLES[backbone]} {model}, {total / 1e6:.1f} M + LoRA {lora:,}"
        new = case_factories(backbone, args, work, device)
        factories.update(new)
        notes.update({name: f"{label}, b{args.batch_size} {args.precision}" for name in new})

    rows: list[Row] = []
    if factories:
        cases = build_cases(factories, device)
        seconds = round_robin(
            cases, device, warmup=args.warmup, iterations=args.iterations, clock=args.clock
        )
        rows = [
            row_from_seconds(name, seconds.get(name, []), args.batch_size, notes[name])
            for name in factories
        ]
        if not args.no_memory:
            add_memory(rows, cases, device)
    env = environment(device)
    env.update(scale=args.scale, size=size, batch_size=args.batch_size, precision=args.precision)
    env["clock"] = args.clock
    if rows:
        print_table(f"backbones ({args.scale}, input {size})", rows, env)
    lines = summary(rows, info)
    print_summary(lines)
    result = {"benchmark": "backbones", "environment": env, "rows": rows, "summary": lines}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
