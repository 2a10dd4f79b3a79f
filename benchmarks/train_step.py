"""Training-step throughput and peak memory: co2sam's trainer vs the published loop's structure.

A step = T-teacher, U-teacher and student branches + all losses + backward + Adam on
the LoRA parameters. Both loops run in this process on the same random weights:

- ``published loop``: benchmarks/reference_loop.py, the structure of the published
  training loop (batch 1, float32, a Grounding DINO forward per labelled class of every
  image at every step, a template copy of the model, three model calls that each decode
  all boxes of the image at once, fused-qkv LoRA, the published losses per image);
- ``ours``: ``co2sam.train.step.training_step`` + Adam, as the trainer runs it by
  default (fp32 on CPU, bf16 autocast on CUDA; the template cache cold on a view's first
  visit, warm from its second), then each optimisation switched on alone (bf16 autocast,
  eager vs SDPA attention, batch > 1 with ragged box counts, gradient checkpointing,
  torch.compile of the image encoder, the T-teacher's template cache timed warm), then
  the winners together.

Both use the published loss form by default (``--loss-form reference``: what the voc and
coco presets train with). Views are made beforehand for both (a data-loader job). Cases
are timed in turns so that a change of machine load hits all of them. Examples::

    python benchmarks/train_step.py                       # CPU, reduced SAM at 256
    python benchmarks/train_step.py --variant vit_b --size 256 --best-batch 1
    python benchmarks/train_step.py --device cuda --variant vit_b --size 1024 \\
        --batch-sizes 1,4,8 --iterations 20 --warmup 3 --compile --flops
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
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
    build_cases,
    build_prompter,
    build_segmenter,
    common_arguments,
    compile_encoder,
    environment,
    make_work,
    print_profile,
    print_table,
    round_robin,
    row_from_seconds,
    save_json,
    setup,
)
from reference_loop import PublishedStructureStep, published_losses  # noqa: E402

from co2sam.config import LossConfig  # noqa: E402
from co2sam.losses import (  # noqa: E402
    box_prototypes,
    contrastive_pooling,
    image_losses,
    reduce_batch,
    total_loss,
)
from co2sam.train.data import TrainBatch  # noqa: E402
from co2sam.train.step import training_step  # noqa: E402
from co2sam.train.template_cache import TemplateCache  # noqa: E402


def strong_view(image: np.ndarray) -> np.ndarray:
    """A stand-in photometric view (timing does not depend on which augmentation)."""
    return (255 - image).astype(np.uint8)


def train_batch(items: Sequence[Work]) -> TrainBatch:
    return TrainBatch(
        image_ids=[str(index) for index in range(len(items))],
        weak=[item.image for item in items],
        strong=[strong_view(item.image) for item in items],
        boxes=[item.boxes for item in items],
        box_classes=[item.classes for item in items],
    )


class OursStep:
    """co2sam's step on batches of ``batch_size`` images taken in turn from ``work``.

    loss_form: ``LossConfig.compat`` (``reference``: the published loss form, as the voc
    and coco presets train; ``paper``: the form the paper describes).
    """

    def __init__(
        self,
        segmenter: Any,
        work: Sequence[Work],
        batch_size: int,
        device: torch.device,
        *,
        precision: str = "fp32",
        checkpointing: bool = False,
        template_cache: bool = False,
        loss_form: str = "reference",
    ) -> None:
        self.segmenter = segmenter
        self.batches = [
            train_batch([work[(start + k) % len(work)] for k in range(batch_size)])
            for start in range(0, len(work), batch_size)
        ]
        self.device = device
        self.precision = precision
        self.checkpointing = checkpointing
        self.loss_config = LossConfig(compat=loss_form)
        self.optimizer = torch.optim.Adam(
            segmenter.trainable_parameters(), lr=1e-4, weight_decay=1e-4
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / 250)
        )
        self.calls = 0
        self.cache = TemplateCache.from_gib(8.0) if template_cache else None
        if self.cache is not None:
            # Steady state: every view already seen once (from its second visit on in a
            # real run; see RESULTS.md for the hit rate a run reaches).
            for _ in self.batches:
                self()
            self.calls = 0

    def __call__(self) -> float:
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.segmenter.gradient_checkpointing = self.checkpointing
        try:
            with autocast(self.device, self.precision):
                total, _ = training_step(self.segmenter, batch, self.loss_config, self.cache)
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            self.segmenter.gradient_checkpointing = False
        return float(total.detach())


def published_case(step: PublishedStructureStep, work: Sequence[Work]) -> Callable[[], float]:
    strong = [strong_view(item.image) for item in work]
    calls = [0]

    def run() -> float:
        index = calls[0] % len(work)
        calls[0] += 1
        return step(work[index], strong[index])

    return run


def loss_case(
    size: int, boxes: int, device: torch.device, kind: str, loss_form: str = "reference"
) -> Callable[[], float]:
    """Losses alone for one image with ``boxes`` boxes: upsample to S x S, losses, backward.

    kind: ``ours`` (co2sam.losses.image_losses in ``loss_form``), ``ours-compiled`` (the
    same through torch.compile: elementwise ops fused, no full-resolution intermediates)
    or ``published`` (reference_loop.published_losses).
    """
    config = LossConfig(compat=loss_form)
    losses_fn = torch.compile(image_losses, dynamic=False) if kind == "ours-compiled" else None
    generator = torch.Generator().manual_seed(0)
    pooling = contrastive_pooling(config)

    def tensor(*shape: int, grad: bool = True) -> torch.Tensor:
        value = torch.randn(*shape, generator=generator).to(device)
        return value.requires_grad_(grad)

    def upscale(low_res: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(low_res[:, None], (size, size), mode="bilinear")[
            :, 0
        ]

    def run() -> float:
        low = [tensor(boxes, size // 4, size // 4, grad=g) for g in (False, True, True)]
        embeddings = [tensor(256, size // 16, size // 16, grad=g) for g in (False, True)]
        iou = tensor(boxes)
        masks = [upscale(m) for m in low]
        if kind == "published":
            branches = [
                (embedding, low_res[:, None], full, iou[:, None])
                for embedding, low_res, full in zip(
                    (*embeddings, embeddings[1]), low, masks, strict=True
                )
            ]
            total = published_losses(*branches, beta=config.focal_weight)
        else:
            function = losses_fn or image_losses
            losses = function(
                student_masks=masks[2],
                student_iou=iou,
                u_masks=masks[1],
                t_masks=masks[0],
                u_embeddings=embeddings[1],
                u_low_res=low[1],
                t_prototypes=box_prototypes(embeddings[0], low[0], pooling=pooling),
                config=config,
                num_masks=boxes,
            )
            total = total_loss(reduce_batch([losses], config), config)
        total.backward()
        return float(total.detach())

    return run


def count_flops(run: Callable[[], Any]) -> float:
    """FLOPs of one call (forward and backward), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def default_detector(variant: str, size: int) -> str:
    """The published loop's detector at this size (see :func:`common.detector_config`).

    Full size (S = 1024): ``swin_b``, the model the published code runs, at 800/1333.
    Reduced input sides scale the detector's input too; there ``swin_t`` (ViT variants)
    and ``reduced`` (the cpu/tiny SAMs) keep the detector's FLOPs relative to the SAM
    encoder at or below the full-size ratio (Swin-B 1,062 vs ViT-B 973 GFLOP), so the
    reduced-size ratios do not favour co2sam.
    """
    if size >= 1024:
        return "swin_b"
    return "reduced" if variant in ("cpu", "tiny") else "swin_t"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch-sizes", default="1,4", help="comma list; 1 is always measured")
    parser.add_argument("--boxes", type=int, default=3, help="mean boxes per image")
    parser.add_argument(
        "--detector",
        default=None,
        choices=("reduced", "swin_t", "swin_b", "none"),
        help="the published loop's Grounding DINO (default: see default_detector)",
    )
    parser.add_argument(
        "--loss-form",
        default="reference",
        choices=("reference", "paper"),
        help="co2sam's loss form (reference: the published form, as the presets train)",
    )
    parser.add_argument(
        "--best-precision",
        default=None,
        help="precision of the 'ours best' case (default: bf16; fp32 for CPUs without fast bf16)",
    )
    parser.add_argument(
        "--best-batch", type=int, default=None, help="batch of 'ours best' (default: largest)"
    )
    parser.add_argument(
        "--best-checkpointing", action="store_true", help="'ours best' with gradient checkpointing"
    )
    parser.add_argument(
        "--best-no-cache",
        action="store_true",
        help="'ours best' without the template cache (every T-teacher forward computed)",
    )
    parser.add_argument("--flops", action="store_true", help="count FLOPs and report MFU")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--skip-reference", action="store_true", help="no published-loop cases")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only this case, by its printed name (repeatable), e.g. "
        "--only 'ours b1 fp32 sdpa' for a ViT-H memory check (names: see the printed table)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        help="after timing, print a torch.profiler table of this case (repeatable)",
    )
    args = parser.parse_args(argv)
    device = setup(args)
    on_gpu = device.type == "cuda"
    detector = args.detector or default_detector(args.variant, args.size)
    # The trainer's default precision: bf16-mixed on GPU, 32-true on CPU.
    default_precision = "bf16" if on_gpu else "fp32"
    best_precision = args.best_precision or "bf16"
    batch_sizes = sorted({1, *(int(b) for b in args.batch_sizes.split(",") if b)})
    work = make_work(max(8, 2 * max(batch_sizes)), args.size, boxes_per_image=args.boxes)

    segmenter = build_segmenter(args.variant, args.size, device, seed=args.seed)
    factories: dict[str, Callable[[], Callable[[], Any]]] = {}
    images: dict[str, int] = {}
    notes: dict[str, str] = {}

    def case(name: str, factory: Callable[[], Callable[[], Any]], batch: int, note: str) -> None:
        if name in factories:  # the same case under two roles: note both
            notes[name] += f"; {note}"
            return
        factories[name], images[name], notes[name] = factory, batch, note

    @functools.cache
    def model(kind: str) -> Any:
        """Another segmenter with the same weights: an attention kind, or ``compiled``."""
        if kind == "compiled":
            return compile_encoder(build_segmenter(args.variant, args.size, device, seed=args.seed))
        return build_segmenter(args.variant, args.size, device, attention=kind, seed=args.seed)

    def published(with_detector: bool) -> Callable[[], Any]:
        prompter = None
        if with_detector:
            folder = Path(tempfile.mkdtemp(prefix="co2sam-bench-"))
            prompter = build_prompter(detector, args.size, device, folder)
        return published_case(PublishedStructureStep(segmenter, prompter), work)

    def ours(name: str, batch: int, note: str, kind: str = "auto", **options: Any) -> None:
        def factory() -> Callable[[], Any]:
            chosen = segmenter if kind == "auto" else model(kind)
            return OursStep(chosen, work, batch, device, loss_form=args.loss_form, **options)

        case(name, factory, batch, note)

    float32 = "fp32 (TF32 matmuls)" if on_gpu else "fp32"
    published_names = []
    if not args.skip_reference:
        if detector != "none":
            name = f"published loop, detector every step ({detector})"
            note = f"b1 {float32}, one detector call per labelled class"
            case(name, lambda: published(True), 1, note)
            published_names.append(name)
        name = "published loop, boxes cached"
        case(name, lambda: published(False), 1, "no detection in the loop")
        published_names.append(name)
    # What co2sam's default attention (model.attention: auto) computes here, by precision,
    # and the other of folded/sdpa at the default precision.
    att = {precision: auto_attention(device, precision) for precision in ("fp32", "bf16")}
    other = "sdpa" if att[default_precision] == "folded" else "folded"
    default_cold = f"ours b1 {default_precision} {att[default_precision]}"
    default_warm = f"{default_cold} tcache"
    ours(default_cold, 1, "trainer default, a view's first visit", precision=default_precision)
    ours(
        default_warm,
        1,
        "trainer default, template cache warm",
        precision=default_precision,
        template_cache=True,
    )
    ours(f"ours b1 fp32 {att['fp32']}", 1, "box cache, batched branches")
    ours("ours b1 fp32 eager", 1, "eager attention alone", kind="eager")
    ours(f"ours b1 {default_precision} {other}", 1, f"{other} attention alone", kind=other)
    ours(f"ours b1 bf16 {att['bf16']}", 1, "bf16 autocast alone", precision="bf16")
    for batch in batch_sizes[1:]:
        ours(f"ours b{batch} fp32 {att['fp32']}", batch, "batch alone (ragged boxes)")
    ours(f"ours b1 fp32 {att['fp32']} ckpt", 1, "gradient checkpointing alone", checkpointing=True)
    ours(
        f"ours b1 fp32 {att['fp32']} tcache", 1, "template cache alone (warm)", template_cache=True
    )
    if args.compile:
        ours(
            f"ours b1 fp32 {att['fp32']} compile", 1, "torch.compile encoder alone", kind="compiled"
        )
    for kind in ("published", "ours", *(("ours-compiled",) if args.compile else ())):
        note = f"{args.boxes} boxes at S x S, fwd + bwd"
        factory = functools.partial(loss_case, args.size, args.boxes, device, kind, args.loss_form)
        case(f"losses only: {kind}", factory, 1, note)
    best_batch = args.best_batch or batch_sizes[-1]
    best_name = f"ours best: b{best_batch} {best_precision} "
    best_name += att.get(best_precision, "sdpa")
    best_name += " ckpt" if args.best_checkpointing else ""
    best_name += " tcache" if not args.best_no_cache else ""
    best_options = {
        "precision": best_precision,
        "checkpointing": args.best_checkpointing,
        "template_cache": not args.best_no_cache,
    }
    ours(best_name, best_batch, "winners together", **best_options)

    unknown = sorted(set(args.only + args.profile) - set(factories))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {list(factories)}")
    selected = [name for name in factories if not args.only or name in args.only]
    cases = build_cases({name: factories[name] for name in selected}, device)
    seconds = round_robin(
        cases, device, warmup=args.warmup, iterations=args.iterations, clock=args.clock
    )
    rows = [
        row_from_seconds(name, seconds.get(name, []), images[name], notes[name])
        for name in selected
    ]
    if not args.no_memory:
        add_memory(rows, cases, device)

    env = environment(device)
    env.update(
        variant=args.variant,
        size=args.size,
        boxes_per_image=args.boxes,
        detector=detector,
        loss_form=args.loss_form,
        default_precision=default_precision,
        clock=args.clock,
    )
    by_name = {row.name: row for row in rows}
    ratios = {}
    for reference_name in published_names:
        for name in dict.fromkeys((default_cold, default_warm, best_name)):
            if name in by_name and reference_name in by_name:
                ratio = by_name[name].images_per_s / by_name[reference_name].images_per_s
                ratios[f"{name} / {reference_name}"] = ratio
    if args.flops:
        # FLOPs do not depend on the attention kernel; eager's matmuls are all counted.
        # With the template cache warm, the T-teacher's forward is not run: fewer FLOPs.
        eager = model("eager")
        step = functools.partial(OursStep, eager, work[:1], 1, device, loss_form=args.loss_form)
        flops = count_flops(step())
        cached_flops = count_flops(step(template_cache=True))
        env["train_tflop_per_image"] = round(flops / 1e12, 4)
        env["train_tflop_per_image_tcache"] = round(cached_flops / 1e12, 4)
        fastest = max(
            (row for row in rows if row.name.startswith("ours") and row.images_per_s > 0),
            key=lambda r: r.images_per_s,
        )
        executed = cached_flops if fastest.name.endswith("tcache") else flops
        achieved = executed * fastest.images_per_s / 1e12
        env["fastest_ours"] = fastest.name
        env["tflops_achieved"] = round(achieved, 3)
        if on_gpu:
            env["mfu_vs_peak"] = round(achieved / args.peak_tflops, 4)
    print_table("training step", rows, env)
    for name in args.profile:
        if name in cases:
            print_profile(name, cases[name], device)
    for label, ratio in ratios.items():
        print(f"ratio {label}: {ratio:.2f}x")
    result = {"benchmark": "train_step", "environment": env, "rows": rows, "ratios": ratios}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
