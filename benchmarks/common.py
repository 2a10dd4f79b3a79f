"""Shared pieces of the benchmarks: models of a chosen size, synthetic work, timing, memory.

Every benchmark runs unchanged on a CPU (a reduced SAM, ``--variant cpu``) and on a GPU
(``--device cuda --variant vit_b --size 1024``). Weights are random (nothing is
downloaded): speed and memory do not depend on the values of the weights.

Memory (:class:`PeakMemory`):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what
  was allocated when the step started (``cuda-peak-allocated-delta``); what was resident
  then (weights of every model the benchmark holds, optimizer state) is reported beside
  it. For "does ViT-H train in 40 GB" run one case alone (``--only``) and add the two.
- CPU: the peak resident set size above the level just before the measured step, sampled
  every millisecond from ``/proc/self/statm`` after ``malloc_trim`` returned freed heap
  to the OS (``cpu-peak-rss-delta``). ``tracemalloc`` does not see torch's allocations and
  ``ru_maxrss`` only ever grows within a process, so neither can isolate one step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import SamConfig, SamModel

from co2sam.models.variants import SAM_VARIANTS, _sam_config

H100_BF16_DENSE_TFLOPS = 989.0
"""Peak dense bf16 tensor-core throughput of an H100 SXM (and H200), for MFU."""


# ----------------------------------------------------------------------------- models


def cpu_config(image_size: int = 256) -> SamConfig:
    """The reduced SAM of the CPU benchmarks: ViT 256 wide, 6 blocks, 4 heads, input 256.

    Same layout as ViT-B (windowed blocks, 2 global-attention blocks, SAM's full prompt
    encoder and mask decoder), about 1/3 the width and 1/2 the depth, at 1/4 the input
    side: a training step takes a fraction of a second on 2 CPU cores.
    """
    return _sam_config(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        global_attn_indexes=[2, 5],
        image_size=image_size,
        window_size=8,
    )


VARIANTS = ("cpu", *SAM_VARIANTS)
"""``cpu`` (reduced, defined here) and the registered co2sam variants."""


def sam_config(variant: str, size: int | None = None, attention: str = "sdpa") -> SamConfig:
    """SamConfig of ``variant`` at input side ``size`` (default: the variant's own).

    attention: ``sdpa`` or ``eager`` (transformers' ``attn_implementation``).
    """
    if variant == "cpu":
        config = cpu_config(size or 256)
    else:
        config = SAM_VARIANTS[variant]()
        if size is not None:
            config.vision_config.image_size = size
            config.prompt_encoder_config.image_size = size
            patch = config.prompt_encoder_config.patch_size
            config.prompt_encoder_config.image_embedding_size = size // patch
    config._attn_implementation = attention
    return config


def build_model(
    variant: str, size: int | None, *, attention: str = "sdpa", seed: int = 0, lora: bool = True
) -> Any:
    """A random SamModel (with q/v LoRA of rank 4 unless ``lora=False``), frozen, eval."""
    from co2sam.models.lora import freeze
    from co2sam.sam import attach_lora

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(sam_config(variant, size, attention))
    if lora:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            return attach_lora(model)
    return freeze(model)


def build_segmenter(
    variant: str,
    size: int | None,
    device: torch.device,
    *,
    attention: str = "auto",
    seed: int = 0,
    lora: bool = True,
) -> Any:
    """A :class:`co2sam.sam.Segmenter` around :func:`build_model`, on ``device``.

    attention: a ``model.attention`` kind (co2sam.models.attention; ``auto`` is what co2sam
    runs by default: ``folded`` on CUDA, ``sdpa`` on CPU). The same (variant, size, seed)
    gives the same weights for every attention.
    """
    from co2sam.sam import Segmenter

    model = build_model(variant, size, seed=seed, lora=lora)
    return Segmenter(model, attention=attention).to(device)


def auto_attention(device: torch.device, precision: str) -> str:
    """What ``model.attention: auto`` computes on ``device`` in ``precision`` (case names):
    ``folded`` in bf16 on CUDA, ``sdpa`` otherwise (co2sam.models.attention.AutoAttention)."""
    return "folded" if device.type == "cuda" and precision == "bf16" else "sdpa"


def compile_encoder(segmenter: Any) -> Any:
    """``torch.compile`` the image encoder of ``segmenter`` in place (first call compiles)."""
    segmenter.sam.vision_encoder.compile()
    return segmenter


# ----------------------------------------------------------------------------- work


@dataclass
class Work:
    """One synthetic image with its box prompts (original frame) and image-level labels.

    image: (H, W, 3) uint8 RGB. boxes: (N, 4) float32 XYXY pixels. classes: (N,) int64.
    scores: (N,) float32. labels: sorted classes of the image.
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    labels: list[int]


def image_shape(size: int) -> tuple[int, int]:
    """A VOC-like 375x500 image scaled with the model input (375x500 at S = 1024)."""
    scale = size / 1024
    return max(int(375 * scale + 0.5), 16), max(int(500 * scale + 0.5), 16)


VOC_LABELS_PER_IMAGE = {1: 0.62, 2: 0.28, 3: 0.08, 4: 0.02}
"""Share of images with 1, 2, 3, 4 labelled classes: a histogram with VOC ``train_aug``'s
mean of about 1.5 labelled classes per image (the shares are this benchmark's assumption;
the mean is what sets the detector's cost, one call per labelled class)."""


def make_work(
    count: int,
    size: int,
    *,
    boxes_per_image: int = 3,
    num_classes: int = 20,
    seed: int = 0,
) -> list[Work]:
    """``count`` random images (shape :func:`image_shape`) with about ``boxes_per_image`` boxes.

    Each image's labelled classes are drawn from :data:`VOC_LABELS_PER_IMAGE` (how many)
    and 1..``num_classes`` (which); box counts vary by one around the mean (ragged
    batches), never fewer than the labels, and every label has at least one box.
    """
    rng = np.random.default_rng(seed)
    height, width = image_shape(size)
    counts, shares = zip(*VOC_LABELS_PER_IMAGE.items(), strict=True)
    items = []
    for index in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = rng.choice(np.arange(1, num_classes + 1), int(rng.choice(counts, p=shares)), False)
        number = max(len(labels), boxes_per_image + (index % 3) - 1)
        x0 = rng.uniform(0, width * 0.6, number)
        y0 = rng.uniform(0, height * 0.6, number)
        x1 = np.minimum(x0 + rng.uniform(width * 0.2, width * 0.6, number), width - 1)
        y1 = np.minimum(y0 + rng.uniform(height * 0.2, height * 0.6, number), height - 1)
        boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
        classes = np.concatenate([labels, rng.choice(labels, number - len(labels))]).astype(
            np.int64
        )
        scores = rng.uniform(0.3, 1.0, number).astype(np.float32)
        items.append(Work(image, boxes, classes, scores, sorted(int(c) for c in labels)))
    return items


# ----------------------------------------------------------------------------- detector


def detector_config(kind: str) -> Any:
    """GroundingDinoConfig: ``swin_b`` (grounding-dino-base's size, Swin-B + BERT-base, 900
    queries: the model the published code runs), ``swin_t`` (transformers' default =
    grounding-dino-tiny's size) or ``reduced`` (Swin 32 wide, BERT 2x128, d_model 96, 2+2
    layers, 300 queries).

    Sizes are matched by FLOPs (torch.utils.flop_counter): one ``swin_t`` forward at
    800x1066 costs 0.67x a ViT-B image-encoder forward at 1024 (653 vs 972 GFLOP); one
    ``reduced`` forward at 200x266 costs 0.68x the ``cpu`` SAM encoder at 256 (2.09 vs
    3.07 GFLOP). (The published code uses the larger Swin-B model.)
    """
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    if kind == "swin_t":
        return GroundingDinoConfig()
    if kind == "swin_b":
        return GroundingDinoConfig(
            backbone_config=SwinConfig(
                embed_dim=128,
                depths=[2, 2, 18, 2],
                num_heads=[4, 8, 16, 32],
                window_size=12,
                image_size=384,
                out_indices=[2, 3, 4],
            )
        )
    if kind != "reduced":
        raise ValueError(f"detector must be 'swin_b', 'swin_t' or 'reduced', got {kind!r}")
    return GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=32,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 4, 8],
            window_size=7,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
        ),
        d_model=96,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=384,
        decoder_ffn_dim=384,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        num_queries=300,
    )


def word_tokenizer(folder: Path, words: Sequence[str]) -> Any:
    """A BERT WordPiece tokenizer over ``words`` with BERT's special-token ids (no download)."""
    from transformers import BertTokenizer

    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    vocab = [f"[unused{index}]" for index in range(1040)]
    for index, token in specials.items():
        vocab[index] = token
    vocab += sorted(set(words) - set(vocab)) + ["."]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(str(folder))


def build_prompter(kind: str, size: int, device: torch.device, folder: Path) -> Any:
    """A random Grounding DINO prompter over the VOC classes (per-class prompts).

    The detector's input side follows SAM's: Grounding DINO's 800/1333 at S = 1024,
    scaled by S / 1024 below that.
    """
    from transformers import GroundingDinoForObjectDetection

    from co2sam.classes import VOC_CLASSES, prompt_name
    from co2sam.prompts import GroundingDinoPrompter

    words = [word for name in VOC_CLASSES[1:] for word in prompt_name(name).split()]
    tokenizer = word_tokenizer(folder, words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(detector_config(kind)).eval()
    scale = size / 1024
    return GroundingDinoPrompter(
        model,
        tokenizer,
        VOC_CLASSES,
        device=str(device),
        shortest_edge=int(800 * scale),
        longest_edge=int(1333 * scale),
    )


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


FAILURES: dict[str, str] = {}
"""Why a case was dropped (name -> reason), for its row's notes."""

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
"""``wall``: elapsed time (what a user waits for; the default). ``process``: CPU time of
this process, all its threads together: on a CPU shared with other work it counts the
work done rather than the waiting (1 thread: close to the wall time of a quiet machine)."""


def _attempt(name: str, function: Callable[[], Any], device: torch.device) -> tuple[bool, Any]:
    """Run ``function``; on an error, print it (traceback to the log), free memory, go on.

    Returns ``(True, result)`` or ``(False, "out of memory" | "failed: Type: message")``.
    One broken or too-large case must not cost the other cases of a one-shot GPU run.
    """
    try:
        return True, function()
    except Exception as error:  # noqa: BLE001 - reported, then the run goes on
        if isinstance(error, torch.OutOfMemoryError):
            reason = "out of memory"
        else:
            reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            traceback.print_exc()
        print(f"case {name!r}: {reason}; dropped", flush=True)
        _release_heap()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False, reason


def round_robin(
    cases: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    warmup: int,
    iterations: int,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each case, measured in turns (case A, B, C, A, B, C, ...).

    Turns spread a change of machine load over every case instead of biasing the ones
    measured while it lasted. Each case is first called ``warmup`` times. ``clock``: a
    key of :data:`CLOCKS` (``process`` only on CPU: it cannot see GPU work).

    A case that raises (out of memory, say) is dropped from ``cases`` and gets an empty
    list (:func:`row_from_seconds` reports it); the reason is kept in :data:`FAILURES`.
    """
    if clock == "process" and device.type != "cpu":
        raise ValueError("--clock process measures CPU time: use it with --device cpu")
    now = CLOCKS[clock]
    seconds: dict[str, list[float]] = {name: [] for name in cases}

    def call(name: str) -> float | None:
        start = now()

        def timed() -> None:
            cases[name]()
            synchronize(device)

        ok, reason = _attempt(name, timed, device)
        if not ok:
            FAILURES[name] = reason
            del cases[name]
            return None
        return now() - start

    for name in list(cases):
        started = time.perf_counter()
        for _ in range(warmup):
            if call(name) is None:
                break
        print(f"warm: {name} ({time.perf_counter() - started:.1f} s)", flush=True)
    for _ in range(iterations):
        for name in list(cases):
            elapsed = call(name)
            if elapsed is not None:
                seconds[name].append(elapsed)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of the block, in MiB (see the module docstring for what is measured).

    After the block: ``peak_mib`` (above the level at entry), ``resident_mib`` (the level at
    entry: torch's allocated memory on CUDA, the process RSS on CPU) and ``kind``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")
        self.resident_mib = float("nan")
        cuda = device.type == "cuda"
        self.kind = "cuda-peak-allocated-delta" if cuda else "cpu-peak-rss-delta"
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        _release_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mib = (peak - self._base) / 2**20
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mib = (self._peak - self._base) / 2**20
        self.resident_mib = self._base / 2**20


def measure_memory(run: Callable[[], Any], device: torch.device) -> PeakMemory:
    """The :class:`PeakMemory` of one call of ``run``."""
    with PeakMemory(device) as memory:
        run()
    return memory


def add_memory(rows: Sequence[Row], cases: dict[str, Callable[[], Any]], device: torch.device):
    """One more call of each case, alone, to fill the rows' memory columns."""
    for row in rows:
        if row.name not in cases:  # dropped
            continue
        measure = functools.partial(measure_memory, cases[row.name], device)
        ok, memory = _attempt(row.name, measure, device)
        if not ok:
            row.notes = f"memory pass {memory}; {row.notes}"
            continue
        row.peak_mib, row.memory_kind = memory.peak_mib, memory.kind
        row.extra["resident_mib"] = memory.resident_mib


def print_profile(name: str, run: Callable[[], Any], device: torch.device, rows: int = 20) -> None:
    """torch.profiler over two calls of ``run``: the top ``rows`` ops by self time on the
    device (CUDA kernels) or the CPU, to see where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    run()
    synchronize(device)
    with profile(activities=activities) as profiler:
        for _ in range(2):
            run()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n### profile: {name} (2 calls)")
    table = profiler.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    print("\n".join(f"    {line}" for line in table.splitlines()))


# ----------------------------------------------------------------------------- reports


@dataclass
class Row:
    """One line of a benchmark table."""

    name: str
    images_per_s: float
    ms_per_image: float
    peak_mib: float | None = None
    memory_kind: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def build_cases(
    factories: dict[str, Callable[[], Callable[[], Any]]], device: torch.device
) -> dict[str, Callable[[], Any]]:
    """Call each factory (models are built, caches warmed); one that fails is dropped."""
    cases = {}
    for name, factory in factories.items():
        ok, value = _attempt(name, factory, device)
        if ok:
            cases[name] = value
        else:
            FAILURES[name] = f"{value} (while setting up)"
    return cases


def row_from_seconds(
    name: str, seconds: Sequence[float], images_per_call: int, notes: str = ""
) -> Row:
    """Throughput from the median seconds per call (NaN for a case that failed)."""
    if not seconds:
        nan = float("nan")
        reason = FAILURES.get(name, "not run")
        return Row(name, nan, nan, notes=f"{reason}; {notes}", extra={"calls": 0})
    per_call = median(seconds)
    return Row(
        name=name,
        images_per_s=images_per_call / per_call,
        ms_per_image=1000 * per_call / images_per_call,
        notes=notes,
        extra={"best_ms_per_image": 1000 * min(seconds) / images_per_call, "calls": len(seconds)},
    )


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions, thread count and load average, for RESULTS.md."""
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return {
        "device": f"{device.type}: {name}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def print_table(title: str, rows: Sequence[Row], env: dict[str, Any]) -> None:
    """A Markdown table of ``rows`` (paste-able into RESULTS.md)."""
    print(f"\n### {title}")
    print(", ".join(f"{key}: {value}" for key, value in env.items()))
    print()
    print("| case | images/s | ms/image | peak MiB | resident MiB | notes |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        peak = "" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        resident = row.extra.get("resident_mib")
        resident = "" if resident is None else f"{resident:.0f}"
        print(
            f"| {row.name} | {row.images_per_s:.2f} | {row.ms_per_image:.1f} | {peak} | "
            f"{resident} | {row.notes} |"
        )
    kinds = sorted({row.memory_kind for row in rows if row.memory_kind})
    if kinds:
        print(f"\nmemory: {', '.join(kinds)}")


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        rows = [asdict(row) if isinstance(row, Row) else row for row in payload.get("rows", [])]
        Path(path).write_text(json.dumps({**payload, "rows": rows}, indent=2) + "\n")


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every benchmark takes."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:1, ...)")
    parser.add_argument("--variant", default="cpu", choices=VARIANTS)
    parser.add_argument("--size", type=int, default=None, help="input side S (default: variant)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case first")
    parser.add_argument("--compile", action="store_true", help="add torch.compile cases")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", default="wall", choices=tuple(CLOCKS), help="wall time, or process CPU time"
    )
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, device, TF32 on CUDA and the resolved input side (``args.size``).

    On CUDA, float32 matmuls may use TF32 (``set_float32_matmul_precision("high")``), as
    the published training script sets: it applies to every case of the process.
    """
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if args.size is None:
        args.size = int(sam_config(args.variant).vision_config.image_size)
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``bf16``: torch.autocast(bfloat16) on the device; ``fp32``: nothing."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "fp32":
        yield
    else:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
