"""The ``co2sam distill`` configuration: one dataclass per concern, presets, overrides.

Presets ``distill-voc.yaml`` and ``distill-coco.yaml`` (``--config voc`` / ``coco``) hold
the standard fully supervised recipe; every field can be overridden with
``--set section.field=value``. Where the numbers come from (README, "Second stage"):

- SegFormer (Xie et al., NeurIPS 2021, and its mmsegmentation configs
  ``segformer_mit-b*_8xb2-160k_ade20k-512x512``): AdamW lr 6e-5, betas (0.9, 0.999),
  weight decay 0.01 (none on norm layers), head lr x10, linear warm-up over 1,500
  iterations from 1e-6 of the lr, then poly decay (power 1.0) to 0; 16 images per step;
  160k iterations (ADE20K, Cityscapes), 80k (COCO-Stuff).
- data pipeline (mmsegmentation's ``pascal_voc12_aug.py``): resize keeping the aspect
  ratio into 2048 x 512 times a ratio drawn from [0.5, 2.0], random 512 x 512 crop (a
  crop where one class covers > 75% is redrawn, up to 10 times), horizontal flip p = 0.5,
  photometric distortion, padding with 255 labels; test: the same resize at ratio 1.
- Mask2Former (Cheng et al., CVPR 2022, ``Base-ADE20K-SemanticSegmentation.yaml``): AdamW
  lr 1e-4, weight decay 0.05, backbone lr x0.1, poly 0.9, no warm-up, gradient clipping
  at norm 0.01, 16 images per step, 160k iterations; test-time augmentation at
  short sides 256..896 with flips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from co2sam.config import ConfigError, DataConfig, SavedConfig, _check_choice, load_config

ARCHITECTURE_NAMES = ("segformer", "mask2former", "upernet")
PRESETS = ("voc", "coco")


@dataclass
class NetConfig:
    """Which network to train."""

    architecture: Literal["segformer", "mask2former", "upernet"] = "segformer"
    pretrained: str = "nvidia/mit-b2"
    """Hub id or local transformers folder of that architecture (``nvidia/mit-b0..b5``:
    ImageNet-only SegFormer encoders), or ``tiny`` (a small random network)."""

    def __post_init__(self) -> None:
        _check_choice("model.architecture", self.architecture, ARCHITECTURE_NAMES)
        if not self.pretrained:
            raise ConfigError("model.pretrained is empty (a hub id, a folder or tiny)")


@dataclass
class PseudoLabelConfig:
    """The pseudo-labels to learn from (the folder ``co2sam pseudo-labels`` writes)."""

    dir: str = ""
    """Folder holding ``SegmentationClass/<id>.png`` (and ``Confidence/<id>.png``)."""
    min_confidence: float = 0.0
    """Pixels whose pseudo-label confidence is below this are ignored (255) in the loss;
    0 uses every pixel. Needs the ``Confidence/`` PNGs that ``pseudo-labels`` writes."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(
                f"pseudo_labels.min_confidence must be in [0, 1], got {self.min_confidence}"
            )


@dataclass
class AugmentConfig:
    """Training augmentation (albumentations), mmsegmentation's VOC/ADE recipe."""

    scale: list[int] = field(default_factory=lambda: [2048, 512])
    """(long, short): the image is resized, keeping its aspect ratio, to fit in this box
    times the ratio below."""
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    """Redraw a crop (up to 10 times) while one class covers more of it than this (1: off)."""
    hflip: float = 0.5
    photometric: bool = True
    """Brightness +-32/255, contrast and saturation x0.5..1.5, hue +-18 degrees, each p = 0.5
    (mmsegmentation's PhotoMetricDistortion)."""

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or min(self.scale) < 1:
            raise ConfigError(f"augment.scale must be [long, short] > 0, got {self.scale}")
        low, high = (self.ratio_range + [0, 0])[:2]
        if len(self.ratio_range) != 2 or not 0 < low <= high:
            raise ConfigError(f"augment.ratio_range must be [low, high], got {self.ratio_range}")
        if self.crop_size < 16:
            raise ConfigError(f"augment.crop_size must be >= 16, got {self.crop_size}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ConfigError("augment.cat_max_ratio must be in (0, 1]")
        if not 0 <= self.hflip <= 1:
            raise ConfigError("augment.hflip must be a probability")


@dataclass
class DistillOptimConfig:
    """AdamW with per-group learning rates, linear warm-up and poly decay."""

    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 10.0
    norm_weight_decay: float = 0.0
    """Weight decay of normalisation layers' parameters."""
    warmup_steps: int = 1500
    warmup_ratio: float = 1e-6
    """The learning rate starts at this fraction of ``lr`` and rises linearly."""
    poly_power: float = 1.0
    clip_grad_norm: float | None = None
    """Clip the gradient's total L2 norm to this (Mask2Former: 0.01); None: no clipping."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("optim.lr must be > 0 and optim.weight_decay >= 0")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio <= 1 or self.poly_power <= 0:
            raise ConfigError("optim.warmup_steps >= 0, warmup_ratio in [0, 1], poly_power > 0")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be [beta1, beta2], got {self.betas}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError("optim.clip_grad_norm must be > 0 (or empty for no clipping)")


@dataclass
class DistillTrainConfig:
    """The training loop, devices and checkpoints."""

    iterations: int = 80000
    """Optimizer steps in total."""
    batch_size: int = 16
    """Images per optimizer step summed over all processes (each of N takes 1/N)."""
    seed: int = 1337
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    """``auto``: bf16-mixed on GPU, 32-true on CPU; or any Fabric precision string."""
    out_dir: str = "runs/distill"
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every N steps (and at each validation)."""
    val_every: int = 8000
    """Validate on the real masks of ``data.val_split`` every N steps and at the end (0: never)."""
    max_steps: int | None = None
    """Stop after this many steps in total (the schedule still spans ``iterations``; a
    later ``--resume`` continues): for jobs with a time limit."""
    limit_train: int | None = None
    """Train on the first N images of the split only (quick runs)."""
    limit_val: int | None = None
    """Validate on the first N images of ``data.val_split`` only."""
    log_every: int = 50
    sync_batchnorm: bool = True
    """With several GPUs, synchronise batch-norm statistics (SegFormer's and UperNet's
    heads have batch norm; mmsegmentation trains them with SyncBN)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "devices", "num_nodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_every < 0 or self.log_every < 1:
            raise ConfigError("train.val_every must be >= 0 and train.log_every >= 1")
        world = self.devices * self.num_nodes
        if self.batch_size % world:
            raise ConfigError(
                f"train.batch_size {self.batch_size} must divide evenly over "
                f"{world} processes (devices x num_nodes)"
            )


@dataclass
class SegmenterEvalConfig:
    """Inference of the trained network (validation, evaluate, predict)."""

    scale: list[int] = field(default_factory=lambda: [2048, 512])
    """(long, short): images are resized, keeping the aspect ratio, to fit in this box."""
    tta: bool = False
    """Multi-scale + flip test-time augmentation (class probabilities averaged)."""
    tta_ratios: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    tta_flip: bool = True

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or min(self.scale) < 1:
            raise ConfigError(f"eval.scale must be [long, short] > 0, got {self.scale}")
        if not self.tta_ratios or min(self.tta_ratios) <= 0:
            raise ConfigError(f"eval.tta_ratios must be positive, got {self.tta_ratios}")


@dataclass
class DistillConfig(SavedConfig):
    """Everything ``co2sam distill`` needs; written resolved into the run folder."""

    model: NetConfig = field(default_factory=NetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    eval: SegmenterEvalConfig = field(default_factory=SegmenterEvalConfig)


def load_distill_config(
    config: str | Path | None = None, overrides: list[str] | None = None
) -> DistillConfig:
    """A :class:`DistillConfig` from ``voc`` / ``coco`` (``distill-<name>.yaml``) or a YAML file.

    Raises :class:`co2sam.config.ConfigError` naming the file or key on any problem.
    """
    return load_config(
        config, overrides, schema=DistillConfig, presets=PRESETS, preset_prefix="distill-"
    )
